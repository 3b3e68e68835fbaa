"""``tsds``: task-specific data selection by optimal transport (Liu, Karbasi, Rekatsinas,
NeurIPS 2024), KNN-Uniform and KNN-KDE variants.

Given query (target) embeddings ``q_1..q_M`` and candidate embeddings ``x_1..x_N``, find the
transport plan ``gamma`` (M x N, ``gamma >= 0``, rows sum to ``1/M``) minimising::

    (alpha / C) * sum_ij ||q_i - x_j|| * gamma_ij  +  (1 - alpha) * M * max_ij rho_j * gamma_ij

and select candidates from ``p_j = sum_i gamma_ij``. ``rho_j`` is a kernel density estimate
over the prefetched candidates (``sigma = 0``: ``rho = 1``, KNN-Uniform).

How it is solved. Fix ``t = max rho_j gamma_ij``: the queries decouple, and each fills its
nearest candidates greedily up to capacity ``t / rho_j``. Writing ``t = 1 / (M s)``, query
``i`` fills its first ``K_i = #{k : S_ik <= s}`` neighbours completely, where
``S_ik = sum_{k' <= k} 1/rho_ik'``, and neighbour ``K_i + 1`` takes the rest of ``1/M``. The
objective is convex piecewise-linear in ``t``; its slope changes sign at the first breakpoint
(``s`` = one of the ``S_ik``, taken in increasing order) where
``(alpha / C) * A >= (1 - alpha) * M`` with
``A = sum_i sum_{k' <= K_i} (d_i,K_i+1 - d_ik') / rho_ik'``. This "water-filling" is done for
all queries at once with one sort of the ``M * max_k`` breakpoints (no per-query loop).
When a query's whole prefetched list is filled (``K_i = max_k``) the threshold cannot rise
further (the problem restricted to ``max_k`` neighbours is then solved exactly).

Differences from the public reference code (all deliberate):

- float64 accumulation throughout (distances of the returned pairs are recomputed in float64);
- a query the threshold never reaches (``K_i = 0``) gives its whole ``1/M`` to its nearest
  neighbour (the reference code dropped its mass);
- approximate-search results with id ``-1`` are dropped;
- seeded sampling: ``without_replacement`` (default; Gumbel-top-k, i.e. successive draws
  proportional to ``p``), ``with_replacement`` (the paper; ``k`` i.i.d. draws) or ``top``
  (deterministic: highest ``p`` first, ties by lower index);
- when the support of ``p`` is smaller than the budget, every supported row is taken and the
  rest is filled by the **nearest rule**: the unselected rows in increasing order of their L2
  distance to the nearest query (ties by lower index); the result info says how many;
- neighbour search is exact (float64 BLAS or faiss Flat) for small problems and faiss IVF for
  large ones (``index=``), with recall measured against exact search on a sample of queries;
- the KDE neighbour search runs in chunks (memory ``chunk * kde_k * 12`` bytes).

The default ``sigma = 0.75`` and ``C = 5.0`` assume unit-norm embeddings (``normalize=True``
makes sure of it; the pool/target embeddings of :class:`SelectionContext` already are).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import numpy as np

from ..errors import ConfigError, DataError
from .base import MethodResult, SelectionContext, SelectionMethod, top_k
from .params import Choices, Interval, Option
from .registry import register

SAMPLING_MODES = ("without_replacement", "with_replacement", "top")
FILL_RULE = "nearest: unselected rows by increasing L2 distance to the nearest query (ties: lower index)"

DEFAULTS: dict[str, Any] = {
    "alpha": 0.5, "C": 5.0, "sigma": 0.75, "max_k": 5000, "kde_k": 1000, "index": "auto",
    "sampling": "without_replacement", "normalize": True, "shard_rows": 250_000,
}


# --------------------------------------------------------------------------------------
# validation


def check_params(alpha: float, C: float, sigma: float, max_k: int, kde_k: int,
                 sampling: str | None = None) -> None:
    """Raise :class:`ConfigError` for out-of-range TSDS settings."""
    try:
        alpha, C, sigma = float(alpha), float(C), float(sigma)
    except (TypeError, ValueError):
        raise ConfigError(f"tsds: alpha, C and sigma must be numbers, got {alpha!r}, {C!r}, {sigma!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"tsds: alpha must be in [0, 1], got {alpha}")
    if not (np.isfinite(C) and C > 0):
        raise ConfigError(f"tsds: C must be > 0, got {C}")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"tsds: sigma must be >= 0 (0 = KNN-Uniform), got {sigma}")
    for name, v in (("max_k", max_k), ("kde_k", kde_k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"tsds: {name} must be an integer >= 1, got {v!r}")
    if sampling is not None and sampling not in SAMPLING_MODES:
        raise ConfigError(f"tsds: sampling must be one of {SAMPLING_MODES}, got {sampling!r}")


def check_embeddings(query: Any, candidates: Any, *, query_name: str = "query",
                     candidates_name: str = "candidates") -> tuple[np.ndarray, np.ndarray]:
    """Validate two embedding matrices (2-d, non-empty, same width, finite) and return them as
    arrays (not copied when already ndarrays). Raises :class:`DataError` naming the input."""
    out = []
    for a, name in ((query, query_name), (candidates, candidates_name)):
        a = np.asarray(a)
        if a.ndim != 2:
            raise DataError(f"expected a 2-d array (rows x dims), got shape {a.shape}", file=name)
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise DataError(f"empty embedding matrix, shape {a.shape}", file=name)
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise DataError(f"embeddings must be real numbers, got dtype {a.dtype}", file=name)
        bad = ~np.isfinite(a).all(axis=1) if np.issubdtype(a.dtype, np.floating) else np.zeros(len(a), bool)
        if bad.any():
            raise DataError(f"{int(bad.sum())} row(s) hold NaN or inf, first at row {int(np.argmax(bad))}",
                            file=name)
        out.append(a)
    if out[0].shape[1] != out[1].shape[1]:
        raise DataError(f"dimension mismatch: {query_name} has {out[0].shape[1]} columns, "
                        f"{candidates_name} has {out[1].shape[1]}", file=candidates_name)
    return out[0], out[1]


def _float_dtype(a: np.ndarray) -> type:
    return np.float64 if a.dtype == np.float64 else np.float32


def l2_normalize(a: np.ndarray) -> np.ndarray:
    """Row-wise L2-normalised copy (float64 input stays float64, anything else becomes
    float32; norms computed in float64; all-zero rows stay zero)."""
    a = np.array(a, dtype=_float_dtype(np.asarray(a)), copy=True)
    n = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))[:, None]
    a /= np.maximum(n, 1e-12).astype(a.dtype)
    return a


# --------------------------------------------------------------------------------------
# core


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
    rho: (N,) float64 density of each candidate (NaN outside the prefetched set; 1 when
        ``sigma == 0``).
    info: diagnostics (index used, ANN recall, timings, support size, ...).
    """

    p: np.ndarray
    threshold: float
    neighbor_ids: np.ndarray
    neighbor_dist: np.ndarray
    gamma: np.ndarray
    filled: np.ndarray
    rho: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def plan(self) -> "Any":
        """The transport plan as a ``scipy.sparse.csr_matrix`` of shape (M, N)."""
        from scipy import sparse

        m, n = self.neighbor_ids.shape[0], len(self.p)
        ok = (self.neighbor_ids >= 0) & (self.gamma > 0)
        rows = np.broadcast_to(np.arange(m)[:, None], ok.shape)[ok]
        return sparse.csr_matrix((self.gamma[ok], (rows, self.neighbor_ids[ok])), shape=(m, n))


def _kernel_rows(xq: np.ndarray, xc: np.ndarray, self_col: np.ndarray | None, kde_k: int,
                 inv_s2: float) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``xq``: the sum of the ``kde_k`` largest kernel weights
    ``max(0, 1 - ||xq - xc||^2 / sigma^2)`` over the columns ``xc`` (self weight forced to 1 at
    column ``self_col[r]`` when given), and the number of columns with a positive weight.
    Dense BLAS block; float64 sums."""
    dt = np.float64 if (xq.dtype == np.float64 and xc.dtype == np.float64) else np.float32
    a = np.asarray(xq, dtype=dt)
    c = np.asarray(xc, dtype=dt)
    # w = 1 - ||a - c||^2 / sigma^2 = (2/sigma^2) a.c + (1 - |a|^2/sigma^2) - |c|^2/sigma^2
    g = (a * dt(2.0 * inv_s2)) @ c.T
    g += (1.0 - np.einsum("ij,ij->i", a, a, dtype=np.float64) * inv_s2).astype(dt)[:, None]
    g -= (np.einsum("ij,ij->i", c, c, dtype=np.float64) * inv_s2).astype(dt)[None, :]
    np.clip(g, 0.0, 1.0, out=g)  # rounding can push a duplicate's weight just above 1
    if self_col is not None:
        g[np.arange(len(g)), self_col] = 1.0
    cnt = np.count_nonzero(g, axis=1)
    tot = g.sum(axis=1, dtype=np.float64)
    over = np.flatnonzero(cnt > kde_k)
    if len(over):
        part = np.partition(g[over], g.shape[1] - kde_k, axis=1)[:, g.shape[1] - kde_k:]
        tot[over] = part.sum(axis=1, dtype=np.float64)
    return tot, cnt


def _block_rows(n_cols: int, itemsize: int = 4) -> int:
    from ..neighbors import CHUNK_BYTES

    return int(max(1, min(65536, CHUNK_BYTES // max(1, n_cols * itemsize))))


def kde_exact(x: np.ndarray, sigma: float, kde_k: int, *, rows: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Exact densities (and within-kernel neighbour counts) of ``x[rows]`` (default all rows)
    against all of ``x``, by dense BLAS blocks (float64 when ``x`` is float64)."""
    n = len(x)
    rows = np.arange(n) if rows is None else np.asarray(rows)
    inv_s2 = 1.0 / float(sigma) ** 2
    rho = np.empty(len(rows))
    cnt = np.empty(len(rows), dtype=np.int64)
    step = _block_rows(n, x.dtype.itemsize)
    for s in range(0, len(rows), step):
        r = rows[s:s + step]
        rho[s:s + len(r)], cnt[s:s + len(r)] = _kernel_rows(x[r], x, r, kde_k, inv_s2)
    return rho, cnt


def kde_lists(x: np.ndarray, kde_k: int, *, nlist: int | None = None, nprobe: int | None = None,
              scan_factor: float = 8.0, seed: int | None = 0) -> dict[str, Any]:
    """The inverted lists of :func:`kde_clustered`: k-means on ``x`` (``nlist ~ sqrt(n)``),
    each row's own list, and for each list the ``nprobe`` lists nearest to its centroid.
    Returns a dict with ``order`` (rows sorted by list), ``bounds`` (list ``c`` holds
    ``order[bounds[c]:bounds[c + 1]]``), ``probe``, ``nlist``, ``nprobe`` and ``train_s``.
    Memory beyond ``x``: a float32 copy of ``x`` when it is not float32, and ``n * 16`` bytes."""
    import faiss

    from ..neighbors import CHUNK_BYTES

    n, d = x.shape
    if nlist is None:
        nlist = int(max(1, min(round(math.sqrt(n)), n // 39)))
    if nprobe is None:
        nprobe = int(max(4, math.ceil(scan_factor * kde_k / max(1.0, n / nlist))))
    nprobe = int(min(nprobe, nlist))
    xf = np.ascontiguousarray(x, dtype=np.float32)
    t0 = time.perf_counter()
    km = faiss.Kmeans(d, nlist, niter=10, seed=int(seed or 0), max_points_per_centroid=128,
                      verbose=False)
    km.train(xf)
    cidx = faiss.IndexFlatL2(d)
    cidx.add(km.centroids)
    own = np.empty(n, dtype=np.int64)
    step = max(1, CHUNK_BYTES // (8 * nlist))
    for s in range(0, n, step):
        own[s:s + step] = cidx.search(xf[s:s + step], 1)[1][:, 0]
    _, probe = cidx.search(km.centroids, nprobe)
    order = np.argsort(own, kind="stable")
    bounds = np.searchsorted(own[order], np.arange(nlist + 1))
    return {"order": order, "bounds": bounds, "probe": probe, "nlist": nlist, "nprobe": nprobe,
            "train_s": time.perf_counter() - t0}


def kde_list_cost(lists: dict[str, Any]) -> np.ndarray:
    """Pairs scored for each list by :func:`kde_score_lists` (members x scanned rows)."""
    size = np.diff(lists["bounds"])
    probe = lists["probe"]
    cost = np.empty(lists["nlist"], dtype=np.int64)
    for c in range(lists["nlist"]):
        pl = probe[c][probe[c] >= 0]
        pl = np.unique(np.concatenate([[c], pl]))
        cost[c] = size[c] * size[pl].sum()
    return cost


def kde_score_lists(x: np.ndarray, lists: dict[str, Any], clusters: Any, sigma: float, kde_k: int
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Densities of the rows of the given ``clusters`` (list numbers of ``lists``, from
    :func:`kde_lists`): each list's rows are scored together, by dense BLAS blocks, against the
    rows of its probed lists (own list first). Returns (rows, rho of those rows, pairs scored).
    Scoring a partition of the lists in separate calls (e.g. on separate workers) gives the
    same values as one call over all of them."""
    order, bounds, probe = lists["order"], lists["bounds"], lists["probe"]
    inv_s2 = 1.0 / float(sigma) ** 2
    out_rows, out_rho = [], []
    scanned = 0
    for c in clusters:
        c = int(c)
        mem = order[bounds[c]:bounds[c + 1]]
        if len(mem) == 0:
            continue
        lst = probe[c][probe[c] >= 0]
        lst = np.concatenate([[c], lst[lst != c]])
        cols = np.concatenate([order[bounds[l]:bounds[l + 1]] for l in lst])
        xc = x[cols]
        scanned += len(mem) * len(cols)
        step = _block_rows(len(cols), 4)
        for s in range(0, len(mem), step):
            r = np.arange(s, min(s + step, len(mem)))
            tot, _ = _kernel_rows(x[mem[r]], xc, r, kde_k, inv_s2)
            out_rows.append(mem[r])
            out_rho.append(tot)
    if not out_rows:
        return np.empty(0, dtype=np.int64), np.empty(0), 0
    return np.concatenate(out_rows), np.concatenate(out_rho), scanned


def kde_clustered(x: np.ndarray, sigma: float, kde_k: int, *, nlist: int | None = None,
                  nprobe: int | None = None, scan_factor: float = 8.0, seed: int | None = 0
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """Approximate densities by inverted lists scanned with dense BLAS blocks.

    The rows are clustered by k-means (``nlist ~ sqrt(n)``); the rows of one cluster are
    scored together, by one dense BLAS block, against the rows of the ``nprobe`` lists whose
    centroids are nearest to their own centroid (own list first). ``nprobe`` defaults to
    scanning about ``scan_factor * kde_k`` rows per row (at least 4 lists). Rows near a list's
    border may miss some neighbours: :func:`kde_density` measures the recall.
    (:func:`kde_lists` + :func:`kde_score_lists`; the Ray backend scores groups of lists on
    separate workers.)
    """
    n = len(x)
    lists = kde_lists(x, kde_k, nlist=nlist, nprobe=nprobe, scan_factor=scan_factor, seed=seed)
    t1 = time.perf_counter()
    rho = np.ones(n)
    rows, vals, scanned = kde_score_lists(x, lists, range(lists["nlist"]), sigma, kde_k)
    rho[rows] = vals
    t2 = time.perf_counter()
    return rho, {"index": f"ivf-blocked(nlist={lists['nlist']},nprobe={lists['nprobe']})",
                 "train_s": lists["train_s"], "search_s": t2 - t1, "mean_scanned": scanned / max(n, 1)}


def kde_density(x: np.ndarray, sigma: float, kde_k: int, *, index: str = "auto",
                seed: int | None = 0, chunk: int | None = None, recall_sample: int = 50
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """``rho_u = sum_v max(0, 1 - ||x_u - x_v||^2 / sigma^2)`` over ``u``'s ``kde_k`` nearest
    rows of ``x`` (itself included, so ``rho >= 1``; ``m`` exact duplicates give ``m + 1``).

    Only rows within ``sigma`` contribute, so the sum equals the ``kde_k`` largest kernel
    weights of the row. ``index``: ``exact``/``flat`` (dense BLAS blocks against all rows),
    ``ivf`` (k-means lists scanned by BLAS blocks, :func:`kde_clustered`), ``hnsw`` or a faiss
    factory string (faiss kNN search in chunks of ``chunk`` rows); ``auto`` is exact up to
    ``sqrt(FLAT_MAX_PAIRS)`` rows, ``ivf`` beyond. Memory beyond ``x`` is bounded by blocks of
    about ``CHUNK_BYTES``. For approximate indexes the recall is measured on ``recall_sample``
    rows against exact computation: the share of the true within-kernel neighbours (capped at
    ``kde_k``) that were found. Returns (rho float64, info).
    """
    from ..neighbors import NeighborIndex, resolve_index

    n = len(x)
    if sigma == 0:
        return np.ones(n), {"index": None, "recall": None}
    kk = int(min(kde_k, n))
    kind = resolve_index(index, n, n)
    if kind in ("exact", "flat"):
        t0 = time.perf_counter()
        rho, _ = kde_exact(x, sigma, kk)
        return rho, {"index": "exact-blocked", "recall": 1.0, "search_s": time.perf_counter() - t0}
    rng = np.random.default_rng(seed)
    sample_rows = np.sort(rng.choice(n, size=min(recall_sample, n), replace=False))
    if kind == "ivf":
        rho, info = kde_clustered(x, sigma, kk, seed=seed)
    else:
        t0 = time.perf_counter()
        idx = NeighborIndex(x, kind, k_hint=kk, n_queries_hint=n, seed=seed)
        t1 = time.perf_counter()
        inv_s2 = 1.0 / float(sigma) ** 2
        rho = np.ones(n)
        for s, d2, ids in idx.iter_search(x, kk, chunk=chunk):
            rows = np.arange(s, s + len(ids))[:, None]
            other = (ids >= 0) & (ids != rows)
            keep = other & (np.cumsum(other, axis=1) <= kk - 1)
            w = 1.0 - np.asarray(d2, dtype=np.float64) * inv_s2
            rho[s:s + len(ids)] += np.where(keep & (w > 0), w, 0.0).sum(axis=1)
        info = {"index": idx.description, "build_s": t1 - t0, "search_s": time.perf_counter() - t1}
    t0 = time.perf_counter()
    true_rho, _ = kde_exact(x, sigma, kk, rows=sample_rows)
    found = rho[sample_rows] - 1.0
    true = true_rho - 1.0
    has = true > 1e-12
    info["recall"] = float(np.mean(np.minimum(found[has] / true[has], 1.0))) if has.any() else 1.0
    info["recall_measure"] = "kernel mass found / exact, on sampled rows with neighbours in the kernel"
    info["recall_rows"] = int(has.sum())
    info["recall_s"] = time.perf_counter() - t0
    return rho, info


def water_filling(dist: np.ndarray, ids: np.ndarray, rho_nb: np.ndarray, *, alpha: float,
                  C: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Solve the TSDS transport problem restricted to each query's prefetched neighbours.

    dist: (M, L) float64 L2 distances, ascending per row, valid entries first.
    ids: (M, L) candidate ids (-1 = no neighbour; dropped).
    rho_nb: (M, L) density of each neighbour (ignored where ids == -1).
    Returns (gamma (M, L) plan entries, threshold s, K (M,) filled counts). Every query with at
    least one neighbour ships exactly 1/M (up to rounding); a query with K_i = 0 ships it all to
    its nearest neighbour.
    """
    dist = np.asarray(dist, dtype=np.float64)
    m, L = dist.shape
    valid = np.asarray(ids) >= 0
    if not valid[:, 0].all() or (np.diff(valid.astype(np.int8), axis=1) > 0).any():
        raise ValueError("each row of ids needs its valid neighbours first and at least one")
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        w = np.where(valid, 1.0 / np.where(valid, rho_nb, 1.0), 0.0)
        dsafe = np.where(valid, dist, 0.0)
        S = np.cumsum(w, axis=1)
        P = np.cumsum(w * dsafe, axis=1)
        dnext = np.full_like(dist, np.inf)
        dnext[:, :-1] = np.where(valid[:, 1:], dist[:, 1:], np.inf)
        # A_i after filling k neighbours; inf once the whole list is filled (t cannot drop further)
        A = np.where(np.isinf(dnext), np.inf, dnext * S - P)
        A_prev = np.zeros_like(A)
        A_prev[:, 1:] = A[:, :-1]
        delta = A - A_prev
    s_ev = S[valid]
    d_ev = delta[valid]
    order = np.argsort(s_ev, kind="stable")
    cum = np.cumsum(d_ev[order])
    target = np.inf if alpha == 0 else (1.0 - alpha) * m * C / alpha
    hit = cum >= target
    e = int(np.argmax(hit))  # a terminal event (A = inf) always exists
    s = float(s_ev[order[e]])
    S_valid = np.where(valid, S, np.inf)
    K = (S_valid <= s).sum(axis=1)
    cols = np.arange(L)[None, :]
    gamma = np.where(cols < K[:, None], w / (m * s), 0.0)
    n_valid = valid.sum(axis=1)
    has_rest = K < n_valid
    S_before = np.where(K > 0, np.take_along_axis(S, np.maximum(K - 1, 0)[:, None], axis=1)[:, 0], 0.0)
    rest = np.maximum(0.0, (1.0 - S_before / s) / m)
    r = np.flatnonzero(has_rest)
    gamma[r, K[r]] = rest[r]
    return gamma, s, K


class _Timer:
    """Records stage times into a dict and, when given, through an outer ``timed(stage)``."""

    def __init__(self, outer: Callable[[str], ContextManager] | None, prefix: str = "tsds_") -> None:
        self.outer, self.prefix, self.times = outer, prefix, {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        name = self.prefix + stage
        t = time.perf_counter()
        with (self.outer(name) if self.outer else contextlib.nullcontext()):
            yield
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t


def prepare(query: Any, candidates: Any, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validated query/candidate matrices (float64 kept as is, other types as float32),
    L2-normalised when ``normalize``."""
    q, x = check_embeddings(query, candidates)
    if normalize:
        return l2_normalize(q), l2_normalize(x)
    return (np.ascontiguousarray(q, dtype=_float_dtype(q)),
            np.ascontiguousarray(x, dtype=_float_dtype(x)))


def tsds(query: Any, candidates: Any, *, alpha: float = 0.5, C: float = 5.0, sigma: float = 0.75,
         max_k: int = 5000, kde_k: int = 1000, index: str = "auto", seed: int | None = None,
         normalize: bool = False, recall_sample: int = 50, kde_chunk: int | None = None,
         timer: Callable[[str], ContextManager] | None = None, backend: str = "local",
         num_workers: int | None = None, shard_rows: int = 250_000, ray_address: str | None = None
         ) -> TSDSResult:
    """Run TSDS on embeddings and return the full :class:`TSDSResult` (probabilities, plan,
    densities, diagnostics). See :func:`selection_probabilities` for the parameters;
    ``timer(stage)`` is an optional outer context manager factory (e.g.
    ``SelectionContext.timed``) that also receives ``tsds_search``, ``tsds_kde``, ``tsds_solve``.

    ``backend="ray"`` runs the neighbour search over shards of ``shard_rows`` candidates and
    the KDE as Ray tasks (``num_workers`` at a time, on the cluster at ``ray_address`` /
    ``$RAY_ADDRESS`` or a local one); ``candidates`` may then also be the path of a ``.npy``
    file. See :func:`tasksift.distributed.tsds_ray` (search always exact; memory per worker
    about one shard).
    """
    from ..neighbors import knn

    if backend == "ray":
        from ..distributed import tsds_ray

        return tsds_ray(query, candidates, alpha=alpha, C=C, sigma=sigma, max_k=max_k, kde_k=kde_k,
                        index=index, seed=seed, normalize=normalize, recall_sample=recall_sample,
                        shard_rows=shard_rows, num_workers=num_workers, address=ray_address, timer=timer)
    if backend != "local":
        raise ConfigError(f"tsds: backend must be 'local' or 'ray', got {backend!r}")
    check_params(alpha, C, sigma, max_k, kde_k)
    alpha, C, sigma = float(alpha), float(C), float(sigma)
    q, x = prepare(query, candidates, normalize)
    m, n = len(q), len(x)
    seed = 0 if seed is None else int(seed)
    tm = _Timer(timer)
    L = int(min(max_k, n))
    with tm("search"):
        res = knn(q, x, L, index=index, seed=seed, recall_sample=recall_sample)
        dist, ids = res.distances, res.ids
        lost = (ids[:, 0] < 0)
        if lost.any():  # an ANN search that found nothing for some query: search those exactly
            from ..neighbors import knn as _knn

            fix = _knn(q[lost], x, L, index="flat", refine=True)
            dist[lost], ids[lost] = fix.distances, fix.ids
        dropped = int((ids < 0).sum())
    with tm("kde"):
        rho = np.full(n, np.nan)
        U = np.unique(ids[ids >= 0])
        if sigma == 0:
            rho[U] = 1.0
            kinfo = {"index": None, "recall": None}
        else:
            rho_u, kinfo = kde_density(x[U], sigma, kde_k, index=index, seed=seed, chunk=kde_chunk,
                                       recall_sample=recall_sample)
            rho[U] = rho_u
    with tm("solve"):
        safe = np.where(ids >= 0, ids, 0)
        rho_nb = np.where(ids >= 0, rho[safe], 1.0)
        gamma, s, K = water_filling(dist, ids, rho_nb, alpha=alpha, C=C)
        ok = ids >= 0
        p = np.bincount(ids[ok], weights=gamma[ok], minlength=n).astype(np.float64)
        total = p.sum()
        p /= total
    support = int((p > 0).sum())
    info = {
        "variant": "knn-uniform" if sigma == 0 else "knn-kde",
        "n_queries": m, "n_candidates": n, "max_k": L, "kde_k": int(min(kde_k, len(U))) if sigma else None,
        "prefetched": int(len(U)), "support_size": support, "threshold": s,
        "max_rho_gamma": 1.0 / (m * s), "unreached_queries": int((K == 0).sum()),
        "fully_filled_queries": int((K == (ids >= 0).sum(axis=1)).sum()),
        "ann_dropped_ids": dropped,
        "index": {"search": res.index, "kde": kinfo["index"]},
        "ann_recall": {"search": res.recall, "kde": kinfo["recall"]},
        "recall_at": {"search": L, "kde": int(min(kde_k, len(U))) if sigma else None},
        "recall_measure": {
            "search": (f"share of the exact {L} nearest found, mean over "
                       f"{res.info['recall_queries']} sampled queries") if res.info["recall_queries"] else "exact",
            "kde": kinfo.get("recall_measure", "exact") if sigma else None},
        "normalized": bool(normalize), "mass_before_renormalisation": float(total),
        "timings": tm.times,
    }
    return TSDSResult(p, s, ids, dist, gamma, K, rho, info)


def selection_probabilities(query: Any, candidates: Any, *, alpha: float = 0.5, C: float = 5.0,
                            sigma: float = 0.75, max_k: int = 5000, kde_k: int = 1000,
                            index: str = "auto", seed: int | None = None,
                            normalize: bool = False) -> np.ndarray:
    """TSDS selection probabilities of each candidate, from embeddings.

    query: (M, d) target embeddings; candidates: (N, d) pool embeddings. Distances are L2 on
    the embeddings as given (``normalize=True`` L2-normalises both first; the defaults of
    ``C`` and ``sigma`` assume unit-norm embeddings).
    alpha: in [0, 1]; large favours alignment with the queries, small favours diversity.
    C: distance scale. sigma: KDE kernel width (0 = KNN-Uniform, no density penalty).
    max_k: neighbours prefetched per query (the plan lives on them). kde_k: neighbours per
    candidate in the density estimate. index: ``"auto"``, ``"exact"``, ``"flat"``, ``"ivf"``,
    ``"hnsw"`` or a faiss factory string (see :mod:`tasksift.neighbors`). seed: for IVF
    training and the recall sample.
    Returns p: (N,) float64, ``p >= 0``, ``sum(p) == 1``.
    """
    return tsds(query, candidates, alpha=alpha, C=C, sigma=sigma, max_k=max_k, kde_k=kde_k,
                index=index, seed=seed, normalize=normalize).p


def transport_plan(query: Any, candidates: Any, **kwargs: Any) -> "Any":
    """The optimal transport plan ``gamma`` (``scipy.sparse.csr_matrix``, M x N) that TSDS
    finds (same keyword arguments as :func:`selection_probabilities`). With ``max_k >= N``
    and ``kde_k >= N`` it minimises :func:`objective` over all plans."""
    return tsds(query, candidates, **kwargs).plan()


def objective(gamma: Any, dist: np.ndarray, rho: np.ndarray, *, alpha: float, C: float) -> float:
    """``(alpha / C) * sum_ij d_ij gamma_ij + (1 - alpha) * M * max_ij rho_j gamma_ij`` for a
    plan ``gamma`` (dense or scipy sparse, M x N), distances ``dist`` (M x N) and densities
    ``rho`` (N,)."""
    from scipy import sparse

    g = gamma.toarray() if sparse.issparse(gamma) else np.asarray(gamma, dtype=np.float64)
    m = g.shape[0]
    dist = np.asarray(dist, dtype=np.float64)
    rho = np.asarray(rho, dtype=np.float64)
    return float(alpha / C * np.sum(dist * g) + (1.0 - alpha) * m * np.max(rho[None, :] * g))


# --------------------------------------------------------------------------------------
# sampling


def nearest_query_distance(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Each candidate's L2 distance to its nearest query (float64; the fill rule's key)."""
    from ..neighbors import min_distance

    return min_distance(candidates, query)


def draw(p: np.ndarray, k: int, *, rng: np.random.Generator | int | None = None,
         sampling: str = "without_replacement",
         fill_key: Callable[[], np.ndarray] | np.ndarray | None = None
         ) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw ``k`` candidate indices from ``p``.

    sampling: ``without_replacement`` (k distinct rows, successive draws proportional to
    ``p``, in draw order), ``with_replacement`` (k i.i.d. draws, repeats possible, as in the
    paper) or ``top`` (the k highest ``p``, ties by lower index).
    When a mode without replacement needs more rows than ``p`` supports, all supported rows
    come first and the remaining ones are filled by ascending ``fill_key`` (lower = better,
    ties by lower index; e.g. :func:`nearest_query_distance`), or left out if ``fill_key`` is
    None. Returns (indices int64, info with support size, fill rule and count filled).
    """
    if sampling not in SAMPLING_MODES:
        raise ConfigError(f"tsds: sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    p = np.asarray(p, dtype=np.float64)
    n = len(p)
    k = int(k)
    if k < 0:
        raise ConfigError(f"tsds: cannot select {k} rows")
    support = np.flatnonzero(p > 0)
    info: dict[str, Any] = {"sampling": sampling, "support_size": int(len(support)), "budget": k}
    if sampling == "with_replacement":
        out = rng.choice(n, size=k, replace=True, p=p / p.sum())
        info["distinct"] = int(len(np.unique(out)))
        info["filled"] = 0
        return out.astype(np.int64), info
    if k > n:
        raise ConfigError(f"tsds: cannot select {k} distinct rows out of {n} without replacement")
    take = min(k, len(support))
    if sampling == "top":
        chosen = top_k(np.where(p > 0, p, -np.inf), take) if take else np.empty(0, np.int64)
    else:
        keys = np.log(p[support]) + rng.gumbel(size=len(support))
        if take < len(support):
            part = np.argpartition(-keys, take - 1)[:take] if take else np.empty(0, np.int64)
        else:
            part = np.arange(len(support))
        part = part[np.lexsort((support[part], -keys[part]))]
        chosen = support[part]
    chosen = np.asarray(chosen, dtype=np.int64)
    info["filled"] = 0
    if k > len(support):
        info["support_smaller_than_budget"] = True
        if fill_key is None:
            info["fill_rule"] = "none: fewer rows returned than asked"
        else:
            key = np.asarray(fill_key() if callable(fill_key) else fill_key, dtype=np.float64)
            rest = np.flatnonzero(p <= 0)
            rest = rest[np.lexsort((rest, key[rest]))][:k - len(chosen)]
            chosen = np.concatenate([chosen, rest.astype(np.int64)])
            info["fill_rule"] = FILL_RULE
            info["filled"] = int(len(rest))
    return chosen, info


# --------------------------------------------------------------------------------------
# the registered method


@register("tsds", description="optimal-transport task-specific selection (TSDS, KNN-Uniform / KNN-KDE)",
          needs=("embeddings",), cost="moderate", stochastic=True, survey=dict(llms_trained=0, steps=4))
class TSDSSelection(SelectionMethod):
    """TSDS over the pool/target sentence embeddings. Options: ``alpha`` (0.5), ``C`` (5.0),
    ``sigma`` (0.75; 0 = KNN-Uniform), ``max_k`` (5000), ``kde_k`` (1000), ``index``
    ("auto"), ``sampling`` ("without_replacement" | "with_replacement" | "top"),
    ``normalize`` (True: L2-normalise the embeddings first), ``shard_rows`` (250000:
    candidates per shard when the context's backend is ``ray``, see
    :func:`tasksift.distributed.tsds_ray`)."""

    parameters = {
        "alpha": Option(DEFAULTS["alpha"], "weight of alignment to the target (1) against diversity (0)",
                        Interval(float, 0, 1)),
        "C": Option(DEFAULTS["C"], "distance scale of the transport cost", Interval(float, 0, None, "neither")),
        "sigma": Option(DEFAULTS["sigma"], "KDE kernel width for the near-duplicate penalty (0 = KNN-Uniform)",
                        Interval(float, 0, None)),
        "max_k": Option(DEFAULTS["max_k"], "neighbours prefetched per target example", Interval(int, 1)),
        "kde_k": Option(DEFAULTS["kde_k"], "neighbours per pool row in the density estimate", Interval(int, 1)),
        "index": Option(DEFAULTS["index"], "neighbour index: auto, exact, flat, ivf, hnsw or a faiss factory string",
                        str),
        "sampling": Option(DEFAULTS["sampling"], "how k rows are drawn from the probabilities "
                           "(tasksift_rank is the draw order; 'top' = highest probability first)",
                           Choices(*SAMPLING_MODES)),
        "normalize": Option(DEFAULTS["normalize"], "L2-normalise the embeddings first", bool),
        "shard_rows": Option(DEFAULTS["shard_rows"], "pool rows per shard with --backend ray", Interval(int, 1)),
    }

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        c = self.config
        check_params(c["alpha"], c["C"], c["sigma"], c["max_k"], c["kde_k"], c["sampling"])

    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        c = self.config
        q = ctx.embeddings("target")
        x = ctx.embeddings("pool")
        res = tsds(q, x, alpha=c["alpha"], C=c["C"], sigma=c["sigma"], max_k=c["max_k"],
                   kde_k=c["kde_k"], index=c["index"], seed=ctx.seed, normalize=bool(c["normalize"]),
                   timer=ctx.timed, backend=getattr(ctx, "backend", "local") or "local",
                   num_workers=getattr(ctx, "num_workers", None), shard_rows=int(c["shard_rows"]),
                   ray_address=getattr(ctx, "ray_address", None))
        p = res.p
        with ctx.timed("tsds_sample"):
            idx, sinfo = draw(p, k, rng=ctx.rng, sampling=c["sampling"],
                              fill_key=lambda: nearest_query_distance(*prepare(q, x, bool(c["normalize"]))))
        columns = {"tsds_prob": p}
        if c["sampling"] == "with_replacement":
            counts = np.bincount(idx, minlength=len(p)).astype(np.float64)
            _, first = np.unique(idx, return_index=True)
            idx = idx[np.sort(first)]
            columns["tsds_draws"] = counts
            sinfo["note"] = (f"{k} draws with replacement gave {len(idx)} distinct rows; the subset "
                             f"holds each once, draw counts are in column tsds_draws")
        info = {k_: v for k_, v in res.info.items() if k_ != "timings"}
        if "distributed" in info:  # per-task records stay out of the manifest
            info["distributed"] = {k_: v for k_, v in info["distributed"].items() if k_ != "tasks"}
        info.update(sinfo)
        info.setdefault("fill_rule", "not needed (support >= budget)" if c["sampling"] != "with_replacement"
                        else "none (with replacement)")
        info["tsds_timings"] = {k_: round(v, 4) for k_, v in res.info["timings"].items()}
        return MethodResult(indices=np.asarray(idx, dtype=np.int64), scores=p, columns=columns,
                            info=info)
