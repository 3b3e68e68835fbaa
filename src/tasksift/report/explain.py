"""Why these rows: the nearest target example of each selected row, the nearest selected rows
of each target example, target coverage and the near-duplicate groups a density penalty
down-weighted.

Similarity is the cosine of one of two vector spaces, chosen per run and stated in the
manifest and report:

* **embeddings**, when the method embedded the pool (an ``embed_pool`` stage ran): the
  selected rows' and the target's vectors are read back from the feature store (only those
  rows; nothing else of the pool is touched);
* otherwise **hashed word 1-2-gram TF-IDF** (scikit-learn's ``HashingVectorizer`` +
  ``TfidfTransformer``, IDF fitted on the selected rows and the target), exact and cheap: the
  pool is never embedded just to explain a selection.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..data.example import Example

#: target examples shown with this many nearest selected rows
PER_TARGET = 3
#: a target example is covered when some selected row is at least this similar to it
COVERAGE_THRESHOLD = {"embeddings": 0.5, "tfidf": 0.2}
#: rows at least this similar to a group's densest row join its near-duplicate group
DUPLICATE_THRESHOLD = {"embeddings": 0.9, "tfidf": 0.8}
#: the densest rows (density >= MIN_DENSITY) grouped into near-duplicate groups
MAX_DENSE_ROWS = 200
#: a density of 2 is the weight of one exact copy beside the row itself
MIN_DENSITY = 2.0
#: density columns of the methods that down-weight dense regions (TSDS's KDE), each with the
#: column of the probabilities it divided: only rows the plan reached (probability > 0) had
#: their share cut by their density
DENSITY_COLUMNS = {"tsds_density": "tsds_prob"}
#: characters of each row's text the TF-IDF space reads (as the embedder's default)
MAX_CHARS = 4000
#: selected rows read, vectorised and compared per step
BLOCK_ROWS = 4096

SIMILARITY_NAMES = {"embeddings": "cosine of the method's sentence embeddings",
                    "tfidf": "cosine of hashed word 1-2-gram TF-IDF vectors (scikit-learn HashingVectorizer, "
                             "2^20 features, sublinear tf, IDF over the selected rows and the target)"}


@dataclass
class Explanation:
    """How the selected rows relate to the target.

    kind: ``"embeddings"`` or ``"tfidf"`` (see the module doc); ``similarity`` says it in words.
    target_of_selected: (k,) 0-based target position nearest to each selected row (in the
        order of ``indices``); sim_of_selected: (k,) its cosine.
    rows_of_target: (M, PER_TARGET) positions into ``indices`` of each target example's
        nearest selected rows, most similar first (ties: earlier selected row; -1 = none);
        sims_of_target: their cosines (NaN pad).
    coverage_threshold: a target example with no selected row at least this similar is
        uncovered. duplicate_groups: pool positions of near-duplicate groups among the densest
        rows of ``density_column`` (each group densest row first, groups densest first).
    """

    kind: str
    similarity: str
    coverage_threshold: float
    target_of_selected: np.ndarray
    sim_of_selected: np.ndarray
    rows_of_target: np.ndarray
    sims_of_target: np.ndarray
    duplicate_threshold: float
    duplicate_groups: list[list[int]] = field(default_factory=list)
    density_column: str | None = None
    seconds: float = 0.0

    @property
    def best_sim_of_target(self) -> np.ndarray:
        return self.sims_of_target[:, 0]

    def uncovered(self) -> np.ndarray:
        """Target positions whose nearest selected row is below the coverage threshold,
        least similar first (ties: lower position)."""
        best = np.nan_to_num(self.best_sim_of_target, nan=-np.inf)
        low = np.flatnonzero(best < self.coverage_threshold)
        return low[np.lexsort((low, best[low]))]

    def pool_columns(self, n_pool: int, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Per-pool-row output columns: ``nearest_target`` (1-based number of the nearest
        target example, in the order the target was read; None when no target example has a
        positive similarity to the row, and for rows not selected) and ``nearest_target_sim``
        (its cosine, rounded to 4 decimals; NaN for rows not selected)."""
        number = np.full(n_pool, None, dtype=object)
        sim = np.full(n_pool, np.nan)
        related = self.sim_of_selected > 0
        number[indices[related]] = (self.target_of_selected[related] + 1).tolist()
        sim[indices] = np.round(self.sim_of_selected.astype(np.float64), 4)
        return {"nearest_target": number, "nearest_target_sim": sim}

    def describe(self) -> dict[str, Any]:
        """The manifest's summary (``info["nearest_target"]``)."""
        n_target = len(self.rows_of_target)
        return {"similarity": self.kind, "similarity_detail": self.similarity,
                "columns": ["tasksift_nearest_target (1-based target number)", "tasksift_nearest_target_sim"],
                "coverage_threshold": self.coverage_threshold,
                "targets_covered": int(n_target - len(self.uncovered())), "targets": int(n_target),
                "duplicate_groups": len(self.duplicate_groups), "density_column": self.density_column,
                "seconds": round(self.seconds, 4)}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32; zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    return x / np.maximum(n, 1e-12).astype(np.float32)[:, None]


class TfidfSpace:
    """Hashed word 1-2-gram counts, weighed by an IDF fitted once on the given count matrices."""

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.hasher = HashingVectorizer(n_features=2 ** 20, ngram_range=(1, 2), alternate_sign=False,
                                        norm=None, dtype=np.float32)
        self.weights = None

    def counts(self, examples: Sequence[Example]) -> Any:
        return self.hasher.transform([ex.text[:MAX_CHARS] for ex in examples])

    def fit(self, *counts: Any) -> "TfidfSpace":
        from scipy import sparse
        from sklearn.feature_extraction.text import TfidfTransformer

        self.weights = TfidfTransformer(sublinear_tf=True).fit(sparse.vstack(counts))
        return self

    def weigh(self, counts: Any) -> Any:
        return self.weights.transform(counts).astype(np.float32).tocsr()


def uses_embeddings(timings: Mapping[str, float]) -> bool:
    """Whether this run embedded the pool (so the store holds the selected rows' vectors)."""
    return "embed_pool" in timings


def blocks_of(pool: Any, indices: np.ndarray, rows: int = BLOCK_ROWS):
    for s in range(0, len(indices), rows):
        yield pool.examples(indices[s:s + rows])


def selection_vectors(ctx: Any, indices: np.ndarray) -> tuple[str, Any, Any, Any]:
    """(kind, vectors of the selected rows, vectors of the target, a function giving the
    vectors of other pool positions in the same space). ``ctx`` is the run's
    :class:`~tasksift.methods.base.SelectionContext`."""
    from scipy import sparse

    if uses_embeddings(ctx.timings):
        def embed(exs: Sequence[Example]) -> np.ndarray:
            return unit_rows(ctx.embedder.embed(exs, desc="report: reading embeddings"))

        sel = np.concatenate([embed(b) for b in blocks_of(ctx.pool, indices)])
        return "embeddings", sel, embed(ctx.target), lambda pos: embed(ctx.pool.examples(pos))
    space = TfidfSpace()
    sel_counts = sparse.vstack([space.counts(b) for b in blocks_of(ctx.pool, indices)]).tocsr()
    tgt_counts = space.counts(ctx.target)
    space.fit(sel_counts, tgt_counts)
    return ("tfidf", space.weigh(sel_counts), space.weigh(tgt_counts),
            lambda pos: space.weigh(space.counts(ctx.pool.examples(pos))))


def similarity_block(a: Any, b: Any) -> np.ndarray:
    """Dense (len(a), len(b)) inner products of two row sets (dense arrays or sparse)."""
    s = a @ b.T
    return np.asarray(s.toarray() if hasattr(s, "toarray") else s, dtype=np.float32)


def nearest_pairs(selected: Any, target: Any, per_target: int = PER_TARGET, block: int = BLOCK_ROWS
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact cosine neighbours between unit-norm row sets, ``block`` selected rows at a time.

    Returns (target_of_selected (k,), sim_of_selected (k,), rows_of_target (M, per_target),
    sims_of_target (M, per_target)); ties go to the lower position on both sides."""
    k, m = selected.shape[0], target.shape[0]
    best_t = np.empty(k, dtype=np.int64)
    best_s = np.empty(k, dtype=np.float32)
    top_r = np.empty((m, 0), dtype=np.int64)
    top_s = np.empty((m, 0), dtype=np.float32)
    for s in range(0, k, block):
        sims = similarity_block(selected[s:s + block], target)
        best_t[s:s + len(sims)] = np.argmax(sims, axis=1)        # first maximum: lower target
        best_s[s:s + len(sims)] = sims[np.arange(len(sims)), best_t[s:s + len(sims)]]
        cand_s = np.concatenate([top_s, sims.T], axis=1)
        cand_r = np.concatenate([top_r, np.broadcast_to(np.arange(s, s + len(sims)), (m, len(sims)))], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :per_target]   # kept rows precede new ones
        top_s = np.take_along_axis(cand_s, order, axis=1)
        top_r = np.take_along_axis(cand_r, order, axis=1)
    pad = per_target - top_r.shape[1]
    if pad > 0:
        top_r = np.concatenate([top_r, np.full((m, pad), -1, dtype=np.int64)], axis=1)
        top_s = np.concatenate([top_s, np.full((m, pad), np.nan, dtype=np.float32)], axis=1)
    return best_t, best_s, top_r, top_s


def dense_rows(density: np.ndarray, reached: np.ndarray | None = None, limit: int = MAX_DENSE_ROWS,
               min_density: float = MIN_DENSITY) -> np.ndarray:
    """Pool positions of the ``limit`` densest rows with density >= ``min_density`` (NaN =
    not computed) among the ``reached`` ones (a boolean mask; None = all), densest first,
    ties by lower position."""
    d = np.asarray(density, dtype=np.float64)
    ok = np.nan_to_num(d, nan=-np.inf) >= min_density
    if reached is not None:
        ok &= np.asarray(reached, dtype=bool)
    cand = np.flatnonzero(ok)
    if len(cand) > limit:
        cut = np.partition(d[cand], len(cand) - limit)[len(cand) - limit]
        cand = cand[d[cand] >= cut]
    return cand[np.lexsort((cand, -d[cand]))][:limit]


def duplicate_groups(rows: np.ndarray, vectors: Any, threshold: float) -> list[list[int]]:
    """Greedy near-duplicate groups of ``rows`` (pool positions, densest first) with unit
    ``vectors`` (same order): each row not yet grouped starts a group holding every row not yet
    grouped whose cosine to it is >= ``threshold``. Groups of one row are dropped."""
    if len(rows) == 0:
        return []
    sims = similarity_block(vectors, vectors)
    free = np.ones(len(rows), dtype=bool)
    groups = []
    for i in range(len(rows)):
        if not free[i]:
            continue
        members = np.flatnonzero(free & (sims[i] >= threshold - 1e-6))
        members = np.unique(np.concatenate([[i], members]))
        free[members] = False
        if len(members) > 1:
            groups.append([int(rows[i])] + [int(rows[j]) for j in members if j != i])
    return groups


def explain_selection(ctx: Any, indices: np.ndarray, columns: Mapping[str, np.ndarray]) -> Explanation:
    """The :class:`Explanation` of selecting pool positions ``indices`` in the run of ``ctx``
    (a :class:`~tasksift.methods.base.SelectionContext`); ``columns`` are the method's
    per-pool-row columns (a density column there gives the near-duplicate groups)."""
    t0 = time.perf_counter()
    indices = np.asarray(indices, dtype=np.int64)
    kind, sel, tgt, vectors_of = selection_vectors(ctx, indices)
    best_t, best_s, top_r, top_s = nearest_pairs(sel, tgt)
    density_col = next((c for c in DENSITY_COLUMNS if c in columns), None)
    groups: list[list[int]] = []
    if density_col is not None:
        prob = columns.get(DENSITY_COLUMNS[density_col])
        rows = dense_rows(columns[density_col], None if prob is None else np.nan_to_num(prob) > 0)
        if len(rows):
            groups = duplicate_groups(rows, vectors_of(rows), DUPLICATE_THRESHOLD[kind])
    seconds = time.perf_counter() - t0
    ctx.timings["explain"] = ctx.timings.get("explain", 0.0) + seconds
    return Explanation(kind=kind, similarity=SIMILARITY_NAMES[kind], coverage_threshold=COVERAGE_THRESHOLD[kind],
                       target_of_selected=best_t, sim_of_selected=best_s, rows_of_target=top_r,
                       sims_of_target=top_s, duplicate_threshold=DUPLICATE_THRESHOLD[kind],
                       duplicate_groups=groups, density_column=density_col, seconds=seconds)
