"""The TSDS engine: candidates as an array, a memory map or a ``.npy`` path, work on an
:class:`~tasksift.exec.Executor` (this process by default, Ray tasks with the Ray executor).

Stages (each timed as ``tsds_<stage>``):

1. **search** (exact): the candidates are cut into shards of ``shard_rows`` rows; a task
   reads its shard block by block (a slice of the array, or its rows of the file by
   ``pread``), checks each block for NaN/inf, L2-normalises it when asked and returns its
   top ``L + margin`` of each query (float32 BLAS blocks merged by
   :class:`tasksift.neighbors.TopK`). The driver merges the
   shards' lists as they arrive with the same ``TopK``. ``index="ivf"``, ``"hnsw"`` or a
   faiss factory string searches the whole (normalised) candidate matrix in this process
   instead, with recall measured against exact search.
2. **gather**: the rows of the merged lists are read back, their float64 distances to the
   queries recomputed for the listed pairs only (:func:`~.gather.pair_distances`: groups of
   similar queries against their own rows), and each query keeps its exact
   ``L = min(max_k, N)`` nearest (ties by lower id); ``margin`` absorbs float32 rounding at
   the cut. A query for which the float32 rounding bound does not prove that its list holds
   its exact ``L`` nearest (near-ties at the cut; ``info["search_cut_uncertified"]``) is
   searched again (stage **research**, those queries only): every row whose float32
   distance, less the bound, is within its ``L``-th float64 distance is read and weighed in
   float64 (:func:`range_shard_task`), so the lists are exact in every case.
3. **kde** (``sigma > 0``): exact densities against the prefetched set ``U`` (the union of
   the lists), for the neighbours the plan depends on only (see
   :func:`~.solver.solve_needing_densities`), as range sums (:mod:`.kde`): ``U`` is cut into
   k-means cells (:class:`~.kde.PivotColumns`), each block of needed rows (one cell) is
   compared only with the columns that two triangle-inequality bounds leave (whole cells
   first, by each cell's range of the hyperplane coordinate, then column by column), a
   float32 screen drops the columns outside every row's kernel and float64 BLAS weighs the
   rest; the squared norms of ``U`` are computed once for all blocks. Exact either way.
4. **solve**: the water-filling (:func:`~.solver.water_filling`), float64, on the driver.

The products run in this process use one BLAS thread by default (``blas_threads``), and
glibc keeps freed temporaries for reuse during the call (``reuse_memory``).

Memory: a search task holds one block of rows (about ``SEARCH_BLOCK_BYTES / (4 M)`` rows,
x2 for float64 or a normalised copy), its distances and up to ``2 M (L + margin) * 12``
bytes of lists; the driver the queries, two
sets of lists, the gathered rows (at most ``M * (L + margin)``), and the (N,) float64 ``p``
and ``rho``.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator

import numpy as np

from ...errors import ConfigError, DataError
from ...exec import Executor, make_executor
from ...manifest import peak_memory_mb
from ...memory import reuse_freed_memory
from ...neighbors import TopK, block_rows, knn, npy_layout, read_rows, resolve_index, search_blocks
from .gather import pair_distances
from .inputs import check_embeddings, check_params, checked_block, l2_normalize, normalize_block, prepare
from .kde import PivotColumns, range_density, sq_norms
from .solver import solve_needing_densities

#: index kinds searched by the sharded exact engine (the others go to faiss in-process)
EXACT_KINDS = ("auto", "exact", "flat")
#: bytes of float32 distances per search block: small enough to be reused from the heap
#: rather than mapped afresh (page faults) for every block
SEARCH_BLOCK_BYTES = 16 * 2**20
#: candidates per search task by default (fewer when an executor has more workers than shards)
SHARD_ROWS = 250_000


@dataclass
class TSDSResult:
    """Everything :func:`tsds` computed.

    p: (N,) float64 selection probabilities (sum 1, >= 0).
    threshold: the water level ``s`` (the plan's max ``rho_j * gamma_ij`` is ``1 / (M s)``).
    neighbor_ids, neighbor_dist: (M, L) prefetched neighbours of each query (id -1 = none,
        dropped) and their float64 L2 distances, ascending.
    gamma: (M, L) the transport plan on those neighbours (``gamma[i, k]`` is the mass moved
        from query ``i`` to candidate ``neighbor_ids[i, k]``).
    filled: (M,) ``K_i``, the number of completely filled neighbours of each query.
    rho: (N,) float64 density of each candidate whose density the plan needed (NaN for the
        others; 1 when ``sigma == 0``, on the prefetched set).
    info: diagnostics (index used, ANN recall, timings, support size, execution, ...).
    """

    p: np.ndarray
    threshold: float
    neighbor_ids: np.ndarray
    neighbor_dist: np.ndarray
    gamma: np.ndarray
    filled: np.ndarray
    rho: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def plan(self) -> Any:
        """The transport plan as a ``scipy.sparse.csr_matrix`` of shape (M, N)."""
        from scipy import sparse

        m, n = self.neighbor_ids.shape[0], len(self.p)
        ok = (self.neighbor_ids >= 0) & (self.gamma > 0)
        rows = np.broadcast_to(np.arange(m)[:, None], ok.shape)[ok]
        return sparse.csr_matrix((self.gamma[ok], (rows, self.neighbor_ids[ok])), shape=(m, n))


class StageTimer:
    """Adds each stage's seconds to :attr:`times` (``prefix + stage``) and, when given, runs
    it inside an outer ``timed(stage)`` context manager (e.g. ``SelectionContext.timed``)."""

    def __init__(self, outer: Callable[[str], ContextManager] | None = None, prefix: str = "tsds_") -> None:
        self.outer, self.prefix, self.times = outer, prefix, {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        name = self.prefix + stage
        t = time.perf_counter()
        with (self.outer(name) if self.outer else contextlib.nullcontext()):
            yield
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t


def blas_thread_limit(threads: int | None) -> ContextManager:
    """BLAS limited to ``threads`` threads in this process (None: left as it is; a no-op
    without ``threadpoolctl``)."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(int(threads), user_api="blas")


def hugepage_switch() -> Callable[[bool], bool] | None:
    """NumPy's switch for ``madvise(MADV_HUGEPAGE)`` on large arrays (the runtime form of
    ``NUMPY_MADVISE_HUGEPAGE``; returns the previous setting), or None where it is missing."""
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return getattr(__import__(mod, fromlist=["_set_madvise_hugepage"]), "_set_madvise_hugepage")
        except (ImportError, AttributeError):
            continue
    return None  # pragma: no cover - NumPy without the switch


@contextlib.contextmanager
def hugepage_advice(enabled: bool | None) -> Iterator[None]:
    """NumPy asks the kernel for transparent huge pages for its large arrays (``enabled``)
    or not, while the context lasts, then the previous setting comes back (None: left as it
    is; a no-op where NumPy has no such switch). Where the kernel's THP ``defrag`` setting
    is ``madvise``, asking makes each first touch of a large array wait for memory
    compaction on a machine whose memory is fragmented."""
    switch = hugepage_switch() if enabled is not None else None
    if switch is None:
        yield
        return
    before = switch(bool(enabled))
    try:
        yield
    finally:
        switch(before)


def one_blas_thread() -> ContextManager:
    """BLAS limited to one thread: the density blocks are many small products, for which a
    second BLAS thread only adds waiting, most of all on a busy machine."""
    return blas_thread_limit(1)


# ---------------------------------------------------------------------------------------
# tasks: module-level and stateless, so any executor can run them


def die_once(marker: str | None) -> None:
    """Test hook: kill this worker process the first time (marker file ``marker`` absent)."""
    if marker and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os._exit(1)


def search_shard_task(source: Any, start: int, end: int, k: int, dtype: str, normalize: bool,
                      kill: str | None = None, *, q: np.ndarray, x: np.ndarray | None = None) -> dict[str, Any]:
    """One shard of the search: rows ``start:end`` of ``source`` (an array or a ``.npy``
    path; None: the shared array ``x``), read, checked for NaN/inf and normalised when asked
    one search block at a time (a path's rows are read into blocks of about ``SEARCH_BLOCK_BYTES`` of distances, which
    the allocator reuses, never the whole shard at once), and their exact top-``k`` per query
    (float32 squared L2, ids local to the shard, unordered)."""
    t0 = time.perf_counter()
    die_once(kill)
    rows = max(int(k) + 1, block_rows(len(q), 4, SEARCH_BLOCK_BYTES))
    owned = isinstance(source, (str, os.PathLike))
    source = x if source is None else source
    seen = {"bad": -1, "sq": 0.0, "read": 0.0, "bytes": 0}

    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        for s in range(start, end, rows):
            t = time.perf_counter()
            x, bad, sq = checked_block(read_rows(source, s, min(end, s + rows)), np.dtype(dtype), normalize,
                                       owned=owned)
            seen["read"] += time.perf_counter() - t
            if bad >= 0:
                seen["bad"] = s - start + bad
                return
            seen["sq"], seen["bytes"] = max(seen["sq"], sq), seen["bytes"] + int(x.nbytes)
            yield s - start, x

    d2, ids = search_blocks(q, blocks(), min(int(k), end - start), sort=False)
    if seen["bad"] >= 0:
        return {"bad_row": seen["bad"]}
    took = time.perf_counter() - t0
    return {"d2": d2, "ids": ids, "rows": end - start, "bytes": seen["bytes"], "x_sq_max": seen["sq"],
            "read_s": seen["read"], "search_s": took - seen["read"], "pid": os.getpid(), "peak_mb": peak_memory_mb()}


def sq_dist_tolerance(d: int) -> float:
    """``c`` such that the float32 squared distance ``|q|^2 + |x|^2 - 2 q.x`` of the search
    (float32 norms and BLAS product, inputs rounded to float32) is within
    ``c * (|q|^2 + |x|^2)`` of the true one (the rounding bound, x2 to spare)."""
    return 4.0 * (int(d) + 4) * float(np.finfo(np.float32).eps)


def range_shard_task(source: Any, start: int, end: int, dtype: str, normalize: bool, *, q: np.ndarray,
                     limit: np.ndarray, x: np.ndarray | None = None) -> dict[str, Any]:
    """Rows ``start:end`` of ``source`` (None: of the shared array ``x``; read and normalised
    as the search does) that may lie within squared distance ``limit[i]`` of query ``i``:
    every row whose float32 squared distance, less its rounding bound
    (:func:`sq_dist_tolerance`), is at most the limit.
    Returns per query the sorted absolute row ids."""
    t0 = time.perf_counter()
    x, _, _ = checked_block(read_rows(x if source is None else source, start, end), np.dtype(dtype), normalize,
                            owned=isinstance(source, (str, os.PathLike)))
    q32 = np.ascontiguousarray(q, dtype=np.float32)
    qn = np.einsum("ij,ij->i", q32, q32)
    c = sq_dist_tolerance(x.shape[1])
    lim = np.asarray(limit, dtype=np.float64) + c * qn.astype(np.float64)
    found: list[list[np.ndarray]] = [[] for _ in range(len(q32))]
    step = max(1, block_rows(len(q32), 8, SEARCH_BLOCK_BYTES))
    for a in range(0, len(x), step):
        xb = np.asarray(x[a:a + step], dtype=np.float32)
        xn = np.einsum("ij,ij->i", xb, xb)
        d2 = (q32 * np.float32(-2.0)) @ xb.T
        d2 += qn[:, None]
        d2 += xn[None, :]
        low = d2.astype(np.float64) - c * xn.astype(np.float64)[None, :]
        r, j = np.nonzero(low <= lim[:, None])
        for i in np.unique(r):
            found[i].append(start + a + j[r == i])
    ids = [np.concatenate(f) if f else np.empty(0, np.int64) for f in found]
    return {"ids": ids, "seconds": time.perf_counter() - t0, "pid": os.getpid(), "peak_mb": peak_memory_mb()}


def gather_task(source: Any, start: int, end: int, rows: np.ndarray, dtype: str, normalize: bool
                ) -> dict[str, Any]:
    """The (normalised) rows ``rows`` (absolute, sorted, within ``start:end``) of ``source``."""
    t0 = time.perf_counter()
    x, _ = normalize_block(read_rows(source, start, end, rows), np.dtype(dtype), normalize, owned=True)
    return {"x": x, "seconds": time.perf_counter() - t0, "pid": os.getpid(), "peak_mb": peak_memory_mb()}


def density_task(rows: np.ndarray, cols: np.ndarray | None, sigma: float, kde_k: int,
                 kill: str | None = None, *, xu: np.ndarray, xn: np.ndarray) -> dict[str, Any]:
    """Exact densities of the prefetched rows ``rows`` against the columns ``cols`` of ``xu``
    (all of them when None); ``xn`` holds the rows' squared norms (:func:`~.kde.sq_norms`)."""
    die_once(kill)
    t0 = time.perf_counter()
    xc, cn = (xu, xn) if cols is None else (xu[cols], xn[cols])
    rho, _ = range_density(xu[rows], xc, sigma, kde_k, counts=False, rn=xn[rows], cn=cn)
    return {"rho": rho, "pairs": int(len(rows) * len(xc)), "seconds": time.perf_counter() - t0,
            "pid": os.getpid(), "peak_mb": peak_memory_mb()}


# ---------------------------------------------------------------------------------------
# stages


@dataclass
class Candidates:
    """The candidate matrix as the engine reads it: an array (or memory map) or a path."""

    source: Any
    n: int
    d: int
    dtype: np.dtype  # float64 for float64 input, else float32

    @classmethod
    def of(cls, candidates: Any) -> "Candidates":
        if isinstance(candidates, (str, os.PathLike)):
            path = os.fspath(candidates)
            shape, dt, _ = npy_layout(path)
            source: Any = path
        else:
            source = candidates if isinstance(candidates, np.ndarray) else np.asarray(candidates)
            shape, dt = source.shape, source.dtype
        if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
            raise DataError(f"expected a non-empty 2-d array (rows x dims), got shape {shape}", file="candidates")
        if not np.issubdtype(dt, np.number) or np.issubdtype(dt, np.complexfloating):
            raise DataError(f"embeddings must be real numbers, got dtype {dt}", file="candidates")
        return cls(source, int(shape[0]), int(shape[1]), np.dtype(np.float64 if dt == np.float64 else np.float32))

    @property
    def is_path(self) -> bool:
        return isinstance(self.source, str)

    def shard(self, s: int, e: int) -> tuple[Any, int, int]:
        """(source, start, end) arguments that make a task read rows ``s:e``: the path, or
        None for an array, which tasks get once as the shared ``x`` (:meth:`shared`)."""
        return (self.source if self.is_path else None), s, e

    def shared(self) -> dict[str, Any]:
        """The shared arguments the shards read: ``{"x": array}`` for an array (sent to each
        worker once: by reference in this process, by fork or the object store elsewhere)."""
        return {} if self.is_path else {"x": self.source}


def _search_exact(q: np.ndarray, cands: Candidates, kp: int, shards: list[tuple[int, int]], normalize: bool,
                  executor: Executor, stats: list, kill: Callable[[str, int], str | None]
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """Each query's float32 top ``kp`` (unordered) over all shards, and the largest squared
    norm of any candidate row (as searched)."""
    top = TopK(len(q), kp)
    calls = ((i, (*cands.shard(s, e), kp, cands.dtype.name, normalize, kill("search", i)))
             for i, (s, e) in enumerate(shards))
    x_sq = 0.0
    shared = {"q": np.ascontiguousarray(q, np.float32), **cands.shared()}
    for i, r in executor.map_tasks(search_shard_task, calls, shared=shared):
        s = shards[i][0]
        if "bad_row" in r:
            raise DataError(f"row {s + r['bad_row']} holds NaN or inf", file="candidates")
        top.add(r["d2"], np.where(r["ids"] >= 0, r["ids"] + s, -1))
        x_sq = max(x_sq, r["x_sq_max"])
        stats.append({"stage": "search", "shard": i, "rows": r["rows"], "bytes": r["bytes"], "read_s": r["read_s"],
                      "seconds": r["read_s"] + r["search_s"], "pid": r["pid"], "peak_mb": r["peak_mb"]})
    d2, ids = top.result(sort=False)  # the float64 distances decide the order
    return d2, ids, x_sq


def _range_search(q: np.ndarray, limit: np.ndarray, cands: Candidates, shards: list[tuple[int, int]],
                  normalize: bool, executor: Executor, stats: list) -> list[np.ndarray]:
    """Per query, every candidate row (sorted ids) that may lie within squared distance
    ``limit`` of it (:func:`range_shard_task` over all shards)."""
    found: list[list[np.ndarray]] = [[] for _ in range(len(q))]
    calls = ((i, (*cands.shard(s, e), cands.dtype.name, normalize)) for i, (s, e) in enumerate(shards))
    shared = {"q": np.ascontiguousarray(q, np.float32), "limit": np.asarray(limit, dtype=np.float64),
              **cands.shared()}
    for i, r in executor.map_tasks(range_shard_task, calls, shared=shared):
        for j, ids in enumerate(r["ids"]):
            found[j].append(ids)
        stats.append({"stage": "range", "shard": i, "rows": int(shards[i][1] - shards[i][0]),
                      "seconds": r["seconds"], "pid": r["pid"], "peak_mb": r["peak_mb"]})
    return [np.sort(np.concatenate(f)) for f in found]


def _gather(cands: Candidates, rows: np.ndarray, shards: list[tuple[int, int]], normalize: bool,
            executor: Executor, stats: list) -> np.ndarray:
    """The (normalised) candidate rows ``rows`` (sorted, unique)."""
    if not cands.is_path:
        x, _ = normalize_block(np.asarray(cands.source[rows]), cands.dtype, normalize, owned=True)
        return x
    out = np.empty((len(rows), cands.d), dtype=cands.dtype)
    cuts = np.searchsorted(rows, [s for s, _ in shards] + [cands.n])
    calls = ((i, (cands.source, s, e, rows[cuts[i]:cuts[i + 1]], cands.dtype.name, normalize))
             for i, (s, e) in enumerate(shards) if cuts[i + 1] > cuts[i])
    for i, r in executor.map_tasks(gather_task, calls):
        out[cuts[i]:cuts[i + 1]] = r["x"]
        stats.append({"stage": "gather", "shard": i, "rows": int(cuts[i + 1] - cuts[i]),
                      "seconds": r["seconds"], "pid": r["pid"], "peak_mb": r["peak_mb"]})
    return out


def present(ids: np.ndarray, n: int) -> np.ndarray:
    """The sorted distinct values ``>= 0`` of the integer array ``ids`` (all ``< n``): one
    boolean mask of ``n`` instead of a sort."""
    mask = np.zeros(int(n), dtype=bool)
    mask[ids[ids >= 0]] = True
    return np.flatnonzero(mask)


def compact_rows(x: np.ndarray, keep: np.ndarray, rows: int = 4096) -> np.ndarray:
    """``x[keep]`` for increasing ``keep``, written over the front of ``x`` (no second copy of
    the kept rows; ``x`` is consumed): block by block, each block read before it is written,
    and ``keep[j] >= j`` leaves every later source row untouched."""
    keep = np.asarray(keep, dtype=np.int64)
    if len(keep) == len(x):
        return x
    for a in range(0, len(keep), rows):
        part = keep[a:a + rows]
        x[a:a + len(part)] = x[part]
    return x[:len(keep)]


def positions_in(rows: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """The position in the sorted distinct ``rows`` (all in ``[0, n)``) of each entry of
    ``ids`` (-1 for ids < 0; every other id must be in ``rows``): one table of ``n``
    entries instead of a binary search per id."""
    table = np.full(int(n) + 1, -1, dtype=np.int32 if len(rows) < 2**31 else np.int64)
    table[rows] = np.arange(len(rows), dtype=table.dtype)
    return table[np.where(ids >= 0, ids, n)].astype(np.int64)


def cut_uncertified(d2_f32: np.ndarray, ids_f32: np.ndarray, dist_L: np.ndarray, q: np.ndarray,
                    x_sq_max: float, n: int, d: int) -> np.ndarray:
    """(M,) bool: the queries whose exact top-L may hold a row outside their float32 top
    ``L + margin`` (lists in any order). Every row left out has float32 squared distance >=
    the list's largest, so its true one is at least that minus the float32 rounding bound
    (:func:`sq_dist_tolerance`, with the largest squared norm ``x_sq_max`` of any candidate);
    certified when that exceeds the L-th float64 distance."""
    kp = d2_f32.shape[1]
    if kp >= n:
        return np.zeros(len(q), dtype=bool)
    qn = np.einsum("ij,ij->i", q, q, dtype=np.float64)
    tol = sq_dist_tolerance(d) * (qn + x_sq_max)
    full = (ids_f32 >= 0).all(axis=1)
    last = np.where(ids_f32 >= 0, d2_f32, -np.inf).max(axis=1).astype(np.float64)
    return full & ~(last - tol > dist_L.astype(np.float64) ** 2)


def nearest_by_float64(q: np.ndarray, xg: np.ndarray, rows: np.ndarray, cand: np.ndarray, L: int, n: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``L`` nearest among its candidate ids ``cand`` (M, c; -1 = none; c >= L)
    by float64 distance (:func:`~.gather.pair_distances`; ties by lower id): (ids, dist)."""
    dist_c = pair_distances(q, xg, positions_in(rows, cand, n))
    order = np.lexsort((np.where(cand >= 0, cand, np.iinfo(np.int64).max), dist_c), axis=1)[:, :L]
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(dist_c, order, axis=1)


def merge_rows(rows_a: np.ndarray, xa: np.ndarray, rows_b: np.ndarray, xb: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """The sorted union of the disjoint sorted row ids ``rows_a``, ``rows_b`` and their
    vectors in that order."""
    rows = np.concatenate([rows_a, rows_b])
    order = np.argsort(rows, kind="stable")
    return rows[order], np.concatenate([xa, xb])[order]


# ---------------------------------------------------------------------------------------
# the engine


def tsds(query: Any, candidates: Any, *, alpha: float = 0.5, C: float = 5.0, sigma: float = 0.75,
         max_k: int = 5000, kde_k: int = 1000, index: str = "auto", seed: int | None = None,
         normalize: bool = False, recall_sample: int = 50, executor: Executor | None = None,
         shard_rows: int | None = None, margin: int | None = None,
         timer: Callable[[str], ContextManager] | None = None, kill_once_dir: str | None = None,
         blas_threads: int | None = 1, hugepages: bool | None = False, reuse_memory: bool = True) -> TSDSResult:
    """Run TSDS and return the full :class:`TSDSResult` (probabilities, plan, densities,
    diagnostics). See :func:`selection_probabilities` for the TSDS parameters.

    candidates: (N, d) array, ``np.memmap`` or the path of a 2-d C-order ``.npy`` file (the
    path must be visible to every worker; tasks read their own rows, nobody maps the file).
    executor: where the shard, gather and density tasks run (default: this process, one
    after another); the result does not depend on it.
    shard_rows: candidates per search task (default: ``SHARD_ROWS``, fewer where that would
    leave one of the executor's workers without a shard). margin: extra float32 neighbours kept per query
    before the float64 cut (default ``16 + L / 50``).
    timer(stage): optional outer context manager factory (e.g. ``SelectionContext.timed``)
    that also receives ``tsds_search``, ``tsds_gather``, ``tsds_kde``, ``tsds_solve`` (and
    ``tsds_research`` when some query's float32 list is not certified).
    kill_once_dir: test hook; the first search and density tasks kill their worker process
    once (marker files in that folder), to check that the executor retries them.
    blas_threads: BLAS threads for the products run in this process (default 1: parallel
    work belongs to the executor's tasks; idle BLAS threads spin and, on a shared machine,
    cost more than they give; None leaves the BLAS setting as it is).
    hugepages: whether NumPy asks for transparent huge pages for the large arrays made
    during the call (default False: no compaction stalls on first touch, see
    :func:`hugepage_advice`; None leaves NumPy's setting as it is). The result does not
    depend on it.
    reuse_memory: glibc keeps freed blocks for reuse during the call
    (:func:`~tasksift.memory.reuse_freed_memory`: the many large temporaries of the blocks
    reuse pages instead of faulting in fresh ones; what was kept goes back on return). The
    result does not depend on it.
    """
    if blas_threads is not None and (isinstance(blas_threads, bool) or not isinstance(blas_threads, (int, np.integer))
                                     or blas_threads < 1):
        raise ConfigError(f"tsds: blas_threads must be an integer >= 1 or None, got {blas_threads!r}")
    if hugepages is not None and not isinstance(hugepages, (bool, np.bool_)):
        raise ConfigError(f"tsds: hugepages must be True, False or None, got {hugepages!r}")
    if not isinstance(reuse_memory, (bool, np.bool_)):
        raise ConfigError(f"tsds: reuse_memory must be True or False, got {reuse_memory!r}")
    memory = reuse_freed_memory() if reuse_memory else contextlib.nullcontext()
    with blas_thread_limit(blas_threads), hugepage_advice(hugepages), memory:
        return _tsds(query, candidates, alpha=alpha, C=C, sigma=sigma, max_k=max_k, kde_k=kde_k, index=index,
                     seed=seed, normalize=normalize, recall_sample=recall_sample, executor=executor,
                     shard_rows=shard_rows, margin=margin, timer=timer, kill_once_dir=kill_once_dir)


def _tsds(query: Any, candidates: Any, *, alpha: float, C: float, sigma: float, max_k: int, kde_k: int,
          index: str, seed: int | None, normalize: bool, recall_sample: int, executor: Executor | None,
          shard_rows: int | None, margin: int | None, timer: Callable[[str], ContextManager] | None,
          kill_once_dir: str | None) -> TSDSResult:
    """:func:`tsds` itself, with the BLAS thread limit in place."""
    check_params(alpha, C, sigma, max_k, kde_k)
    if shard_rows is not None and (isinstance(shard_rows, bool) or not isinstance(shard_rows, (int, np.integer))
                                   or shard_rows < 1):
        raise ConfigError(f"tsds: shard_rows must be an integer >= 1 or None, got {shard_rows!r}")
    alpha, C, sigma = float(alpha), float(C), float(sigma)
    kind = resolve_index(index, 1, 1)  # validates; the exact kinds all take the sharded engine
    cands = Candidates.of(candidates)
    q, _ = check_embeddings(query, np.zeros((1, cands.d), dtype=np.float32))
    q = l2_normalize(q) if normalize else np.ascontiguousarray(q, dtype=np.float64 if q.dtype == np.float64 else np.float32)
    m, n = len(q), cands.n
    seed = 0 if seed is None else int(seed)
    executor = make_executor("local") if executor is None else executor
    if shard_rows is None:
        shard_rows = max(1, min(SHARD_ROWS, -(-n // max(1, int(executor.workers)))))
    L = int(min(max_k, n))
    kp = int(min(n, L + (16 + L // 50 if margin is None else int(margin))))
    tm = StageTimer(timer)
    shards = [(s, min(n, s + int(shard_rows))) for s in range(0, n, int(shard_rows))]
    stats: list[dict[str, Any]] = []

    def kill(stage: str, i: int) -> str | None:
        return os.path.join(kill_once_dir, f"killed-{stage}") if (kill_once_dir and i == 0) else None

    search_info: dict[str, Any] = {"index": "exact", "recall": 1.0, "measure": "exact", "uncertified": 0}
    if index in EXACT_KINDS:
        with tm("search"):
            d2_k, ids_k, x_sq = _search_exact(q, cands, kp, shards, bool(normalize), executor, stats, kill)
        with tm("gather"):
            Up = present(ids_k, n)
            xg = _gather(cands, Up, shards, bool(normalize), executor, stats)
            ids, dist = nearest_by_float64(q, xg, Up, ids_k, L, n)
            bad = np.flatnonzero(cut_uncertified(d2_k, ids_k, dist[:, -1], q, x_sq, n, cands.d))
            del d2_k, ids_k
            search_info["uncertified"] = len(bad)
        if len(bad):  # the float32 lists may miss some of these queries' exact nearest: search again
            with tm("research"):
                found = _range_search(q[bad], dist[bad, -1].astype(np.float64) ** 2, cands, shards,
                                      bool(normalize), executor, stats)
                new = np.setdiff1d(np.concatenate(found), Up, assume_unique=False)
                if len(new):
                    Up, xg = merge_rows(Up, xg, new, _gather(cands, new, shards, bool(normalize), executor, stats))
                width = max(len(f) for f in found)
                ids_b = np.full((len(bad), max(width, L)), -1, dtype=np.int64)
                for j, f in enumerate(found):
                    ids_b[j, :len(f)] = f
                ids[bad], dist[bad] = nearest_by_float64(q[bad], xg, Up, ids_b, L, n)
                search_info["researched_rows"] = int(sum(len(f) for f in found))
        with tm("gather"):
            search_info["index"] = f"exact-sharded(shards={len(shards)})" if len(shards) > 1 else "exact"
            U = present(ids, n)
            xu = compact_rows(xg, np.searchsorted(Up, U))
            del xg
    else:
        with tm("search"):
            x_all = np.load(cands.source, mmap_mode="r") if cands.is_path else cands.source
            qa, xa = prepare(q, x_all, bool(normalize))
            res = knn(qa, xa, L, index=kind, seed=seed, recall_sample=recall_sample)
            dist, ids = res.distances, res.ids
            lost = ids[:, 0] < 0
            if lost.any():  # an ANN search that found nothing for some query: search those exactly
                fix = knn(qa[lost], xa, L, index="flat")
                dist[lost], ids[lost] = fix.distances, fix.ids
            search_info.update(index=res.index, recall=res.recall, measure=(
                f"share of the exact {L} nearest found, mean over {res.info['recall_queries']} sampled queries")
                if res.info["recall_queries"] else "exact", dropped=int((ids < 0).sum()))
            U = np.unique(ids[ids >= 0])
            xu = np.ascontiguousarray(xa[U])
            del xa, x_all
    valid = ids >= 0
    n_valid = valid.sum(axis=1)
    pos = np.maximum(positions_in(U, ids, n), 0)
    kk = int(min(kde_k, len(U)))
    rho_u = np.full(len(U), 1.0 if sigma == 0 else np.nan)
    kde_stats = {"rows": 0, "pairs": 0, "tasks": 0}
    pivot_cache: list[PivotColumns] = []
    shared: dict[str, np.ndarray] = {}

    def pivots() -> PivotColumns:
        if not pivot_cache:
            shared.update(xu=xu, xn=sq_norms(xu))
            pivot_cache.append(PivotColumns(xu, sigma, seed=seed, norms=shared["xn"]))
        return pivot_cache[0]

    def densities(J: np.ndarray) -> np.ndarray:
        w = int(J.max())
        need = np.zeros_like(valid)
        need[:, :w] = (np.arange(w)[None, :] < J[:, None]) & valid[:, :w] & np.isnan(rho_u[pos[:, :w]])
        if need.any():
            with tm("kde"), one_blas_thread():
                calls, whole = [], []
                for rows, cols in pivots().blocks(present(pos[need], len(U))):
                    if cols is None or 2 * len(cols) > len(U):  # scan all of U in place, no copy
                        whole.append(rows)
                    else:
                        calls.append((rows, cols))
                if whole:
                    rows = np.sort(np.concatenate(whole))
                    calls += [(rows[a:a + 4096], None) for a in range(0, len(rows), 4096)]
                keyed = ((j, (rows, cols, sigma, kk, kill("kde", kde_stats["tasks"] + j)))
                         for j, (rows, cols) in enumerate(calls))
                for j, r in executor.map_tasks(density_task, keyed, shared=shared):
                    rho_u[calls[j][0]] = r["rho"]
                    kde_stats["rows"] += len(calls[j][0])
                    kde_stats["pairs"] += r["pairs"]
                    stats.append({"stage": "kde", "task": j, "rows": int(len(calls[j][0])), "pairs": r["pairs"],
                                  "seconds": r["seconds"], "pid": r["pid"], "peak_mb": r["peak_mb"]})
                kde_stats["tasks"] += len(calls)
        return np.where(valid[:, :w], rho_u[pos[:, :w]], 1.0)

    with tm("solve"):
        gamma, s, K, J = solve_needing_densities(dist, ids, densities, alpha=alpha, C=C)
        p = np.bincount(ids[valid], weights=gamma[valid], minlength=n).astype(np.float64)
        total = p.sum()
        p /= total
    if "tsds_kde" in tm.times:
        tm.times["tsds_solve"] -= tm.times["tsds_kde"]
    else:
        tm.times["tsds_kde"] = 0.0
    rho = np.full(n, np.nan)
    known = ~np.isnan(rho_u)
    rho[U[known]] = rho_u[known]
    info = {
        "variant": "knn-uniform" if sigma == 0 else "knn-kde",
        "n_queries": m, "n_candidates": n, "max_k": L, "kde_k": kk if sigma else None,
        "prefetched": int(len(U)), "density_rows": int(kde_stats["rows"]) if sigma else 0,
        "support_size": int((p > 0).sum()), "threshold": s,
        "max_rho_gamma": 1.0 / (m * s), "unreached_queries": int((K == 0).sum()),
        "fully_filled_queries": int((K == n_valid).sum()),
        "ann_dropped_ids": int(search_info.get("dropped", 0)),
        "index": {"search": search_info["index"], "kde": "exact-range" if sigma else None},
        "ann_recall": {"search": search_info["recall"], "kde": 1.0 if sigma else None},
        "recall_at": {"search": L, "kde": kk if sigma else None},
        "recall_measure": {"search": search_info["measure"], "kde": "exact" if sigma else None},
        "search_cut_uncertified": int(search_info["uncertified"]),
        "search_researched_rows": int(search_info.get("researched_rows", 0)),
        "normalized": bool(normalize), "mass_before_renormalisation": float(total),
        "timings": tm.times,
        "execution": {"executor": executor.name, "workers": executor.workers, "shard_rows": int(shard_rows),
                      "shards": len(shards), "margin": kp - L, "prefix_max": int(J.max()),
                      "density_pairs": int(kde_stats["pairs"]), "density_tasks": int(kde_stats["tasks"]),
                      "tasks": stats},
    }
    return TSDSResult(p, s, ids, dist, gamma, K, rho, info)


def selection_probabilities(query: Any, candidates: Any, *, alpha: float = 0.5, C: float = 5.0,
                            sigma: float = 0.75, max_k: int = 5000, kde_k: int = 1000,
                            index: str = "auto", seed: int | None = None,
                            normalize: bool = False, executor: Executor | None = None) -> np.ndarray:
    """TSDS selection probabilities of each candidate, from embeddings.

    query: (M, d) target embeddings; candidates: (N, d) pool embeddings (array, memory map
    or ``.npy`` path). Distances are L2 on the embeddings as given (``normalize=True``
    L2-normalises both first; the defaults of ``C`` and ``sigma`` assume unit-norm embeddings).
    alpha: in [0, 1]; large favours alignment with the queries, small favours diversity.
    C: distance scale. sigma: KDE kernel width (0 = KNN-Uniform, no density penalty).
    max_k: neighbours prefetched per query (the plan lives on them). kde_k: neighbours per
    candidate in the density estimate. index: ``"auto"``/``"exact"``/``"flat"`` (exact
    search), ``"ivf"``, ``"hnsw"`` or a faiss factory string (approximate, in this process;
    see :mod:`tasksift.neighbors`). seed: for IVF training and the recall sample.
    executor: where the work runs (default: this process).
    Returns p: (N,) float64, ``p >= 0``, ``sum(p) == 1``.
    """
    return tsds(query, candidates, alpha=alpha, C=C, sigma=sigma, max_k=max_k, kde_k=kde_k,
                index=index, seed=seed, normalize=normalize, executor=executor).p


def transport_plan(query: Any, candidates: Any, **kwargs: Any) -> Any:
    """The optimal transport plan ``gamma`` (``scipy.sparse.csr_matrix``, M x N) that TSDS
    finds (same keyword arguments as :func:`selection_probabilities`). With ``max_k >= N``
    and ``kde_k >= N`` it minimises :func:`~.solver.objective` over all plans."""
    return tsds(query, candidates, **kwargs).plan()
