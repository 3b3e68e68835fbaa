"""Nearest-neighbour search under L2 distance: exact (float64 or float32 blocked BLAS) or
approximate (faiss IVF / HNSW), chunked so that memory stays bounded, with recall
measurement against exact search.

Typical use::

    from tasksift.neighbors import knn, NeighborIndex

    res = knn(queries, base, k=100)            # index chosen by size ("auto")
    res.distances, res.ids, res.index, res.recall

    idx = NeighborIndex(base, "ivf", k_hint=1000)
    for start, d2, ids in idx.iter_search(queries, 1000, chunk=8192):
        ...                                       # reduce each chunk, keep nothing big

Index kinds (``index=``):

- ``"exact"``: float64 BLAS, chunked (precise; for small problems),
- ``"flat"``: exact in float32, blocked BLAS with a running top-k (like faiss ``IndexFlatL2``
  but without copying the base into an index),
- ``"ivf"``: faiss ``IndexIVFFlat`` with ``nlist ~ sqrt(n)`` lists; ``nprobe`` is set so
  that a search scans several times ``k`` vectors,
- ``"hnsw"``: faiss ``IndexHNSWFlat`` (M=32; ``efSearch >= k``),
- ``"auto"``: ``exact`` for tiny problems, ``flat`` while ``n_queries * n_base`` is moderate,
  ``ivf`` beyond (see :func:`resolve_index`),
- any other string is passed to ``faiss.index_factory`` (e.g. ``"IVF4096,Flat"``).

Approximate searches may return id ``-1`` (fewer than ``k`` results found); callers must drop
them. Distances returned by :func:`knn` are L2 (not squared), float64, ascending per row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .errors import ConfigError

#: ``auto`` uses float64 BLAS when n_queries * n_base is at most this.
EXACT64_MAX_PAIRS = 2e7
#: ``auto`` uses ``flat`` (exact, float32 blocked BLAS) when n_queries * n_base is at most this.
FLAT_MAX_PAIRS = 4e8
#: Bytes of scratch memory a chunk of a search may use (distance block or result block).
CHUNK_BYTES = 256 * 2**20

INDEX_KINDS = ("auto", "exact", "flat", "ivf", "hnsw")


@dataclass
class KNNResult:
    """Result of :func:`knn`.

    distances: (nq, k) float64 L2 distances, ascending per row, ``inf`` where ``ids == -1``.
    ids: (nq, k) int64 base positions, ``-1`` where the index found fewer than ``k``.
    index: description of the index used (e.g. ``"flat"``, ``"ivf(nlist=316,nprobe=16)"``).
    recall: mean recall@k of the returned ids against exact search on a sample of queries
        (1.0 for exact indexes; ``None`` if not measured).
    info: extra facts (build/search seconds, recall sample size).
    """

    distances: np.ndarray
    ids: np.ndarray
    index: str
    recall: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _as_f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def resolve_index(index: str, n_queries: int, n_base: int) -> str:
    """The concrete index kind that ``index`` (maybe ``"auto"``) means for this problem size."""
    if not isinstance(index, str) or not index:
        raise ConfigError(f"index must be one of {INDEX_KINDS} or a faiss factory string, got {index!r}")
    if index != "auto":
        return index
    pairs = float(n_queries) * float(n_base)
    if pairs <= EXACT64_MAX_PAIRS and n_base <= 200_000:
        return "exact"
    if pairs <= FLAT_MAX_PAIRS or n_base < 20000:
        return "flat"
    return "ivf"


def ivf_params(n_base: int, k: int, *, nlist: int | None = None, nprobe: int | None = None,
               scan_factor: float = 8.0) -> tuple[int, int]:
    """IVF settings: ``nlist ~ sqrt(n)`` (at least 39 training points per list), and ``nprobe``
    so that about ``scan_factor * k`` base vectors are scanned per query (at least 16)."""
    if nlist is None:
        nlist = int(max(1, min(round(math.sqrt(n_base)), n_base // 39)))
    if nprobe is None:
        per_list = n_base / nlist
        nprobe = int(max(16, math.ceil(scan_factor * k / max(per_list, 1.0))))
    return nlist, int(min(nprobe, nlist))


class NeighborIndex:
    """An L2 nearest-neighbour index over ``base`` (n, d).

    ``kind``: see the module docstring (``"auto"`` needs ``n_queries_hint``). ``k_hint`` is the
    number of neighbours searches will ask for (sets IVF ``nprobe`` and HNSW ``efSearch``).
    ``seed`` makes IVF training reproducible.
    """

    def __init__(self, base: np.ndarray, kind: str = "auto", *, k_hint: int = 10,
                 n_queries_hint: int | None = None, seed: int | None = 0,
                 nlist: int | None = None, nprobe: int | None = None, hnsw_m: int = 32,
                 ef_search: int | None = None, train_size: int = 100_000) -> None:
        base = np.asarray(base)
        if base.ndim != 2:
            raise ValueError(f"base must be 2-d, got shape {base.shape}")
        self.n, self.d = base.shape
        self.kind = resolve_index(kind, n_queries_hint if n_queries_hint is not None else self.n, self.n)
        self.base = base
        self.k_hint = int(k_hint)
        self._faiss_index = None
        self.description = self.kind
        if self.kind == "exact":
            self._b64 = None
            return
        import faiss

        if self.kind == "flat":  # searched by exact_search: blocked BLAS, no copy of the base
            return
        xb = _as_f32(base)
        if self.kind == "ivf":
            nl, npb = ivf_params(self.n, self.k_hint, nlist=nlist, nprobe=nprobe)
            quant = faiss.IndexFlatL2(self.d)
            idx = faiss.IndexIVFFlat(quant, self.d, nl, faiss.METRIC_L2)
            idx.cp.seed = int(seed or 0)
            train = xb
            if self.n > max(train_size, 64 * nl):
                rng = np.random.default_rng(seed)
                train = xb[np.sort(rng.choice(self.n, size=max(train_size, 64 * nl), replace=False))]
            idx.train(train)
            idx.add(xb)
            idx.nprobe = npb
            self.description = f"ivf(nlist={nl},nprobe={npb})"
        elif self.kind == "hnsw":
            idx = faiss.IndexHNSWFlat(self.d, int(hnsw_m))
            idx.hnsw.efConstruction = 80
            idx.add(xb)
            ef = int(ef_search or max(64, int(1.5 * self.k_hint)))
            idx.hnsw.efSearch = ef
            self.description = f"hnsw(M={hnsw_m},efSearch={ef})"
        else:
            try:
                idx = faiss.index_factory(self.d, self.kind, faiss.METRIC_L2)
            except RuntimeError as e:
                raise ConfigError(f"index {self.kind!r} is not one of {INDEX_KINDS} nor a faiss "
                                  f"factory string ({str(e).splitlines()[0][:120]})") from None
            if not idx.is_trained:
                rng = np.random.default_rng(seed)
                sub = xb if self.n <= train_size else xb[np.sort(rng.choice(self.n, train_size, replace=False))]
                idx.train(sub)
            idx.add(xb)
            if nprobe is not None:
                faiss.ParameterSpace().set_index_parameter(idx, "nprobe", int(nprobe))
        self._faiss_index = idx

    @property
    def exact(self) -> bool:
        """Whether searches are exact (``exact`` or ``flat``)."""
        return self.kind in ("exact", "flat")

    def _chunk_rows(self, k: int, chunk: int | None) -> int:
        if chunk:
            return max(1, int(chunk))
        per_row = 12 * k + (8 * self.n if self.kind == "exact" else 0) + \
            (12 * 16384 if self.kind == "flat" else 0)
        return int(max(1, min(65536, CHUNK_BYTES // max(per_row, 1))))

    def _search_exact64(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._b64 is None:
            self._b64 = np.asarray(self.base, dtype=np.float64)
            self._bn = np.einsum("ij,ij->i", self._b64, self._b64)
        q = np.asarray(q, dtype=np.float64)
        d2 = np.einsum("ij,ij->i", q, q)[:, None] + self._bn[None, :] - 2.0 * (q @ self._b64.T)
        np.maximum(d2, 0.0, out=d2)
        if k < self.n:
            part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(self.n), d2.shape)
        pd = np.take_along_axis(d2, part, axis=1)
        order = np.lexsort((part, pd), axis=1)
        return np.take_along_axis(pd, order, axis=1), np.take_along_axis(part, order, axis=1).astype(np.int64)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances (float64 for ``exact``, else float32) and ids (int64, -1 = none)
        of the ``k`` nearest base rows of each query, for one block of queries."""
        k = int(min(k, self.n))
        if self.kind == "exact":
            return self._search_exact64(queries, k)
        if self.kind == "flat":
            return exact_search(queries, self.base, k)
        d2, ids = self._faiss_index.search(_as_f32(queries), k)
        return d2, ids.astype(np.int64, copy=False)

    def iter_search(self, queries: np.ndarray, k: int, *, chunk: int | None = None
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Search ``queries`` in blocks; yields ``(start_row, sq_dists, ids)`` per block so the
        caller can reduce each block (memory: about ``chunk * k * 12`` bytes at a time)."""
        rows = self._chunk_rows(k, chunk)
        for s in range(0, len(queries), rows):
            d2, ids = self.search(queries[s:s + rows], k)
            yield s, d2, ids

    def search_all(self, queries: np.ndarray, k: int, *, chunk: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search` for all queries at once (chunked internally)."""
        k = int(min(k, self.n))
        nq = len(queries)
        d2 = np.empty((nq, k), dtype=np.float64 if self.kind == "exact" else np.float32)
        ids = np.empty((nq, k), dtype=np.int64)
        for s, dd, ii in self.iter_search(queries, k, chunk=chunk):
            d2[s:s + len(dd)] = dd
            ids[s:s + len(ii)] = ii
        return d2, ids

    def recall(self, queries: np.ndarray, ids: np.ndarray, k: int, *, sample: int = 50,
               seed: int | None = 0, rows: np.ndarray | None = None) -> tuple[float, int]:
        """Mean recall@k of ``ids`` (the rows of this index's answers for ``queries``) against
        exact search, on ``sample`` random queries. Returns (recall, number of queries used).
        ``rows`` picks the queries explicitly instead."""
        k = int(min(k, self.n))
        if self.exact:
            return 1.0, 0
        if rows is None:
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(len(queries), size=min(sample, len(queries)), replace=False))
        _, true = exact_search(np.asarray(queries)[rows], self.base, k)
        return recall_at_k(ids[rows][:, :k], true), len(rows)


def exact_search(queries: np.ndarray, base: np.ndarray, k: int, *, chunk: int = 16384
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by float32 BLAS over blocks of ``chunk`` base rows with a
    running top-k (no copy of ``base``; memory ~ n_queries * (chunk + k) * 12 bytes per block
    of queries). Returns (squared distances float32, ids int64), ascending, ties by lower id."""
    base = np.asarray(base)
    n = len(base)
    k = int(min(k, n))
    nq = len(queries)
    out_d = np.empty((nq, k), dtype=np.float32)
    out_i = np.empty((nq, k), dtype=np.int64)
    qrows = max(1, int(CHUNK_BYTES // (12 * (chunk + k))))
    for qs in range(0, nq, qrows):
        q = _as_f32(queries[qs:qs + qrows])
        qn = np.einsum("ij,ij->i", q, q)
        best_d = np.empty((len(q), 0), dtype=np.float32)
        best_i = np.empty((len(q), 0), dtype=np.int64)
        for s in range(0, n, chunk):
            xb = _as_f32(base[s:s + chunk])
            d2 = qn[:, None] + np.einsum("ij,ij->i", xb, xb)[None, :] - 2.0 * (q @ xb.T)
            cd = np.concatenate([best_d, d2], axis=1)
            ci = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + len(xb)), d2.shape)], axis=1)
            if cd.shape[1] > k:
                part = np.argpartition(cd, k - 1, axis=1)[:, :k]
                cd = np.take_along_axis(cd, part, axis=1)
                ci = np.take_along_axis(ci, part, axis=1)
            best_d, best_i = cd, ci
        order = np.lexsort((best_i, best_d), axis=1)
        out_d[qs:qs + len(q)] = np.maximum(np.take_along_axis(best_d, order, axis=1), 0.0)
        out_i[qs:qs + len(q)] = np.take_along_axis(best_i, order, axis=1)
    return out_d, out_i


def recall_at_k(approx_ids: np.ndarray, true_ids: np.ndarray) -> float:
    """Mean over rows of |approx ∩ true| / |true| (ids -1 ignored)."""
    approx_ids = np.asarray(approx_ids)
    true_ids = np.asarray(true_ids)
    if true_ids.size == 0:
        return 1.0
    nq, k = true_ids.shape
    # per-row intersection size, vectorised: tag ids with their row, intersect flattened
    big = np.int64(max(int(true_ids.max(initial=0)), int(approx_ids.max(initial=0))) + 1)
    rows = np.arange(nq, dtype=np.int64)[:, None]
    a = (rows * big + approx_ids)[approx_ids >= 0]
    t = (rows * big + true_ids)[true_ids >= 0]
    hit = np.isin(t, a)
    per_row = np.bincount((t // big)[hit], minlength=nq) / np.maximum(
        np.bincount(t // big, minlength=nq), 1)
    return float(per_row.mean())


def refine_distances(queries: np.ndarray, base: np.ndarray, ids: np.ndarray, *,
                     chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """Exact float64 L2 distances ``||queries[i] - base[ids[i, j]]||`` (inf where ids < 0),
    computed in blocks of queries so that memory stays under about ``chunk_bytes``."""
    nq, k = ids.shape
    d = np.asarray(base).shape[1]
    out = np.full((nq, k), np.inf)
    rows = max(1, int(chunk_bytes // max(1, k * d * 8)))
    for s in range(0, nq, rows):
        ii = ids[s:s + rows]
        ok = ii >= 0
        diff = np.asarray(base[np.where(ok, ii, 0)], dtype=np.float64)
        diff -= np.asarray(queries[s:s + rows], dtype=np.float64)[:, None, :]
        dd = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        out[s:s + rows] = np.where(ok, dd, np.inf)
    return out


def knn(queries: np.ndarray, base: np.ndarray, k: int, *, index: str | NeighborIndex = "auto",
        seed: int | None = 0, recall_sample: int = 50, refine: bool = True,
        chunk: int | None = None) -> KNNResult:
    """The ``k`` nearest base rows of each query under L2.

    Returns a :class:`KNNResult` with float64 L2 distances (recomputed exactly in float64 for
    the returned pairs when ``refine``; rows re-sorted, ties by lower id) and the measured
    recall@k of approximate indexes on ``recall_sample`` queries.
    """
    import time

    k = int(min(k, len(base)))
    t0 = time.perf_counter()
    idx = index if isinstance(index, NeighborIndex) else NeighborIndex(
        base, index, k_hint=k, n_queries_hint=len(queries), seed=seed)
    t1 = time.perf_counter()
    d2, ids = idx.search_all(queries, k, chunk=chunk)
    t2 = time.perf_counter()
    if refine and idx.kind != "exact":
        dist = refine_distances(queries, base, ids)
    else:
        dist = np.where(ids >= 0, np.sqrt(np.maximum(d2.astype(np.float64), 0.0)), np.inf)
    order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), dist), axis=1)
    dist = np.take_along_axis(dist, order, axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    ids[~np.isfinite(dist)] = -1
    t3 = time.perf_counter()
    rec, used = idx.recall(queries, ids, k, sample=recall_sample, seed=seed)
    t4 = time.perf_counter()
    return KNNResult(dist, ids, idx.description, rec,
                     {"build_s": t1 - t0, "search_s": t2 - t1, "refine_s": t3 - t2,
                      "recall_s": t4 - t3, "recall_queries": used})


def min_distance(points: np.ndarray, centers: np.ndarray, *, chunk: int = 65536) -> np.ndarray:
    """For each row of ``points``, its L2 distance to the nearest row of ``centers`` (float64,
    exact; chunked over points)."""
    c = np.asarray(centers, dtype=np.float64)
    cn = np.einsum("ij,ij->i", c, c)
    out = np.empty(len(points))
    for s in range(0, len(points), chunk):
        p = np.asarray(points[s:s + chunk], dtype=np.float64)
        d2 = np.einsum("ij,ij->i", p, p)[:, None] + cn[None, :] - 2.0 * (p @ c.T)
        out[s:s + chunk] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out
