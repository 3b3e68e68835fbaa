"""Filters: ``dedup`` (exact and near-duplicate removal) and ``length`` (a length band).

Both are mainly meant as the first steps of a recipe (``dedup -> tsds``,
``length(min_words=5) -> dedup -> knn``, see :mod:`tasksift.recipe`): each has
``keep_mask(ctx)`` returning one boolean per pool row. Used alone as selectors they return
kept rows: a seeded random subset of them (``order="random"``, default) or the first ones in
pool order (``order="first"``); fewer than k rows when fewer are kept (said in info).

``dedup``:
- exact: rows with the same example id (content hash of the conversation) keep the first.
- near (``threshold``, cosine on pool embeddings, default 0.95; ``None`` = exact only):
  rows are visited in pool order and a row is dropped when its cosine to an earlier *kept*
  row is >= threshold (``mode="greedy"``, default: a chain a~b~c with a, c dissimilar keeps
  a and c), or every connected component of the ">= threshold" graph keeps only its first
  row (``mode="cluster"``). Pairs come from a faiss range search over an exact inner-product
  index (``search="range"``: every pair, O(N^2 d) time) or from each row's ``neighbors``
  nearest rows (``search="knn"``, with an HNSW index for pools over 100k rows when
  ``index="auto"``). ``search="auto"`` (default) is "range" up to 200k rows, else "knn".

``length``: keep rows whose length (whitespace-separated words, or characters) of ``field``
(text, prompt or response) lies in [min, max].
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph  # noqa: F401  (sp.csgraph)

from ..data.pool import Pool
from ..errors import ConfigError
from .base import MethodResult, SelectionContext, SelectionMethod
from .diversity import normalize_rows
from .params import Choices, Interval, Option
from .registry import register


def exact_duplicate_mask(ids: list[str]) -> np.ndarray:
    """True for the first row of each distinct id."""
    _, first = np.unique(np.asarray(ids, dtype=object).astype(str), return_index=True)
    keep = np.zeros(len(ids), dtype=bool)
    keep[first] = True
    return keep


def near_duplicate_pairs(x: np.ndarray, threshold: float, search: str = "range", neighbors: int = 10,
                         index: str = "flat", batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i > j, of rows whose cosine is >= ``threshold``.

    ``search="range"``: faiss range search on an exact inner-product index (all pairs).
    ``search="knn"``: only pairs among each row's ``neighbors`` nearest rows.
    """
    import faiss

    xn = np.ascontiguousarray(normalize_rows(x))
    n, d = xn.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if index == "hnsw":
        idx = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efSearch = max(64, 2 * neighbors)
    elif index == "flat":
        idx = faiss.IndexFlatIP(d)
    else:
        raise ConfigError(f"dedup option index must be 'flat', 'hnsw' or 'auto', got {index!r}")
    idx.add(xn)
    rows, cols = [], []
    # faiss returns inner products > radius; nudge down so that == threshold counts
    radius = float(threshold) - 1e-5
    for s in range(0, n, batch):
        q = xn[s:s + batch]
        if search == "range":
            if index != "flat":
                raise ConfigError("dedup: search='range' needs index='flat'")
            lims, dist, lab = idx.range_search(q, radius)
            qi = np.repeat(np.arange(len(q)), np.diff(lims.astype(np.int64))) + s
            r, c, v = qi, lab.astype(np.int64), dist
        elif search == "knn":
            kk = min(int(neighbors) + 1, n)
            dist, lab = idx.search(q, kk)
            r = np.repeat(np.arange(len(q)), kk) + s
            c, v = lab.ravel().astype(np.int64), dist.ravel()
        else:
            raise ConfigError(f"dedup option search must be 'range' or 'knn', got {search!r}")
        ok = (c >= 0) & (v >= threshold - 1e-6) & (r != c)
        rows.append(r[ok])
        cols.append(c[ok])
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    hi, lo = np.maximum(r, c), np.minimum(r, c)
    pairs = np.unique(np.stack([hi, lo], axis=1), axis=0) if len(hi) else np.zeros((0, 2), dtype=np.int64)
    return pairs[:, 0], pairs[:, 1]


def near_duplicate_mask(n: int, later: np.ndarray, earlier: np.ndarray, mode: str = "greedy",
                        candidates: np.ndarray | None = None) -> np.ndarray:
    """Keep mask from near-duplicate pairs (later > earlier).

    greedy: visit rows in order, drop a row with an earlier kept neighbour.
    cluster: keep the first row of each connected component.
    ``candidates`` (bool, default all) restricts which rows take part (others are dropped
    already and neither keep nor remove anything)."""
    keep = np.ones(n, dtype=bool) if candidates is None else np.asarray(candidates, dtype=bool).copy()
    if len(later) == 0:
        return keep
    ok = keep[later] & keep[earlier]
    later, earlier = later[ok], earlier[ok]
    if mode == "cluster":
        g = sp.coo_matrix((np.ones(len(later)), (later, earlier)), shape=(n, n))
        _, comp = sp.csgraph.connected_components(g, directed=False)
        active = np.flatnonzero(keep)
        _, first = np.unique(comp[active], return_index=True)
        out = np.zeros(n, dtype=bool)
        out[active[first]] = True
        return out
    if mode != "greedy":
        raise ConfigError(f"dedup option mode must be 'greedy' or 'cluster', got {mode!r}")
    order = np.lexsort((earlier, later))
    later, earlier = later[order], earlier[order]
    starts = np.flatnonzero(np.r_[True, later[1:] != later[:-1]])
    ends = np.r_[starts[1:], len(later)]
    for s, e in zip(starts, ends):
        if keep[earlier[s:e]].any():
            keep[later[s]] = False
    return keep


def text_lengths(pool: Pool, field: str) -> tuple[np.ndarray, np.ndarray]:
    """(words, characters) of each row's ``field``: the pool's columns for ``text``, else
    counted a batch at a time."""
    if field == "text":
        return pool.words.astype(np.int64), pool.chars.astype(np.int64)
    words = np.zeros(len(pool), dtype=np.int64)
    chars = np.zeros(len(pool), dtype=np.int64)
    start = 0
    for texts in pool.text_batches(field):
        texts = [t or "" for t in texts]
        words[start:start + len(texts)] = [len(t.split()) for t in texts]
        chars[start:start + len(texts)] = [len(t) for t in texts]
        start += len(texts)
    return words, chars


def select_from_mask(ctx: SelectionContext, keep: np.ndarray, k: int, order: str) -> tuple[np.ndarray, dict]:
    """k kept rows: a seeded random subset ("random") or the first in pool order ("first")."""
    kept = np.flatnonzero(keep)
    info: dict[str, Any] = {"kept_rows": int(len(kept)), "removed_rows": int(len(keep) - len(kept)),
                            "order": order}
    if order not in ("random", "first"):
        raise ConfigError(f"option order must be 'random' or 'first', got {order!r}")
    if len(kept) <= k:
        if len(kept) < k:
            info["short"] = f"only {len(kept)} rows are kept, fewer than the budget of {k}"
        idx = kept if order == "first" else ctx.rng.permutation(kept)
    elif order == "first":
        idx = kept[:k]
    else:
        idx = ctx.rng.choice(kept, size=k, replace=False)
    return np.asarray(idx, dtype=np.int64), info


#: the ``order`` option every filter has (see :func:`select_from_mask`)
ORDER_OPTION = Option("random", "which kept rows are returned when selecting: a seeded sample or the first",
                      Choices("random", "first"))


class FilterMethod(SelectionMethod):
    """A method whose main use is :meth:`keep_mask` (one boolean per pool row)."""

    @abc.abstractmethod
    def keep_mask(self, ctx: SelectionContext) -> np.ndarray:
        """One boolean per pool row: True = the row stays."""

    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        keep = self.keep_mask(ctx)
        idx, info = select_from_mask(ctx, keep, k, self.config["order"])
        info.update(getattr(self, "last_info", {}))
        return MethodResult(indices=idx, scores=keep.astype(np.float64), columns={}, info=info)


@register("dedup", description="drop exact (same id) and near-duplicate rows (cosine >= threshold); a filter",
          needs=("embeddings",), cost="cheap", stochastic=True, survey=dict(llms_trained=0, steps=2))
class DedupFilter(FilterMethod):
    parameters = {
        "threshold": Option(0.95, "cosine at or above which a row is a near-duplicate (null: exact duplicates only)",
                            Interval(float, -1, 1), None),
        "mode": Option("greedy", "'greedy': drop a row close to an earlier kept row; 'cluster': keep one per "
                       "connected group", Choices("greedy", "cluster")),
        "search": Option("auto", "pair search: 'range' (exact), 'knn' (neighbours only) or 'auto' (by pool size)",
                         Choices("auto", "range", "knn")),
        "neighbors": Option(10, "neighbours per row with search=knn", Interval(int, 1)),
        "index": Option("auto", "neighbour index with search=knn: auto, flat, hnsw, ...", str),
        "order": ORDER_OPTION,
    }

    def keep_mask(self, ctx: SelectionContext) -> np.ndarray:
        """True for rows that survive exact and near-duplicate removal."""
        c = self.config
        keep = exact_duplicate_mask(ctx.pool.id_list())
        info: dict[str, Any] = {"exact_duplicates": int((~keep).sum())}
        thr = c["threshold"]
        if thr is not None:
            try:
                thr = float(thr)
            except (TypeError, ValueError):
                raise ConfigError(f"dedup option threshold must be a number or null, got {thr!r}") from None
            if not -1.0 <= thr <= 1.0:
                raise ConfigError(f"dedup option threshold must be a cosine in [-1, 1], got {thr}")
            search = c["search"]
            if search not in ("auto", "range", "knn"):
                raise ConfigError(f"dedup option search must be 'auto', 'range' or 'knn', got {search!r}")
            x = ctx.embeddings("pool")
            if search == "auto":
                search = "range" if len(x) <= 200_000 else "knn"
            index = c["index"]
            if index == "auto":
                index = "hnsw" if search == "knn" and len(x) > 100_000 else "flat"
            with ctx.timed("dedup_search"):
                later, earlier = near_duplicate_pairs(x, thr, search, int(c["neighbors"]), index)
                before = int(keep.sum())
                keep = near_duplicate_mask(len(x), later, earlier, c["mode"], candidates=keep)
            info.update({"threshold": thr, "near_duplicate_pairs": int(len(later)),
                         "near_duplicates": before - int(keep.sum()), "mode": c["mode"], "search": search,
                         "index": index})
        self.last_info = info
        return keep


@register("length", description="keep rows whose length (words or characters) lies in a band; a filter",
          needs=(), cost="cheap", stochastic=True, survey=dict(llms_trained=0, steps=1))
class LengthFilter(FilterMethod):
    parameters = {
        "min_words": Option(None, "fewest whitespace-separated words kept (inclusive)", Interval(int, 0), None),
        "max_words": Option(None, "most words kept (inclusive)", Interval(int, 0), None),
        "min_chars": Option(None, "fewest characters kept (inclusive)", Interval(int, 0), None),
        "max_chars": Option(None, "most characters kept (inclusive)", Interval(int, 0), None),
        "field": Option("text", "what is measured", Choices("text", "prompt", "response")),
        "order": ORDER_OPTION,
    }

    def keep_mask(self, ctx: SelectionContext) -> np.ndarray:
        """True for rows within every given bound (inclusive)."""
        c = self.config
        if c["field"] not in ("text", "prompt", "response"):
            raise ConfigError(f"length option field must be text, prompt or response, got {c['field']!r}")
        bounds = {}
        for key in ("min_words", "max_words", "min_chars", "max_chars"):
            if c[key] is not None:
                try:
                    bounds[key] = int(c[key])
                except (TypeError, ValueError):
                    raise ConfigError(f"length option {key} must be an integer, got {c[key]!r}") from None
        if not bounds:
            raise ConfigError("length filter needs at least one of min_words, max_words, min_chars, max_chars")
        words, chars = text_lengths(ctx.pool, c["field"])
        keep = np.ones(len(words), dtype=bool)
        if "min_words" in bounds or "max_words" in bounds:
            keep &= words >= bounds.get("min_words", 0)
            keep &= words <= bounds.get("max_words", np.iinfo(np.int64).max)
        if "min_chars" in bounds or "max_chars" in bounds:
            keep &= chars >= bounds.get("min_chars", 0)
            keep &= chars <= bounds.get("max_chars", np.iinfo(np.int64).max)
        self.last_info = {"bounds": bounds, "field": c["field"], "counted_as": "whitespace-separated words / characters"}
        return keep
