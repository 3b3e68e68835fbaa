"""Float64 distances of the (query, candidate) pairs of the prefetched lists, computing only
the pairs that are needed.

The lists of ``M`` queries over ``R`` gathered rows hold far fewer pairs than ``M * R`` when
queries differ (each query's rows lie near it). :func:`pair_distances` takes the queries in
groups along a nearest-neighbour chain (similar queries share most of their rows) and
multiplies each group's distinct rows with its queries by float64 BLAS, in small blocks:
the same formula ``sqrt(max(0, |q|^2 + |x|^2 - 2 q.x))`` as a dense product, a fraction of
its work, no large scratch. Rows with identical bytes are computed as one (their first
copy), so exact duplicates get bit-identical distances whatever group or product shape
they land in.
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


def pair_distances(queries: np.ndarray, rows: np.ndarray, pos: np.ndarray, *, group: int = 32,
                   block: int = 4096) -> np.ndarray:
    """Float64 L2 distances ``||queries[i] - rows[pos[i, j]]||`` (inf where ``pos < 0``).

    Queries are taken ``group`` at a time along a nearest-neighbour chain (similar queries
    share most of their rows); each group's distinct rows are multiplied with the group's
    queries by float64 BLAS, ``block`` rows at a time (at least two queries per product, so
    it is always a matrix product), and each pair reads its entry. Work about
    ``sum(group rows) * group * d``; scratch about ``block * (d + group) * 8`` bytes."""
    q = np.asarray(queries, dtype=np.float64)
    m, k = pos.shape
    out = np.full(pos.shape, np.inf)
    if m == 0 or k == 0 or len(rows) == 0 or not (pos >= 0).any():
        return out
    qn = np.einsum("ij,ij->i", q, q)
    canon = first_copies(rows)
    cp = np.where(pos >= 0, canon[np.maximum(pos, 0)], -1)  # pairs of copies read their first copy
    chain = nearest_chain(q)
    table = np.empty(len(rows), dtype=np.int64)
    for g in range(0, m, int(group)):
        qs = chain[g:g + int(group)]
        cols = qs if (len(qs) > 1 or m == 1) else np.append(qs, chain[0] if qs[0] != chain[0] else chain[1])
        cg = cp[qs]
        ok = cg >= 0
        mask = np.zeros(len(rows), dtype=bool)
        mask[cg[ok]] = True
        u = np.flatnonzero(mask)
        table[u] = np.arange(len(u))
        gm = np.empty((len(u), len(cols)))
        xn = np.empty(len(u))
        qt = q[cols].T
        for a in range(0, len(u), int(block)):
            xb = np.asarray(rows[u[a:a + int(block)]], dtype=np.float64)
            np.matmul(xb, qt, out=gm[a:a + len(xb)])
            xn[a:a + len(xb)] = np.einsum("ij,ij->i", xb, xb)
        loc = table[np.where(ok, cg, u[0])]
        d2 = xn[loc] + qn[qs][:, None] - 2.0 * gm[loc, np.arange(len(qs))[:, None]]
        out[qs] = np.where(ok, np.sqrt(np.maximum(d2, 0.0)), np.inf)
    return out
