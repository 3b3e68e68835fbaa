"""Hashed n-gram features: bag of hashed unigrams and bigrams per example, as scipy.sparse.

Text is lower-cased and split into word tokens (``\\w+`` runs, Unicode aware) and single
punctuation marks, as DSIR's ``wordpunct`` tokenisation does. Each token gets a stable 64-bit
hash (blake2b of its UTF-8 bytes, independent of the Python process's hash seed); a bigram's
hash mixes its two tokens' hashes. Unigrams and bigrams share one space of ``num_buckets``
buckets (hash modulo ``num_buckets``), so an example becomes a row of counts.

The features are cheap (tens of thousands of rows per second) and are recomputed on each
run rather than stored in the row-level feature cache, whose shards hold dense rows. A pool
is hashed a batch at a time (:func:`iter_ngram_counts`), so memory holds one batch's matrix.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_MIX = np.uint64(0x9E3779B97F4A7C15)
TEXT_FIELDS = ("text", "prompt", "response")


@dataclass(frozen=True)
class NgramConfig:
    """What changes the features: bucket count, n-gram orders, text field and truncation."""

    num_buckets: int = 10_000
    ngrams: tuple[int, ...] = (1, 2)
    text: str = "text"            # "text" (prompt + response), "prompt" or "response"
    max_chars: int | None = 20_000  # truncate very long texts (None = never)

    def __post_init__(self) -> None:
        if int(self.num_buckets) < 1:
            raise ConfigError(f"num_buckets must be >= 1, got {self.num_buckets}")
        bad = [n for n in self.ngrams if n not in (1, 2)]
        if bad or not self.ngrams:
            raise ConfigError(f"ngrams must be a non-empty subset of [1, 2], got {list(self.ngrams)}")
        if self.text not in TEXT_FIELDS:
            raise ConfigError(f"ngram text must be one of {list(TEXT_FIELDS)}, got {self.text!r}")

    def describe(self) -> dict:
        return asdict(self)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens and single punctuation marks."""
    return _TOKEN.findall(text.lower())


def _splitmix(h: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (splitmix64) so that bucket = hash % B uses all bits."""
    h = h.copy()
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


class TokenHasher:
    """Stable 64-bit token hashes, memoised per distinct token (the memo is emptied when it
    holds ``max_memo`` tokens, so a long stream of text keeps it bounded)."""

    def __init__(self, max_memo: int = 1_000_000) -> None:
        self._memo: dict[str, int] = {}
        self.max_memo = int(max_memo)

    def __call__(self, tokens: Iterable[str]) -> list[int]:
        if len(self._memo) > self.max_memo:
            self._memo = {}
        memo = self._memo
        out = []
        for t in tokens:
            h = memo.get(t)
            if h is None:
                h = int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little")
                memo[t] = h
            out.append(h)
        return out


def ngram_buckets(token_hashes: np.ndarray, doc_of_token: np.ndarray, config: NgramConfig
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Bucket ids of every unigram and bigram, with the document each belongs to.

    ``token_hashes`` (uint64) are all documents' tokens concatenated; ``doc_of_token`` gives
    each token's document (non-decreasing). Bigrams never span two documents.
    """
    b = np.uint64(config.num_buckets)
    buckets, docs = [], []
    if 1 in config.ngrams:
        buckets.append(_splitmix(token_hashes) % b)
        docs.append(doc_of_token)
    if 2 in config.ngrams and len(token_hashes) > 1:
        same = doc_of_token[:-1] == doc_of_token[1:]
        with np.errstate(over="ignore"):
            mixed = token_hashes[:-1][same] * _MIX + (token_hashes[1:][same] ^ np.uint64(0x2545F4914F6CDD1D))
        buckets.append(_splitmix(mixed) % b)
        docs.append(doc_of_token[:-1][same])
    if not buckets:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(buckets).astype(np.int64), np.concatenate(docs).astype(np.int64)


def hashed_ngram_counts(texts: Sequence[str], config: NgramConfig | None = None,
                        hasher: TokenHasher | None = None) -> sp.csr_matrix:
    """(len(texts), num_buckets) CSR matrix of hashed unigram+bigram counts (float64).
    ``hasher``: a :class:`TokenHasher` to share its memo across calls."""
    config = config or NgramConfig()
    hasher = hasher or TokenHasher()
    all_hashes: list[int] = []
    lengths = np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        if config.max_chars is not None:
            text = text[:config.max_chars]
        h = hasher(tokenize(text))
        lengths[i] = len(h)
        all_hashes.extend(h)
    hashes = np.asarray(all_hashes, dtype=np.uint64)
    doc = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    buckets, docs = ngram_buckets(hashes, doc, config)
    m = sp.csr_matrix((np.ones(len(buckets)), (docs, buckets)),
                      shape=(len(texts), config.num_buckets), dtype=np.float64)
    m.sum_duplicates()
    return m


def example_texts(examples: Sequence, field: str = "text") -> list[str]:
    """The text of each example to hash: ``text``, ``prompt`` or ``response``."""
    if field not in TEXT_FIELDS:
        raise ConfigError(f"ngram text must be one of {list(TEXT_FIELDS)}, got {field!r}")
    return [getattr(ex, field) or "" for ex in examples]


def example_ngram_counts(examples: Sequence, config: NgramConfig | None = None) -> sp.csr_matrix:
    """Hashed n-gram counts of :class:`~tasksift.data.example.Example` objects."""
    config = config or NgramConfig()
    return hashed_ngram_counts(example_texts(examples, config.text), config)


def iter_ngram_counts(batches: Iterable[Sequence], config: NgramConfig | None = None) -> Iterator[sp.csr_matrix]:
    """Hashed n-gram counts of batches of Examples (e.g. ``pool.batches()``), one CSR
    matrix per batch; the rows of all batches stacked equal :func:`example_ngram_counts`."""
    config = config or NgramConfig()
    hasher = TokenHasher()
    for batch in batches:
        yield hashed_ngram_counts(example_texts(batch, config.text), config, hasher)


def ngram_totals(batches: Iterable[Sequence], config: NgramConfig | None = None) -> np.ndarray:
    """Per-bucket n-gram counts summed over every example of ``batches`` (float64)."""
    config = config or NgramConfig()
    totals = np.zeros(config.num_buckets, dtype=np.float64)
    for counts in iter_ngram_counts(batches, config):
        totals += np.asarray(counts.sum(axis=0), dtype=np.float64).ravel()
    return totals
