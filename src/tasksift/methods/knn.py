"""``knn``: for each target example its nearest pool rows by cosine, round-robin.

Round r takes, for each target example in turn, its r-th nearest pool row that is not
taken yet... precisely: targets are visited in order; each takes its nearest neighbour not
already selected; rounds repeat until the budget is filled. The score of a pool row is its
highest cosine similarity to any target example.
"""
from __future__ import annotations

import numpy as np

from .base import MethodResult, SelectionContext, SelectionMethod
from .registry import register


def cosine_neighbours(query: np.ndarray, cands: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``kk`` cosine neighbours of each query among candidates (faiss inner
    product on L2-normalised copies). Returns (similarities, indices), each (M, kk)."""
    import faiss

    q = np.ascontiguousarray(query, dtype=np.float32).copy()
    x = np.ascontiguousarray(cands, dtype=np.float32).copy()
    faiss.normalize_L2(q)
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(q, min(kk, x.shape[0]))


def max_cosine(query: np.ndarray, cands: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """For each candidate, its highest cosine similarity to any query (chunked, float64)."""
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(cands))
    for s in range(0, len(cands), chunk):
        x = cands[s:s + chunk].astype(np.float64)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        out[s:s + chunk] = (x @ q.T.astype(np.float64)).max(axis=1)
    return out


def round_robin(neigh: np.ndarray, k: int) -> list[int]:
    """Visit targets in order, each taking its best not-yet-taken neighbour, until k rows.
    ``neigh`` is (M, kk) neighbour ids best first (-1 = none). May return fewer than k if
    the lists run out."""
    taken: set[int] = set()
    order: list[int] = []
    ptr = np.zeros(neigh.shape[0], dtype=np.int64)
    while len(order) < k:
        progressed = False
        for i in range(neigh.shape[0]):
            while ptr[i] < neigh.shape[1] and (neigh[i, ptr[i]] < 0 or int(neigh[i, ptr[i]]) in taken):
                ptr[i] += 1
            if ptr[i] < neigh.shape[1]:
                j = int(neigh[i, ptr[i]])
                taken.add(j)
                order.append(j)
                ptr[i] += 1
                progressed = True
                if len(order) == k:
                    break
        if not progressed:
            break
    return order


@register("knn", description="nearest pool rows to each target example by cosine, round-robin",
          needs=("embeddings",), cost="cheap", survey=dict(llms_trained=0, steps=3))
class KNNSelection(SelectionMethod):
    parameters: dict = {}

    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        x = ctx.embeddings("pool")
        q = ctx.embeddings("target")
        n, m = len(x), len(q)
        with ctx.timed("knn_search"):
            kk = min(n, -(-k // m) + 16)
            while True:
                _, neigh = cosine_neighbours(q, x, kk)
                order = round_robin(neigh, k)
                if len(order) == k or kk >= n:
                    break
                kk = min(n, kk * 2)
            scores = max_cosine(q, x)
        return MethodResult(indices=np.asarray(order, dtype=np.int64), scores=scores,
                            columns={"knn_max_cosine": scores})
