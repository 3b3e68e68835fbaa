"""Overlap between pool rows (or a selected subset) and the held-out test items.

Texts are normalised (NFKC, lower case, literal ``\\n`` and punctuation -> spaces, spaces
collapsed). For each pool row's prompt (whole text for plain-text rows) and each test item's
``key`` (its question):

* **exact**: the normalised test key equals the normalised pool prompt, or occurs inside it
  (a FLAN row that wraps the test question in options or an instruction still counts);
* **near**: not exact, but either at least ``near_threshold`` of the test key's word
  ``ngram``-grams occur in the pool prompt (containment) and at least ``min_shared`` of them
  (so a short question sharing one common phrase is not flagged), or the character
  ``char_ngram``-gram Jaccard similarity of the two is at least ``jaccard_threshold``.

Only pairs sharing at least one word n-gram are compared (an inverted index over the test
keys), so a 100k-row pool against a 1k-item test set takes seconds. Keys shorter than
``ngram`` words use their whole word sequence as a single gram.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

_NONWORD = re.compile(r"[^\w]+", flags=re.UNICODE)


def normalise(text: str) -> str:
    """Lower-case, NFKC, literal backslash-n and punctuation to spaces, spaces collapsed."""
    t = unicodedata.normalize("NFKC", text or "").replace("\\n", " ").lower()
    return " ".join(_NONWORD.sub(" ", t).split())


def word_ngrams(norm: str, n: int) -> set[tuple[str, ...]]:
    w = norm.split()
    if not w:
        return set()
    if len(w) < n:
        return {tuple(w)}
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def char_ngrams(norm: str, n: int) -> set[str]:
    if len(norm) < n:
        return {norm} if norm else set()
    return {norm[i:i + n] for i in range(len(norm) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


@dataclass
class OverlapResult:
    """Per pool row: 0 = clean, 1 = near duplicate, 2 = exact; the matched test item and scores."""

    flag: np.ndarray                 # int8 per pool row
    test_index: np.ndarray           # matched test item (-1 = none)
    containment: np.ndarray          # best word-ngram containment of a test key in the row
    jaccard: np.ndarray              # char-ngram Jaccard with that test key
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> np.ndarray:
        return self.flag == 2

    @property
    def near(self) -> np.ndarray:
        return self.flag == 1

    def summary(self, indices: Sequence[int] | None = None, ids: Sequence[str] | None = None,
                test_ids: Sequence[str] | None = None, limit: int = 20) -> dict[str, Any]:
        """Counts (of all rows, or of ``indices``) and the first ``limit`` matches."""
        idx = np.arange(len(self.flag)) if indices is None else np.asarray(indices, dtype=np.int64)
        f = self.flag[idx] if len(idx) else np.zeros(0, dtype=np.int8)
        hits = [int(i) for i in idx[f > 0][:limit]] if len(idx) else []
        out = {"checked": int(len(idx)), "exact": int((f == 2).sum()), "near": int((f == 1).sum()),
               "test_items_hit": int(len(set(self.test_index[idx][f > 0].tolist()))) if len(idx) else 0,
               "matches": [{"pool_index": i, "pool_id": ids[i] if ids is not None else None,
                            "test_id": test_ids[int(self.test_index[i])] if test_ids is not None else int(self.test_index[i]),
                            "kind": "exact" if self.flag[i] == 2 else "near",
                            "containment": round(float(self.containment[i]), 3),
                            "jaccard": round(float(self.jaccard[i]), 3)} for i in hits]}
        return out


def find_overlaps(pool_texts: Sequence[str], test_keys: Sequence[str], *, ngram: int = 5,
                  near_threshold: float = 0.5, char_ngram: int = 5, jaccard_threshold: float = 0.8,
                  min_shared: int = 3) -> OverlapResult:
    """Flag pool texts that contain (exact) or nearly contain (near) a test key."""
    tnorm = [normalise(k) for k in test_keys]
    tgrams = [word_ngrams(t, ngram) for t in tnorm]
    index: dict[tuple[str, ...], list[int]] = {}
    for j, gs in enumerate(tgrams):
        for g in gs:
            index.setdefault(g, []).append(j)
    exact_lookup = {t: j for j, t in enumerate(tnorm) if t}
    short = sorted({len(t.split()) for t in tnorm if 0 < len(t.split()) < ngram})
    n = len(pool_texts)
    flag = np.zeros(n, dtype=np.int8)
    match = np.full(n, -1, dtype=np.int64)
    cont = np.zeros(n)
    jac = np.zeros(n)
    tchars: dict[int, set[str]] = {}
    for i, text in enumerate(pool_texts):
        p = normalise(text)
        if not p:
            continue
        if p in exact_lookup:
            flag[i], match[i], cont[i], jac[i] = 2, exact_lookup[p], 1.0, 1.0
            continue
        counts: dict[int, int] = {}
        grams = word_ngrams(p, ngram)
        for L in short:
            grams |= {g for g in word_ngrams(p, L) if len(g) == L}
        for g in grams:
            for j in index.get(g, ()):
                counts[j] = counts.get(j, 0) + 1
        if not counts:
            continue
        best_j, best_c, best_n = -1, -1.0, 0
        for j, c in counts.items():
            cj = c / max(1, len(tgrams[j]))
            if cj > best_c:
                best_j, best_c, best_n = j, cj, c
        cont[i], match[i] = best_c, best_j
        t = tnorm[best_j]
        if f" {t} " in f" {p} ":
            flag[i], jac[i] = 2, 1.0 if t == p else jac[i]
            continue
        if best_j not in tchars:
            tchars[best_j] = char_ngrams(t, char_ngram)
        jac[i] = jaccard(char_ngrams(p, char_ngram), tchars[best_j])
        if (best_c >= near_threshold and best_n >= min_shared) or jac[i] >= jaccard_threshold:
            flag[i] = 1
        else:
            match[i] = -1 if best_c < near_threshold else match[i]
    match[flag == 0] = -1
    return OverlapResult(flag, match, cont, jac, {"ngram": ngram, "near_threshold": near_threshold,
                                                  "char_ngram": char_ngram, "jaccard_threshold": jaccard_threshold,
                                                  "min_shared": min_shared})


def pool_text(ex: Any) -> str:
    """The text of a pool Example compared with test keys: its prompt, or the whole text
    for plain-text rows."""
    return ex.prompt or ex.text
