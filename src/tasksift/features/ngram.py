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
from itertools import chain
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


class _Memo(dict):
    """token -> stable 64-bit hash, computed on first lookup (``memo[token]``)."""

    def __missing__(self, token: str) -> int:
        h = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")
        self[token] = h
        return h


class TokenHasher:
    """Stable 64-bit token hashes, memoised per distinct token (the memo is emptied when it
    holds ``max_memo`` tokens, so a long stream of text keeps it bounded). A token already
    seen costs one C-level dict lookup (``map`` over the memo), no Python-level call."""

    def __init__(self, max_memo: int = 1_000_000) -> None:
        self._memo = _Memo()
        self.max_memo = int(max_memo)

    def __call__(self, tokens: Iterable[str]) -> list[int]:
        if len(self._memo) > self.max_memo:
            self._memo = _Memo()
        return list(map(self._memo.__getitem__, tokens))


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
    cut = config.max_chars
    tokens = [tokenize(t if cut is None else t[:cut]) for t in texts]
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    hashes = np.array(hasher(chain.from_iterable(tokens)), dtype=np.uint64)
    del tokens
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


def iter_text_ngram_counts(text_batches: Iterable[Sequence[str]], config: NgramConfig | None = None
                           ) -> Iterator[sp.csr_matrix]:
    """Hashed n-gram counts of batches of texts (e.g. ``pool.text_batches(config.text)``),
    one CSR matrix per batch, sharing one token-hash memo."""
    config = config or NgramConfig()
    hasher = TokenHasher()
    for texts in text_batches:
        yield hashed_ngram_counts(texts, config, hasher)


class CountSpill:
    """Count matrices (CSR) appended to an unlinked temporary file (``folder``, default the
    system temp folder) and read back in order, bit for bit, so a second pass over a pool's
    counts need not tokenize it again. Bucket ids are stored as uint16 (uint32 above 65,536
    buckets) and counts as uint16 where every count fits (else float64): about 4 bytes per
    non-zero count, a few hundred bytes a row of text."""

    def __init__(self, num_buckets: int, folder: str | None = None) -> None:
        import tempfile

        self.num_buckets = int(num_buckets)
        self._file = tempfile.TemporaryFile(dir=folder)
        self._index_dtype = np.dtype(np.uint16 if self.num_buckets <= 1 << 16 else np.uint32)
        self._parts: list[tuple[int, int, np.dtype]] = []   # (rows, nnz, dtype of the counts)

    def add(self, counts: sp.csr_matrix) -> None:
        counts = sp.csr_matrix(counts)
        data = counts.data
        small = data.astype(np.uint16)
        stored = small if np.array_equal(small, data) else data.astype(np.float64)
        for arr in (np.diff(counts.indptr).astype(np.uint32), counts.indices.astype(self._index_dtype), stored):
            self._file.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
        self._parts.append((counts.shape[0], counts.nnz, stored.dtype))

    def __iter__(self) -> Iterator[sp.csr_matrix]:
        """The matrices added, in order (float64 counts, as :func:`hashed_ngram_counts` gives)."""
        f = self._file
        f.flush()
        f.seek(0)
        for rows, nnz, dtype in self._parts:
            lens = np.fromfile(f, dtype=np.uint32, count=rows)
            indices = np.fromfile(f, dtype=self._index_dtype, count=nnz).astype(np.int32)
            data = np.fromfile(f, dtype=dtype, count=nnz).astype(np.float64)
            indptr = np.zeros(rows + 1, dtype=np.int32 if nnz < 2**31 else np.int64)
            np.cumsum(lens, out=indptr[1:])
            yield sp.csr_matrix((data, indices, indptr), shape=(rows, self.num_buckets))

    def close(self) -> None:
        self._file.close()


def ngram_totals(batches: Iterable[Sequence], config: NgramConfig | None = None) -> np.ndarray:
    """Per-bucket n-gram counts summed over every example of ``batches`` (float64)."""
    config = config or NgramConfig()
    totals = np.zeros(config.num_buckets, dtype=np.float64)
    for counts in iter_ngram_counts(batches, config):
        totals += np.asarray(counts.sum(axis=0), dtype=np.float64).ravel()
    return totals
