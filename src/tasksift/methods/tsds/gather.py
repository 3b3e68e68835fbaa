"""Float64 distances of the (query, candidate) pairs of the prefetched lists, computing only
the pairs that are needed.

The lists of ``M`` queries over ``R`` gathered rows hold far fewer pairs than ``M * R`` when
queries differ (each query's rows lie near it). :func:`pair_distances` orders the queries so
that similar ones are adjacent (a nearest-neighbour chain), sorts the rows by the first query
(in that order) that holds them, and takes one float64 BLAS product per small block of rows
against only the queries holding a pair in that block: the same formula
``sqrt(max(0, |q|^2 + |x|^2 - 2 q.x))`` as a dense product, a fraction of its work, small
scratch blocks (no large fresh allocations). Rows with identical bytes are computed as one
(their first copy), so exact duplicates get bit-identical distances whatever block or
product shape they land in.
"""
from __future__ import annotations

import numpy as np

#: the nearest-neighbour chain is built for up to this many queries (else the given order)
CHAIN_MAX = 4096


def nearest_chain(q: np.ndarray) -> np.ndarray:
    """An order of the rows of ``q`` in which each next one is the nearest not yet taken to
    the current one (starting at row 0); the given order when there are more than
    :data:`CHAIN_MAX` rows."""
    m = len(q)
    if m <= 2 or m > CHAIN_MAX:
        return np.arange(m)
    q32 = np.asarray(q, dtype=np.float32)
    qn = np.einsum("ij,ij->i", q32, q32)
    d2 = qn[:, None] + qn[None, :] - 2.0 * (q32 @ q32.T)
    taken = np.zeros(m, dtype=bool)
    order = np.empty(m, dtype=np.int64)
    cur = 0
    for t in range(m):
        order[t] = cur
        taken[cur] = True
        if t + 1 < m:
            row = np.where(taken, np.inf, d2[cur])
            cur = int(np.argmin(row))
    return order


def first_copies(rows: np.ndarray, *, probes: int = 32) -> np.ndarray:
    """For each row of the 2-d array ``rows``, the index of the first row with identical
    bytes (itself when it has no earlier copy): rows grouped by a 64-bit multiply-add hash of
    ``probes`` of their 32-bit words (integer arithmetic: equal bytes always hash alike), the
    rows of a group confirmed byte by byte against its first (a group that fails is settled by
    sorting its rows' bytes)."""
    r = np.ascontiguousarray(rows)
    n = len(r)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    words = r.reshape(n, -1).view(np.uint8)
    if words.shape[1] % 4:
        words = np.concatenate([words, np.zeros((n, 4 - words.shape[1] % 4), np.uint8)], axis=1)
    words = words.view(np.uint32)
    w = words.shape[1]
    cols = np.unique(np.linspace(0, w - 1, min(w, int(probes))).astype(np.int64))
    mult = np.random.default_rng(0x5eed).integers(1, 2**63, len(cols), dtype=np.uint64) | np.uint64(1)
    h = (words[:, cols].astype(np.uint64) * mult).sum(axis=1, dtype=np.uint64)
    order = np.argsort(h, kind="stable")  # equal hashes: by row index
    hs = h[order]
    starts = np.flatnonzero(np.concatenate([[True], hs[1:] != hs[:-1]]))
    first = np.empty(n, dtype=np.int64)
    first[order] = order[np.repeat(starts, np.diff(np.append(starts, n)))]
    dup = np.flatnonzero(first != np.arange(n))
    bad = dup[~(words[dup] == words[first[dup]]).all(axis=1)]
    if len(bad):  # same hash, different bytes: settle those groups exactly
        grp = np.flatnonzero(np.isin(first, first[bad]))
        keys = np.ascontiguousarray(words[grp]).view(np.dtype((np.void, 4 * w))).ravel()
        _, fi, inv = np.unique(keys, return_index=True, return_inverse=True)
        first[grp] = grp[fi[inv.ravel()]]
    return first


def pair_distances(queries: np.ndarray, rows: np.ndarray, pos: np.ndarray, *, block: int = 1024
                   ) -> np.ndarray:
    """Float64 L2 distances ``||queries[i] - rows[pos[i, j]]||`` (inf where ``pos < 0``).

    Per block of ``block`` rows (ordered as the module docstring says) one float64 product
    with the queries holding pairs in the block (at least two, so the product is always a
    matrix product); scratch memory about ``block * (d + M) * 8`` bytes."""
    q = np.asarray(queries, dtype=np.float64)
    m, k = pos.shape
    out = np.full(pos.shape, np.inf)
    if m == 0 or k == 0 or len(rows) == 0:
        return out
    qn = np.einsum("ij,ij->i", q, q)
    flat = pos.ravel()
    idx = np.flatnonzero(flat >= 0)  # pair slots in ``out``
    if not len(idx):
        return out
    canon = first_copies(rows)
    prow = canon[flat[idx]]  # each pair's (first-copy) row
    pq = idx // k  # each pair's query
    rank = np.empty(m, dtype=np.int64)
    rank[nearest_chain(q)] = np.arange(m)
    key = np.full(len(rows), m, dtype=np.int64)
    np.minimum.at(key, prow, rank[pq])
    used = np.flatnonzero(key < m)
    used = used[np.argsort(key[used], kind="stable")]  # rows in chain order of their first query
    slot = np.empty(len(rows), dtype=np.int64)
    slot[used] = np.arange(len(used))
    ps = slot[prow]
    order = np.argsort(ps, kind="stable")
    ps, pq, idx = ps[order], pq[order], idx[order]
    cuts = np.searchsorted(ps, np.arange(0, len(used) + block, block))
    mark = np.zeros(m, dtype=bool)
    col = np.empty(m, dtype=np.int64)
    for b in range(len(cuts) - 1):
        lo, hi = int(cuts[b]), int(cuts[b + 1])
        if hi == lo:
            continue
        r = ps[lo:hi] - b * block
        c = pq[lo:hi]
        mark[c] = True
        if m > 1 and mark.sum() == 1:
            mark[(c[0] + 1) % m] = True
        qs = np.flatnonzero(mark)
        mark[qs] = False
        col[qs] = np.arange(len(qs))
        xb = np.asarray(rows[used[b * block:(b + 1) * block]], dtype=np.float64)
        g = xb @ q[qs].T
        xn = np.einsum("ij,ij->i", xb, xb)
        d2 = xn[r] + qn[c] - 2.0 * g[r, col[c]]
        out.ravel()[idx[lo:hi]] = np.sqrt(np.maximum(d2, 0.0))
    return out
