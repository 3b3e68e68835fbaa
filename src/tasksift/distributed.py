"""Scaling out on Ray: neighbour search over a sharded candidate set and distributed TSDS.

(Feature extraction on Ray runs through the one feature pipeline,
:func:`tasksift.features.pipeline.compute_features`, with a
:class:`~tasksift.exec.ray.RayExecutor`.)

Neighbour search: candidates are split into shards of at most ``shard_rows`` rows; each shard
is searched exactly (faiss Flat) by a Ray task and the per-shard top-k lists are merged. A
worker holds one shard (``shard_rows x d x 4`` bytes) plus its top-k lists
(``M x k x 12`` bytes), whatever the number of candidates.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ConfigError


def ray_init(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to a Ray cluster or start a local one (see :func:`tasksift.exec.ray.ray_init`)."""
    from .exec.ray import ray_init as _init

    return _init(address, num_cpus)


# ---------------------------------------------------------------------------------------
# Sharded neighbour search
# ---------------------------------------------------------------------------------------
def _search_shard(query: np.ndarray, shard: Any, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Search one shard: an array, or ``(path of a .npy file, start, end)`` read by the worker."""
    import faiss

    if isinstance(shard, tuple):
        path, s, e = shard
        shard = np.load(path, mmap_mode="r")[s:e]
    x = np.ascontiguousarray(shard, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1]) if metric == "l2" else faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(np.ascontiguousarray(query, dtype=np.float32), min(k, len(x)))


def _search_shard_task(shard: Any, k: int, metric: str, *, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _search_shard(query, shard, k, metric)


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray, int]], k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (distances, local ids, offset) into the global top-k per query.
    Ties are broken by lower global id, as a single exact index would."""
    D = np.concatenate([d for d, _, _ in parts], axis=1)
    I = np.concatenate([np.where(i >= 0, i + off, -1) for _, i, off in parts], axis=1)
    key = D if metric == "l2" else -D
    key = np.where(I < 0, np.inf, key)
    order = np.lexsort((I, key), axis=1)[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def sharded_search(query: np.ndarray, candidates: "np.ndarray | str | os.PathLike", k: int, *, metric: str = "l2",
                   shard_rows: int = 250_000, backend: str = "local", address: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours of each query among ``candidates`` (squared L2 distances
    for ``metric="l2"``, inner products for ``"ip"``), searched shard by shard.

    ``candidates`` may be an array, a ``np.memmap``, or the path of a ``.npy`` file, which
    each worker memory-maps and reads only its own shard of (the path must be visible to
    every worker). ``backend="ray"`` searches the shards in parallel Ray tasks.
    """
    path = None
    if isinstance(candidates, (str, os.PathLike)):
        path = os.fspath(candidates)
        candidates = np.load(path, mmap_mode="r")
    if metric not in ("l2", "ip"):
        raise ConfigError(f"metric must be 'l2' or 'ip', got {metric!r}")
    n = len(candidates)
    k = min(k, n)
    bounds = [(s, min(n, s + shard_rows)) for s in range(0, n, shard_rows)]
    q = np.ascontiguousarray(query, dtype=np.float32)
    if backend == "local":
        parts = [(*_search_shard(q, candidates[s:e], k, metric), s) for s, e in bounds]
    elif backend == "ray":
        from .exec.ray import RayExecutor

        calls = ((s, ((path, s, e) if path else np.asarray(candidates[s:e], dtype=np.float32), k, metric))
                 for s, e in bounds)
        got = dict(RayExecutor(address=address).map_tasks(_search_shard_task, calls, shared={"query": q}))
        parts = [(*got[s], s) for s, _ in bounds]
    else:
        raise ConfigError(f"backend must be 'local' or 'ray', got {backend!r}")
    return merge_topk(parts, k, metric)


# ---------------------------------------------------------------------------------------
# Distributed TSDS
# ---------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """Peak resident size of this process in MiB (VmHWM from /proc/self/status; 0 if unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


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
                n = os.preadv(fd, [view[pos:]], offset + a * row_bytes + pos)
                if n <= 0:
                    raise OSError(f"{path}: short read at row {a}")
                pos += n

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


def _prep_block(x: np.ndarray, dtype: np.dtype, normalize: bool, fresh: bool = False) -> tuple[np.ndarray, int]:
    """Candidate rows as ``dtype``, L2-normalised when asked (the same arithmetic as
    :func:`tasksift.methods.tsds.l2_normalize`), and the position of the first row holding
    NaN/inf (-1 if none). ``fresh``: ``x`` is this function's to modify (else it is copied
    before normalising)."""
    if x.dtype != dtype or (normalize and not (fresh and x.flags.writeable)):
        x = np.array(x, dtype=dtype, copy=True)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    bad = ~np.isfinite(sq)
    if bad.any():  # a non-finite norm: confirm row-wise (float64 squares may overflow)
        rows = np.flatnonzero(bad)
        really = rows[~np.isfinite(x[rows]).all(axis=1)]
        if len(really):
            return x, int(really[0])
    if normalize:
        x /= np.maximum(np.sqrt(sq)[:, None], 1e-12).astype(x.dtype)
    return x, -1


def _maybe_die(kill: str | None) -> None:
    """Test hook: kill this worker process the first time (marker file ``kill`` absent)."""
    if kill and not os.path.exists(kill):
        with open(kill, "w") as f:
            f.write(str(os.getpid()))
        os._exit(1)


def _tsds_search_task(src: Any, k: int, dtype: str, normalize: bool, kill: str | None = None, *,
                      q: np.ndarray) -> dict[str, Any]:
    """One shard of the TSDS neighbour search: load the shard (an array, or ``(path, start,
    end)`` read with pread), validate and normalise it, and return its exact top-``k`` per
    query (float32 squared L2, ascending, ties by lower id; local ids)."""
    import time

    from .neighbors import exact_search

    t0 = time.perf_counter()
    x = read_npy_rows(*src) if isinstance(src, tuple) else np.asarray(src)
    x, bad = _prep_block(x, np.dtype(dtype), normalize, fresh=isinstance(src, tuple))
    if bad >= 0:
        return {"bad_row": bad}
    _maybe_die(kill)
    t1 = time.perf_counter()
    xs = x if x.dtype == np.float32 else x.astype(np.float32)
    # blocked BLAS + running argpartition: ~5x faster than a faiss heap for k in the thousands
    d2, ids = exact_search(np.ascontiguousarray(q, dtype=np.float32), xs, min(k, len(x)))
    return {"d2": d2, "ids": ids, "rows": len(x), "bytes": int(x.nbytes + (0 if xs is x else xs.nbytes)),
            "read_s": t1 - t0, "search_s": time.perf_counter() - t1, "pid": os.getpid(),
            "peak_mb": peak_rss_mb()}


def _tsds_gather_task(src: Any, rows: np.ndarray, dtype: str, normalize: bool) -> dict[str, Any]:
    """The (normalised) candidate rows ``rows`` (absolute, sorted) of one shard."""
    import time

    t0 = time.perf_counter()
    if isinstance(src, tuple):
        path, s, e = src
        x = read_npy_rows(path, s, e, rows)
    else:
        x = np.asarray(src)[rows]
    x, _ = _prep_block(x, np.dtype(dtype), normalize, fresh=True)
    return {"x": x, "seconds": time.perf_counter() - t0, "pid": os.getpid(), "peak_mb": peak_rss_mb()}


def _tsds_kde_task(what: Any, sigma: float, kde_k: int, kill: str | None = None, *, xu: np.ndarray,
                   lists: dict | None = None) -> dict[str, Any]:
    """Densities of one block of the prefetched rows: ``what`` is a ``(start, end)`` row range
    (exact KDE against all of ``xu``) or a list of k-means lists (``lists``, clustered KDE)."""
    import time

    from .methods.tsds import kde_exact, kde_score_lists

    _maybe_die(kill)
    t0 = time.perf_counter()
    if lists is None:
        a, b = what
        rows = np.arange(a, b)
        rho, _ = kde_exact(xu, sigma, kde_k, rows=rows)
        scanned = len(rows) * len(xu)
    else:
        rows, rho, scanned = kde_score_lists(xu, lists, what, sigma, kde_k)
    return {"rows": rows, "rho": rho, "scanned": int(scanned), "seconds": time.perf_counter() - t0,
            "pid": os.getpid(), "peak_mb": peak_rss_mb()}


class _Runner:
    """Runs tasks on an executor (Ray: at most ``workers`` at a time, results handed back as
    they finish, failed worker processes retried) and hands each result to a callback."""

    def __init__(self, backend: str, workers: int | None, address: str | None) -> None:
        from .exec import make_executor

        self.backend = backend
        self.executor = make_executor(backend, workers=workers, address=address)
        self.workers = self.executor.workers

    def map(self, fn: Callable, calls: Any, on_result: Callable[[Any, Any], None],
            shared: dict[str, Any] | None = None) -> None:
        """``on_result(key, fn(*args, **shared))`` for each ``(key, args)`` of ``calls`` (an
        iterable, consumed lazily so that at most ``workers`` argument sets exist at once)."""
        for key, result in self.executor.map_tasks(fn, calls, shared=shared):
            on_result(key, result)


def _merge_sorted(best: tuple[np.ndarray, np.ndarray] | None, d: np.ndarray, ids: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Merge two per-query lists, each sorted ascending, into the ``k`` smallest (faiss
    heap merge; equal distances keep the running list's entry first, i.e. the lower shard).
    Missing entries are padded with ``inf`` / ``-1``."""
    import faiss

    def pad(dd: np.ndarray, ii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if dd.shape[1] >= k:
            return np.ascontiguousarray(dd[:, :k], dtype=np.float32), np.ascontiguousarray(ii[:, :k], dtype=np.int64)
        fill = k - dd.shape[1]
        return (np.concatenate([dd, np.full((len(dd), fill), np.inf, np.float32)], axis=1).astype(np.float32),
                np.concatenate([ii, np.full((len(ii), fill), -1, np.int64)], axis=1))

    d, ids = pad(d, ids)
    if best is None:
        return d, ids
    bd, bi = pad(*best)
    return faiss.merge_knn_results(np.stack([bd, d]), np.stack([bi, ids]), keep_max=False)


def _lpt_groups(cost: np.ndarray, groups: int) -> list[list[int]]:
    """Split items into ``groups`` sets of about equal total cost (largest first)."""
    load = np.zeros(groups)
    out: list[list[int]] = [[] for _ in range(groups)]
    for c in np.argsort(-cost, kind="stable"):
        g = int(np.argmin(load))
        out[g].append(int(c))
        load[g] += cost[c]
    return [sorted(g) for g in out if g]


def tsds_ray(query: Any, candidates: "np.ndarray | str | os.PathLike", *, alpha: float = 0.5, C: float = 5.0,
             sigma: float = 0.75, max_k: int = 5000, kde_k: int = 1000, index: str = "auto",
             seed: int | None = None, normalize: bool = False, recall_sample: int = 50,
             shard_rows: int = 250_000, num_workers: int | None = None, address: str | None = None,
             backend: str = "ray", margin: int | None = None, timer: Callable[[str], Any] | None = None,
             _kill_once: str | None = None) -> Any:
    """TSDS (:func:`tasksift.methods.tsds.tsds`) with the neighbour search and the KDE run
    as Ray tasks; returns the same :class:`~tasksift.methods.tsds.TSDSResult`, with the same
    probabilities (up to float64 rounding) as the in-process engine with exact search.

    ``candidates``: an array (a ``np.memmap`` works) or the path of a 2-d C-order ``.npy``
    file (the path must be visible to every worker; workers read their own rows with pread,
    so nobody maps or holds the whole file).

    Stages:

    1. **search** (exact): the candidates are cut into shards of ``shard_rows`` rows; a task
       loads one shard, checks it for NaN/inf, L2-normalises it when ``normalize`` and returns
       its top ``L + margin`` per query (``L = min(max_k, N)``; float32 blocked BLAS with a
       running argpartition, :func:`tasksift.neighbors.exact_search`). The driver merges
       each shard's lists into the running top ``L + margin`` as they come back (faiss heap
       merge), so it never holds more than two shards' lists.
    2. **gather**: the rows of the merged lists are read back (by shard tasks for a path),
       their float64 distances to the queries recomputed, and each query keeps its ``L``
       nearest (ties by lower id). ``margin`` (default ``16 + L / 50``) absorbs float32
       rounding at the cut, so the result is the float64 exact top ``L``.
    3. **kde** (``sigma > 0``): the densities of the prefetched set ``U`` (against ``U``, as
       in-process) are computed in blocks of rows (exact, up to 20k rows of ``U``) or by
       groups of k-means lists (:func:`~tasksift.methods.tsds.kde_lists` trained on the
       driver, lists scored by tasks with :func:`~tasksift.methods.tsds.kde_score_lists`),
       with ``U`` shared through the object store. ``index`` chooses as in-process
       (``auto``/``exact``/``flat``/``ivf``; other kinds run on the driver); ``index`` does
       not change the search, which is always exact.
    4. **solve**: water-filling on the driver (``M x L``).

    Memory. A search worker holds one shard, ``shard_rows * d * 4`` bytes (x2 for float64
    input), plus ``M * (L + margin) * 12`` bytes of lists and about ``M * 21k * 12`` bytes
    of search scratch, whatever N (measured by ``bench/scale.py``). A KDE worker maps
    ``U`` read-only from the object store (``|U| * d * 4`` bytes, one copy per node, at most
    ``M * (L + margin)`` rows) plus about 256 MiB of scratch per block. The driver holds the
    queries, two sets of lists, the gathered rows of ``U`` and the (N,) float64 vectors ``p``
    and ``rho`` (16 bytes per candidate).

    Failures: a task whose worker process dies is retried by Ray (up to 3 times); the shard
    tasks are pure, so the result is unchanged. ``backend="local"`` runs the same tasks one
    after the other in this process (bounded memory without Ray). ``info["distributed"]``
    holds per-task seconds, bytes, worker pid and worker peak memory.
    """
    import time

    from .methods.tsds import (TSDSResult, _Timer, check_embeddings, check_params, kde_density, kde_exact,
                               kde_list_cost, kde_lists, l2_normalize, water_filling)
    from .errors import DataError
    from .neighbors import refine_distances, resolve_index

    check_params(alpha, C, sigma, max_k, kde_k)
    alpha, C, sigma = float(alpha), float(C), float(sigma)
    if isinstance(shard_rows, bool) or not isinstance(shard_rows, (int, np.integer)) or shard_rows < 1:
        raise ConfigError(f"shard_rows must be an integer >= 1, got {shard_rows!r}")
    path = None
    if isinstance(candidates, (str, os.PathLike)):
        path = os.fspath(candidates)
        shape, cdtype, _ = npy_layout(path)
    else:
        candidates = candidates if isinstance(candidates, np.ndarray) else np.asarray(candidates)
        shape, cdtype = candidates.shape, candidates.dtype
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise DataError(f"expected a non-empty 2-d array (rows x dims), got shape {shape}", file="candidates")
    if not np.issubdtype(cdtype, np.number) or np.issubdtype(cdtype, np.complexfloating):
        raise DataError(f"embeddings must be real numbers, got dtype {cdtype}", file="candidates")
    n, d = int(shape[0]), int(shape[1])
    q, _ = check_embeddings(query, np.zeros((1, d), dtype=np.float32))
    dtype = np.float64 if cdtype == np.float64 else np.float32
    q = l2_normalize(q) if normalize else np.ascontiguousarray(q, dtype=np.float64 if q.dtype == np.float64 else np.float32)
    m = len(q)
    seed = 0 if seed is None else int(seed)
    L = int(min(max_k, n))
    kp = int(min(n, L + (16 + L // 50 if margin is None else int(margin))))
    tm = _Timer(timer)
    runner = _Runner(backend, num_workers, address)
    bounds = [(s, min(n, s + int(shard_rows))) for s in range(0, n, int(shard_rows))]
    stats: list[dict[str, Any]] = []

    def src(s: int, e: int) -> Any:
        return (path, s, e) if path else candidates[s:e]

    def kill(stage: str, i: int) -> str | None:
        return os.path.join(_kill_once, f"killed-{stage}") if (_kill_once and i == 0) else None

    # 1. sharded exact search, merged as results arrive
    best: list[Any] = [None]
    merge_s = [0.0]

    def on_search(i: int, r: dict) -> None:
        s = bounds[i][0]
        if "bad_row" in r:
            raise DataError(f"row {s + r['bad_row']} holds NaN or inf", file="candidates")
        t = time.perf_counter()
        best[0] = _merge_sorted(best[0], r["d2"], r["ids"] + s, kp)
        merge_s[0] += time.perf_counter() - t
        stats.append({"stage": "search", "shard": i, "rows": r["rows"], "bytes": r["bytes"],
                      "read_s": r["read_s"], "seconds": r["read_s"] + r["search_s"],
                      "pid": r["pid"], "peak_mb": r["peak_mb"]})

    qs = np.ascontiguousarray(q, dtype=np.float32)
    with tm("search"):
        runner.map(_tsds_search_task,
                   ((i, (src(s, e), kp, np.dtype(dtype).name, bool(normalize), kill("search", i)))
                    for i, (s, e) in enumerate(bounds)), on_search, shared={"q": qs})
    _, ids_k = best[0]
    # 2. gather the rows of the merged lists, float64 distances, exact top L
    with tm("gather"):
        Up = np.unique(ids_k[ids_k >= 0])
        xg = np.empty((len(Up), d), dtype=dtype)
        cuts = np.searchsorted(Up, [s for s, _ in bounds] + [n])

        def on_gather(i: int, r: dict) -> None:
            xg[cuts[i]:cuts[i + 1]] = r["x"]
            stats.append({"stage": "gather", "shard": i, "rows": int(cuts[i + 1] - cuts[i]),
                          "bytes": int(r["x"].nbytes), "seconds": r["seconds"], "pid": r["pid"],
                          "peak_mb": r["peak_mb"]})

        if path:
            runner.map(_tsds_gather_task, ((i, ((path, s, e), Up[cuts[i]:cuts[i + 1]], np.dtype(dtype).name,
                                                bool(normalize)))
                                           for i, (s, e) in enumerate(bounds) if cuts[i + 1] > cuts[i]), on_gather)
        else:
            xg[:], _ = _prep_block(np.asarray(candidates[Up]), np.dtype(dtype), bool(normalize), fresh=True)
        pos = np.searchsorted(Up, ids_k)
        dist_k = refine_distances(q, xg, pos)
        order = np.lexsort((ids_k, dist_k), axis=1)[:, :L]
        ids = np.take_along_axis(ids_k, order, axis=1)
        dist = np.take_along_axis(dist_k, order, axis=1)
        U = np.unique(ids)
        xu = xg[np.searchsorted(Up, U)] if len(U) < len(Up) else xg
        del xg
    # 3. densities of U against U
    with tm("kde"):
        rho = np.full(n, np.nan)
        nu = len(U)
        kk = int(min(kde_k, nu))
        groups = 4 * runner.workers
        if sigma == 0:
            rho[U] = 1.0
            kinfo: dict[str, Any] = {"index": None, "recall": None}
        else:
            kind = resolve_index(index, nu, nu)
            rho_u = np.ones(nu)
            scanned = [0]

            def on_kde(i: int, r: dict) -> None:
                rho_u[r["rows"]] = r["rho"]
                scanned[0] += r["scanned"]
                stats.append({"stage": "kde", "shard": i, "rows": int(len(r["rows"])), "bytes": int(xu.nbytes),
                              "seconds": r["seconds"], "pid": r["pid"], "peak_mb": r["peak_mb"]})

            if kind in ("exact", "flat"):
                from .methods.tsds import _block_rows

                step = _block_rows(nu, xu.dtype.itemsize)
                blk = max(1, min(step, math.ceil(nu / groups)))
                runner.map(_tsds_kde_task, ((i, ((a, min(nu, a + blk)), sigma, kk, kill("kde", i)))
                                            for i, a in enumerate(range(0, nu, blk))), on_kde, shared={"xu": xu})
                kinfo = {"index": "exact-blocked", "recall": 1.0}
            elif kind == "ivf":
                lists = kde_lists(xu, kk, seed=seed)
                parts = _lpt_groups(kde_list_cost(lists).astype(np.float64), min(groups, lists["nlist"]))
                runner.map(_tsds_kde_task, ((i, (g, sigma, kk, kill("kde", i))) for i, g in enumerate(parts)),
                           on_kde, shared={"xu": xu, "lists": lists})
                rng = np.random.default_rng(seed)
                sample_rows = np.sort(rng.choice(nu, size=min(recall_sample, nu), replace=False))
                true_rho, _ = kde_exact(xu, sigma, kk, rows=sample_rows)
                found, true = rho_u[sample_rows] - 1.0, true_rho - 1.0
                has = true > 1e-12
                kinfo = {"index": f"ivf-blocked(nlist={lists['nlist']},nprobe={lists['nprobe']})",
                         "recall": float(np.mean(np.minimum(found[has] / true[has], 1.0))) if has.any() else 1.0,
                         "recall_measure": "kernel mass found / exact, on sampled rows with neighbours in the kernel",
                         "train_s": lists["train_s"], "mean_scanned": scanned[0] / max(nu, 1)}
            else:  # hnsw / faiss factory strings: in-process on the driver
                rho_u, kinfo = kde_density(xu, sigma, kde_k, index=index, seed=seed, recall_sample=recall_sample)
            rho[U] = rho_u
    # 4. water-filling on the driver
    with tm("solve"):
        rho_nb = rho[ids]
        gamma, s, K = water_filling(dist, ids, rho_nb, alpha=alpha, C=C)
        p = np.bincount(ids.ravel(), weights=gamma.ravel(), minlength=n).astype(np.float64)
        total = p.sum()
        p /= total
    info = {
        "variant": "knn-uniform" if sigma == 0 else "knn-kde",
        "n_queries": m, "n_candidates": n, "max_k": L, "kde_k": int(min(kde_k, len(U))) if sigma else None,
        "prefetched": int(len(U)), "support_size": int((p > 0).sum()), "threshold": s,
        "max_rho_gamma": 1.0 / (m * s), "unreached_queries": int((K == 0).sum()),
        "fully_filled_queries": int((K == L).sum()), "ann_dropped_ids": 0,
        "index": {"search": f"sharded-exact(shards={len(bounds)},shard_rows={shard_rows})", "kde": kinfo["index"]},
        "ann_recall": {"search": 1.0, "kde": kinfo["recall"]},
        "recall_at": {"search": L, "kde": int(min(kde_k, len(U))) if sigma else None},
        "recall_measure": {"search": "exact", "kde": kinfo.get("recall_measure", "exact") if sigma else None},
        "normalized": bool(normalize), "mass_before_renormalisation": float(total),
        "timings": tm.times,
        "distributed": {"backend": backend, "workers": runner.workers, "shard_rows": int(shard_rows),
                        "shards": len(bounds), "margin": kp - L, "gathered_rows": int(len(Up)),
                        "merge_s": merge_s[0], "tasks": stats},
    }
    return TSDSResult(p, s, ids, dist, gamma, K, rho, info)

