"""Diversity selectors on pool embeddings: ``kcenter``, ``facility-location`` and
``score-then-diverse`` (DEITA-style).

All three work on L2-normalised embeddings (cosine geometry) and never build a dense N x N
matrix: k-center keeps one min-distance vector, facility location runs on a sparse k-NN
graph from faiss, score-then-diverse compares each candidate with the rows taken so far.

- ``kcenter``: greedy farthest-first traversal (Gonzalez), a 2-approximation of the
  minimum covering radius. The first center is the pool row nearest to the target centroid
  (``init="target"``, default: anchors the cover on the task) or a seeded random row
  (``init="random"``). Each next center is the row farthest from all centers so far (ties:
  lowest index).
- ``facility-location``: maximise F(S) = sum_i max_{j in S} sim(i, j), with sim(i, j) =
  max(0, cosine) when j is among row i's ``neighbors`` nearest rows (itself included) and 0
  otherwise; exact lazy greedy (Minoux) with a heap, identical picks to plain greedy.
- ``score-then-diverse``: walk the rows by decreasing score and take a row unless its cosine
  to a row already taken exceeds ``threshold``. The score is ``"knn"`` (max cosine to any
  target example, default), the name of a registered method (its per-row scores), or a
  numeric field of the pool rows. If the walk ends with fewer than k rows, the best skipped
  rows fill the budget (``fill=True``, said in info) or fewer rows are returned.
"""
from __future__ import annotations

import heapq
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError
from .base import MethodResult, SelectionContext, SelectionMethod
from .params import Choices, Interval, Option
from .registry import get_method, register


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """float32 copy of ``x`` with unit-L2 rows (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------- k-center
def kcenter_greedy(x: np.ndarray, k: int, first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy k-center (farthest-first) on the rows of ``x`` (Euclidean distance).

    Returns ``(centers, pick_distance, min_distance)``: centers in pick order, the distance of
    each center to the previous centers when it was picked (inf for the first), and every
    row's final distance to its nearest center. Ties go to the lowest index.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)  # one memory-bound pass per center: keep it small
    n = len(x)
    k = min(int(k), n)
    sq = np.einsum("ij,ij->i", x, x)
    centers = np.empty(k, dtype=np.int64)
    pick = np.empty(k)
    mind = np.full(n, np.inf, dtype=np.float32)
    c = int(first)
    for t in range(k):
        centers[t] = c
        pick[t] = np.sqrt(max(mind[c], 0.0)) if np.isfinite(mind[c]) else np.inf
        d = sq - 2.0 * (x @ x[c]) + sq[c]
        np.minimum(mind, np.maximum(d, 0.0), out=mind)
        mind[c] = -1.0  # never picked again, even when every other row is a copy of a center
        if t + 1 < k:
            c = int(np.argmax(mind))
    mind[centers] = 0.0
    return centers, pick, np.sqrt(mind.astype(np.float64))


@register("kcenter", description="greedy k-center (farthest-first) on embeddings: maximal coverage of the pool",
          needs=("embeddings",), cost="cheap", stochastic=False, survey=dict(llms_trained=0, steps=2))
class KCenterSelection(SelectionMethod):
    parameters = {
        "init": Option("target", "first center: the row nearest the target centroid, or a seeded random row",
                       Choices("target", "random")),
    }

    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        init = self.config["init"]
        if init not in ("target", "random"):
            raise ConfigError(f"kcenter option init must be 'target' or 'random', got {init!r}")
        x = normalize_rows(ctx.embeddings("pool"))
        if init == "target":
            centroid = normalize_rows(ctx.embeddings("target")).mean(axis=0)
            first = int(np.argmin(((x - centroid) ** 2).sum(axis=1)))
        else:
            first = int(ctx.rng.integers(len(x)))
        with ctx.timed("kcenter"):
            centers, pick, mind = kcenter_greedy(x, k, first)
        scores = np.full(len(x), np.nan)
        scores[centers] = (len(centers) - np.arange(len(centers))) / len(centers)
        radius = np.full(len(x), np.nan)
        radius[centers] = np.where(np.isfinite(pick), pick, np.nan)
        return MethodResult(indices=centers, scores=scores, columns={"kcenter_pick_distance": radius},
                            info={"init": init, "first_center": first,
                                  "covering_radius": float(mind.max()) if len(mind) else 0.0,
                                  "distance": "euclidean on unit-normalised embeddings"})


# ------------------------------------------------------------------------ facility location
def knn_graph(x: np.ndarray, neighbors: int, index: str = "flat") -> sp.csr_matrix:
    """Sparse (N, N) similarity graph: row i holds max(0, cosine(i, j)) for i's ``neighbors``
    nearest rows j (itself included), from faiss (``index`` "flat" = exact, "hnsw" = approximate)."""
    import faiss

    xn = np.ascontiguousarray(normalize_rows(x))
    n, d = xn.shape
    kk = min(int(neighbors), n)
    if index == "flat":
        idx = faiss.IndexFlatIP(d)
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efSearch = max(64, 2 * kk)
    else:
        raise ConfigError(f"index must be 'flat' or 'hnsw', got {index!r}")
    idx.add(xn)
    sims, nbrs = idx.search(xn, kk)
    rows = np.repeat(np.arange(n), kk)
    cols = nbrs.ravel()
    vals = np.clip(sims.ravel().astype(np.float64), 0.0, None)
    ok = cols >= 0
    # every row covers itself with similarity 1 (also when an ANN search missed it)
    rows = np.concatenate([rows[ok], np.arange(n)])
    cols = np.concatenate([cols[ok], np.arange(n)])
    vals = np.concatenate([vals[ok], np.ones(n)])
    g = sp.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
    g.sum_duplicates()
    # duplicates (self listed twice) were summed: take the max instead by clipping to 1
    g.data = np.minimum(g.data, 1.0)
    g.eliminate_zeros()
    return g


def facility_location_greedy(sim: sp.spmatrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain greedy maximisation of F(S) = sum_i max_{j in S} sim[i, j] (sim >= 0, sparse).

    Every step recomputes all gains (O(nnz)); ties go to the lowest index. The reference for
    :func:`facility_location_lazy`. Returns (picks, gains)."""
    csc = sp.csc_matrix(sim, dtype=np.float64)
    n = csc.shape[1]
    k = min(int(k), n)
    cur = np.zeros(csc.shape[0])
    col_of = np.repeat(np.arange(n), np.diff(csc.indptr))
    taken = np.zeros(n, dtype=bool)
    picks, gains = [], []
    for _ in range(k):
        g = np.bincount(col_of, weights=np.maximum(csc.data - cur[csc.indices], 0.0), minlength=n)
        g[taken] = -np.inf
        j = int(np.argmax(g))
        picks.append(j)
        gains.append(float(g[j]))
        taken[j] = True
        s, e = csc.indptr[j], csc.indptr[j + 1]
        np.maximum.at(cur, csc.indices[s:e], csc.data[s:e])
    return np.asarray(picks, dtype=np.int64), np.asarray(gains)


def facility_location_lazy(sim: sp.spmatrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact lazy greedy (Minoux) for F(S) = sum_i max_{j in S} sim[i, j]: a max-heap of upper
    bounds on the marginal gains (valid by submodularity); the top entry is re-evaluated and
    taken when it still beats the next bound. Same picks as :func:`facility_location_greedy`
    (ties to the lowest index). Returns (picks, gains)."""
    csc = sp.csc_matrix(sim, dtype=np.float64)
    n = csc.shape[1]
    k = min(int(k), n)
    indptr, indices, data = csc.indptr, csc.indices, csc.data
    cur = np.zeros(csc.shape[0])
    col_of = np.repeat(np.arange(n), np.diff(indptr))
    init = np.bincount(col_of, weights=data, minlength=n)
    heap = [(-float(g), j) for j, g in enumerate(init)]
    heapq.heapify(heap)
    picks, gains = [], []
    while len(picks) < k and heap:
        _, j = heapq.heappop(heap)
        s, e = indptr[j], indptr[j + 1]
        cl, v = indices[s:e], data[s:e]
        g = float(np.maximum(v - cur[cl], 0.0).sum())
        if not heap or (-g, j) <= heap[0]:
            picks.append(j)
            gains.append(g)
            cur[cl] = np.maximum(cur[cl], v)
        else:
            heapq.heappush(heap, (-g, j))
    return np.asarray(picks, dtype=np.int64), np.asarray(gains)


def facility_location_value(sim: sp.spmatrix | np.ndarray, picks: np.ndarray) -> float:
    """F(S) = sum_i max_{j in S} sim[i, j] (0 for an empty S)."""
    if len(picks) == 0:
        return 0.0
    sub = sim[:, np.asarray(picks)]
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    return float(np.maximum(sub.max(axis=1), 0.0).sum())


@register("facility-location", description="facility location on a sparse cosine k-NN graph, exact lazy greedy: "
          "representative rows", needs=("embeddings",), cost="moderate", stochastic=False,
          survey=dict(llms_trained=0, steps=3))
class FacilityLocationSelection(SelectionMethod):
    parameters = {
        "neighbors": Option(10, "neighbours per row in the similarity graph", Interval(int, 1)),
        "index": Option("auto", "neighbour index: auto, flat, hnsw, ...", str),
    }

    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        c = self.config
        if int(c["neighbors"]) < 1:
            raise ConfigError(f"facility-location option neighbors must be >= 1, got {c['neighbors']}")
        x = ctx.embeddings("pool")
        index = c["index"]
        if index == "auto":
            index = "flat" if len(x) <= 100_000 else "hnsw"
        with ctx.timed("knn_graph"):
            g = knn_graph(x, int(c["neighbors"]) + 1, index)
        with ctx.timed("facility_location"):
            picks, gains = facility_location_lazy(g, k)
        scores = np.full(len(x), np.nan)
        scores[picks] = gains
        return MethodResult(indices=picks, scores=scores, columns={"facility_location_gain": scores},
                            info={"neighbors": int(c["neighbors"]), "index": index, "graph_nnz": int(g.nnz),
                                  "objective": float(gains.sum()),
                                  "objective_fraction": float(gains.sum() / max(len(x), 1))})


# ----------------------------------------------------------------------- score-then-diverse
def diverse_walk(x: np.ndarray, order: np.ndarray, k: int, threshold: float, block: int = 256
                 ) -> tuple[np.ndarray, int]:
    """Walk ``order`` and keep a row unless its cosine to a kept row exceeds ``threshold``;
    stop at k rows. ``x`` must have unit rows. Candidates are compared with the kept set a
    block at a time (one matrix product), then within the block. Returns (kept, rows visited)."""
    d = x.shape[1]
    kept = np.empty(min(k, len(order)), dtype=np.int64)
    kept_vecs = np.empty((len(kept), d), dtype=np.float32)
    nk = 0
    visited = 0
    for s in range(0, len(order), block):
        if nk >= k:
            break
        cand = order[s:s + block]
        v = x[cand]
        prev = (v @ kept_vecs[:nk].T).max(axis=1) if nk else np.full(len(cand), -np.inf)
        intra = v @ v.T
        acc: list[int] = []
        for t in range(len(cand)):
            visited += 1
            if prev[t] > threshold or (acc and intra[t, acc].max() > threshold):
                continue
            acc.append(t)
            kept[nk] = cand[t]
            kept_vecs[nk] = v[t]
            nk += 1
            if nk >= k:
                break
    return kept[:nk], visited


def resolve_scores(ctx: SelectionContext, score: str, score_options: Mapping[str, Any] | None = None
                   ) -> tuple[np.ndarray, str]:
    """Per-pool-row scores named by ``score``: "knn" (max cosine to the targets), a registered
    method's scores, or a numeric field of the raw rows. Returns (scores, description)."""
    from .knn import max_cosine

    if score == "knn":
        return max_cosine(ctx.embeddings("target"), ctx.embeddings("pool")), "max cosine to the target examples"
    from .registry import available_methods

    if score in {m.name for m in available_methods()}:
        method = get_method(score)(**dict(score_options or {}))
        res = method.select(ctx, len(ctx.pool))
        if res.scores is None:
            raise ConfigError(f"method '{score}' gives no per-row scores to rank by")
        return np.asarray(res.scores, dtype=np.float64), f"scores of method '{score}'"
    vals = []
    for ex in ctx.pool:
        raw = ex.raw if isinstance(ex.raw, Mapping) else {}
        if score not in raw:
            raise ConfigError(f"score '{score}' is neither 'knn', a method nor a field of every pool row "
                              f"(row {ex.row} of {ex.source or 'the pool'} lacks it)")
        try:
            vals.append(float(raw[score]))
        except (TypeError, ValueError):
            raise ConfigError(f"score field '{score}' is not numeric in row {ex.row} "
                              f"({raw[score]!r})") from None
    return np.asarray(vals, dtype=np.float64), f"pool field '{score}'"


@register("score-then-diverse", description="DEITA-style: walk a score ranking, skip rows too similar to ones taken",
          needs=("embeddings",), cost="cheap", stochastic=False, survey=dict(llms_trained=0, steps=3))
class ScoreThenDiverseSelection(SelectionMethod):
    parameters = {
        "score": Option("knn", "ranking: 'knn' (max cosine to the target), a method name or a numeric row field", str),
        "score_options": Option({}, "options of the scoring method", dict),
        "threshold": Option(0.9, "cosine to a taken row above which a row is skipped as redundant",
                            Interval(float, -1, 1)),
        "fill": Option(True, "top up with the best skipped rows when the walk finds fewer than k", bool),
    }

    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        c = self.config
        try:
            thr = float(c["threshold"])
        except (TypeError, ValueError):
            raise ConfigError(f"score-then-diverse option threshold must be a number, got {c['threshold']!r}") from None
        if c["score"] == "score-then-diverse":
            raise ConfigError("score-then-diverse cannot score with itself")
        with ctx.timed("score"):
            scores, what = resolve_scores(ctx, str(c["score"]), c["score_options"])
        x = normalize_rows(ctx.embeddings("pool"))
        finite = np.flatnonzero(np.isfinite(scores))
        order = finite[np.lexsort((finite, -scores[finite]))]
        with ctx.timed("diverse_walk"):
            kept, visited = diverse_walk(x, order, k, thr)
        info: dict[str, Any] = {"score": what, "threshold": thr, "rows_visited": int(visited),
                                "skipped_as_redundant": int(visited - len(kept))}
        if len(kept) < k:
            if c["fill"]:
                rest = order[~np.isin(order, kept)][:k - len(kept)]
                info["filled"] = int(len(rest))
                info["fill_rule"] = "best-scored rows skipped as redundant, by score"
                kept = np.concatenate([kept, rest])
            if len(kept) < k:
                info["short"] = f"only {len(kept)} rows have a finite score, fewer than the budget of {k}"
        return MethodResult(indices=kept.astype(np.int64), scores=scores,
                            columns={"score_then_diverse_score": scores}, info=info)
