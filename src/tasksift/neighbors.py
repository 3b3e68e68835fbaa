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
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

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


class TopK:
    """The running ``k`` smallest distances of each query over blocks of candidates.

    Blocks come from any iterator (an array cut in blocks, a ``.npy`` file read block by
    block, per-shard result lists from workers, in any order) and are merged into one result:
    the same code serves memory and disk. A block entry is looked at only when it is not
    larger than the query's current bound (the ``k``-th smallest distance at the last
    compaction), so after the first blocks most of each block is skipped by one comparison.
    Entries that pass wait in a per-query buffer; a query's buffer is cut back to its ``k``
    smallest only when it holds ``2 k`` entries (and at :meth:`result`), so the selection runs
    about once per ``k`` entries kept instead of once per block. Ties are broken by lower id,
    whatever the block order.
    """

    def __init__(self, n_queries: int, k: int) -> None:
        self.k = int(k)
        nq = int(n_queries)
        self.dists: list[list[np.ndarray]] = [[] for _ in range(nq)]
        self.ids: list[list[np.ndarray]] = [[] for _ in range(nq)]
        self.held = np.zeros(nq, dtype=np.int64)  # entries buffered per query
        self.bound = np.full(nq, np.inf)  # the k-th smallest at the last compaction (inf until k seen)

    def _compact(self, r: int) -> None:
        d = np.concatenate(self.dists[r]) if len(self.dists[r]) != 1 else self.dists[r][0]
        i = np.concatenate(self.ids[r]) if len(self.ids[r]) != 1 else self.ids[r][0]
        d, i, bnd = keep_smallest(d, i, self.k)
        self.dists[r], self.ids[r], self.held[r] = [d], [i], len(d)
        if len(d) >= self.k:
            self.bound[r] = bnd

    def add(self, dists: np.ndarray, ids: np.ndarray) -> None:
        """Merge one block: ``dists`` (n_queries, b) and ``ids`` (b,) shared by all queries or
        (n_queries, b) per query; ids < 0 are ignored."""
        ids = np.asarray(ids, dtype=np.int64)
        shared = ids.ndim == 1
        valid = None if (shared and (len(ids) == 0 or ids.min() >= 0)) else ids >= 0
        bound = self.bound.astype(dists.dtype)
        for r in range(len(dists)):  # one row at a time: no index arrays over the whole block
            row_ok = valid if (valid is None or shared) else valid[r]
            if np.isinf(self.bound[r]):
                c = None if row_ok is None else np.flatnonzero(row_ok)
            else:
                keep = dists[r] <= bound[r]
                if row_ok is not None:
                    keep &= row_ok
                c = np.flatnonzero(keep)
                if not len(c):
                    continue
            dr = dists[r] if c is None else dists[r, c]
            ir = (ids if shared else ids[r]) if c is None else (ids[c] if shared else ids[r, c])
            self.dists[r].append(np.array(dr, copy=c is None))  # a copy: the block may be reused
            self.ids[r].append(np.array(ir, copy=c is None))
            self.held[r] += len(dr)
            if self.held[r] >= (2 * self.k if np.isfinite(self.bound[r]) else self.k):
                self._compact(r)

    def result(self, *, sort: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), each (n_queries, k), padded with ``inf`` / ``-1`` where fewer
        than ``k`` were seen; ascending per row with ties by lower id (``sort=False``: the
        same ``k`` entries per row in no particular order, padding last)."""
        nq = len(self.dists)
        dtypes = [p.dtype for parts in self.dists for p in parts[:1]]
        dtype = np.result_type(*dtypes) if dtypes else np.float32
        out_d = np.full((nq, self.k), np.inf, dtype=dtype)
        out_i = np.full((nq, self.k), -1, dtype=np.int64)
        for r in range(nq):
            if not self.dists[r]:
                continue
            self._compact(r)
            d, i = self.dists[r][0], self.ids[r][0]
            if sort:
                order = np.lexsort((i, d))
                d, i = d[order], i[order]
            out_d[r, :len(d)], out_i[r, :len(d)] = d, i
        return out_d, out_i


def keep_smallest(d: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The ``k`` entries of ``(d, ids)`` with the smallest ``d`` (ties: lower id), unsorted,
    and the largest kept distance (inf when fewer than ``k`` entries)."""
    if len(d) <= k:
        return d, ids, (float(d.max()) if len(d) == k else np.inf)
    part = np.argpartition(d, k - 1)[:k]
    cut = d[part].max()
    less = np.flatnonzero(d < cut)
    tied = np.flatnonzero(d == cut)
    tied = tied[np.argsort(ids[tied], kind="stable")[:k - len(less)]]
    keep = np.concatenate([less, tied])
    return d[keep], ids[keep], float(cut)


def block_rows(n_cols: int, itemsize: int = 4, budget: int = CHUNK_BYTES) -> int:
    """Rows of a (rows x ``n_cols``) scratch block that fit in ``budget`` bytes."""
    return int(max(1, min(65536, budget // max(1, n_cols * itemsize))))


def search_blocks(queries: np.ndarray, blocks: Iterable[tuple[int, np.ndarray]], k: int, *,
                  sort: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours of each query over ``(start, rows)`` blocks of a
    candidate set (e.g. :func:`iter_row_blocks`), by float32 BLAS per block and one
    :class:`TopK` merge. Returns (squared L2 distances float32, global ids int64), ascending,
    ties by lower id (``sort=False``: the same entries in no particular order), padded with
    inf / -1 when fewer than ``k`` rows were seen."""
    q = _as_f32(queries)
    qn = np.einsum("ij,ij->i", q, q)
    q2 = q * np.float32(-2.0)  # exact: -2 q . x is the same float32 product either way
    top = TopK(len(q), k)
    for start, xb in blocks:
        xb = _as_f32(xb)
        d2 = q2 @ xb.T
        d2 += qn[:, None]
        d2 += np.einsum("ij,ij->i", xb, xb)[None, :]
        np.maximum(d2, 0.0, out=d2)
        top.add(d2, np.arange(start, start + len(xb), dtype=np.int64))
    return top.result(sort=sort)


def exact_search(queries: np.ndarray, base: np.ndarray, k: int, *, chunk: int | None = None,
                 sort: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of ``queries`` among the rows of ``base`` (an array or a
    memory map; no copy of it is made) by :func:`search_blocks` over blocks of ``chunk`` rows
    (default: blocks of about ``CHUNK_BYTES / 4`` of distances). Returns (squared distances
    float32, ids int64), ascending, ties by lower id (``sort=False``: unordered)."""
    k = int(min(k, len(base)))
    rows = int(chunk) if chunk else block_rows(max(1, len(queries)), 4, CHUNK_BYTES // 4)
    return search_blocks(queries, iter_row_blocks(base, rows), k, sort=sort)


def merge_topk(parts: Iterable[tuple[np.ndarray, np.ndarray, int]], k: int, metric: str = "l2"
               ) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard result lists ``(distances, local ids, offset of the shard)`` into the
    global top-``k`` of each query (``metric="ip"``: largest inner products first), ties by
    lower global id, ids -1 dropped (padded with inf / -1)."""
    top: TopK | None = None
    sign = -1.0 if metric == "ip" else 1.0
    for d, i, off in parts:
        d = np.asarray(d)
        i = np.asarray(i, dtype=np.int64)
        if top is None:
            top = TopK(len(d), k)
        top.add(sign * d, np.where(i >= 0, i + off, -1))
    if top is None:
        raise ValueError("merge_topk needs at least one part")
    d, i = top.result()
    return sign * d, i


def npy_layout(path: "str | os.PathLike") -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, byte offset of the data) of a C-order ``.npy`` file."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if fortran and len(shape) > 1:
        raise ConfigError(f"{path}: Fortran-ordered .npy files are not supported; save it C-ordered")
    return tuple(shape), np.dtype(dtype), offset


def read_npy_rows(path: "str | os.PathLike", start: int, end: int, rows: np.ndarray | None = None
                  ) -> np.ndarray:
    """Rows ``start:end`` (or the sorted absolute ``rows`` within that range) of a 2-d C-order
    ``.npy`` file, read with ``pread`` into a fresh array: unlike a memory map, the file's
    pages are not charged to this process's resident size."""
    shape, dtype, offset = npy_layout(path)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    fd = os.open(path, os.O_RDONLY)
    try:
        def read_range(a: int, b: int, out: np.ndarray) -> None:
            view, pos = memoryview(out.reshape(-1).view(np.uint8)), 0
            while pos < len(view):
                got = os.preadv(fd, [view[pos:]], offset + a * row_bytes + pos)
                if got <= 0:
                    raise OSError(f"{path}: short read at row {a}")
                pos += got

        if rows is None or 4 * len(rows) >= end - start:
            block = np.empty((end - start, *shape[1:]), dtype=dtype)
            if end > start:
                read_range(start, end, block)
            return block if rows is None else block[np.asarray(rows) - start]
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *shape[1:]), dtype=dtype)
        if len(rows):
            cut = np.flatnonzero(np.diff(rows) != 1) + 1
            for a, b in zip(np.concatenate([[0], cut]), np.concatenate([cut, [len(rows)]])):
                read_range(int(rows[a]), int(rows[a]) + int(b - a), out[a:b])
        return out
    finally:
        os.close(fd)


def read_rows(source: "np.ndarray | str | os.PathLike", start: int, end: int,
              rows: np.ndarray | None = None) -> np.ndarray:
    """Rows ``start:end`` (or the sorted absolute ``rows`` within it) of an array, a memory
    map or a ``.npy`` path (read with :func:`read_npy_rows`)."""
    if isinstance(source, (str, os.PathLike)):
        return read_npy_rows(source, start, end, rows)
    return np.asarray(source[start:end] if rows is None else source[np.asarray(rows)])


def iter_row_blocks(source: "np.ndarray | str | os.PathLike", rows: int, start: int = 0,
                    end: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, block)`` over rows ``start:end`` of an array, memory map or ``.npy``
    path, ``rows`` at a time (one block in memory at once for a path)."""
    n = npy_layout(source)[0][0] if isinstance(source, (str, os.PathLike)) else len(source)
    end = n if end is None else min(end, n)
    for s in range(start, end, max(1, int(rows))):
        yield s, read_rows(source, s, min(end, s + int(rows)))


def _search_shard_task(source: Any, start: int, end: int, k: int, metric: str, *,
                       query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of one shard (rows ``start:end`` of ``source``); ids local to the shard."""
    x = read_rows(source, start, end)
    if metric == "l2":
        return exact_search(query, x, k)
    top = TopK(len(query), min(k, len(x)))
    top.add(-(_as_f32(query) @ _as_f32(x).T), np.arange(len(x), dtype=np.int64))
    d, ids = top.result()
    return -d, ids


def sharded_search(query: np.ndarray, candidates: "np.ndarray | str | os.PathLike", k: int, *,
                   metric: str = "l2", shard_rows: int = 250_000, executor: Any = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours of each query among ``candidates`` (squared L2 distances
    for ``metric="l2"``, inner products for ``"ip"``), searched shard by shard on
    ``executor`` (an :class:`~tasksift.exec.Executor`; default: this process) and merged by
    :func:`merge_topk`.

    ``candidates`` may be an array, a ``np.memmap`` or the path of a ``.npy`` file, which
    each task reads only its own shard of (the path must be visible to every worker)."""
    from .exec import make_executor

    if metric not in ("l2", "ip"):
        raise ConfigError(f"metric must be 'l2' or 'ip', got {metric!r}")
    executor = make_executor("local") if executor is None else executor
    path = os.fspath(candidates) if isinstance(candidates, (str, os.PathLike)) else None
    n = npy_layout(path)[0][0] if path else len(candidates)
    k = min(int(k), n)
    bounds = [(s, min(n, s + int(shard_rows))) for s in range(0, n, int(shard_rows))]
    calls = ((s, (path, s, e, k, metric) if path else (candidates[s:e], 0, e - s, k, metric))
             for s, e in bounds)
    done = executor.map_tasks(_search_shard_task, calls, shared={"query": _as_f32(query)})
    return merge_topk(((d, i, s) for s, (d, i) in done), k, metric)


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


def gathered_distances(queries: np.ndarray, rows: np.ndarray, pos: np.ndarray, *,
                       chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """Float64 L2 distances ``||queries[i] - rows[pos[i, j]]||`` (inf where ``pos < 0``) for
    many pairs over few rows: one float64 BLAS product per block of ``rows`` against all
    queries (``|q|^2 + |x|^2 - 2 q.x``), memory about ``chunk_bytes`` per block."""
    q = np.asarray(queries, dtype=np.float64)
    qn = np.einsum("ij,ij->i", q, q)
    out = np.full(pos.shape, np.inf)
    flat = pos.ravel()
    idx = np.flatnonzero(flat >= 0)
    order = idx[np.argsort(flat[idx], kind="stable")]
    by_row = flat[order]
    step = block_rows(max(1, len(q)), 8, chunk_bytes)
    for a in range(0, len(rows), step):
        lo, hi = np.searchsorted(by_row, [a, a + step])
        if hi == lo:
            continue
        xb = np.asarray(rows[a:a + step], dtype=np.float64)
        r, c = by_row[lo:hi] - a, order[lo:hi] // pos.shape[1]
        g = xb @ q.T
        d2 = np.einsum("ij,ij->i", xb, xb)[r] + qn[c] - 2.0 * g[r, c]
        out.ravel()[order[lo:hi]] = np.sqrt(np.maximum(d2, 0.0))
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
