"""TSDS densities: ``rho_u = sum_v max(0, 1 - ||x_u - x_v||^2 / sigma^2)`` over the ``kde_k``
nearest rows ``v`` (``u`` itself included, so ``rho >= 1``; ``m`` exact duplicates give
``m + 1``).

The kernel is zero from distance ``sigma`` on, so only rows inside radius ``sigma`` count and
the sum is the ``kde_k`` largest kernel weights of the row: an exact *range* computation, no
k-NN search. :func:`range_density` finds the pairs inside the radius by blocked BLAS with a
threshold (float32 when the rows are float32, with a rounding margin), recomputes their
distances in float64 from the differences (so a duplicate's weight is exactly 1) and sums each
row's weights largest first: the value does not depend on which other columns were scanned
or in which order. :func:`kde_exact` is the plain float64 computation against all rows.
"""
from __future__ import annotations

import numpy as np

from ...neighbors import CHUNK_BYTES, block_rows


def _sq_norms(a: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, a, dtype=np.float64)


def kernel_pairs(xr: np.ndarray, xc: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (row of ``xr``, row of ``xc``) at L2 distance below ``sigma``, with their
    float64 kernel weights ``1 - d^2 / sigma^2`` (> 0). Pairs are screened by one BLAS block
    in the inputs' precision with a margin covering its rounding, then recomputed in float64."""
    dt = np.float64 if (xr.dtype == np.float64 and xc.dtype == np.float64) else np.float32
    a, c = np.asarray(xr, dtype=dt), np.asarray(xc, dtype=dt)
    an, cn = _sq_norms(a), _sq_norms(c)
    s2 = float(sigma) ** 2
    # |fl(a.c) - a.c| <= (d + 2) eps |a||c|: screen with that margin, decide in float64 below
    eps = float(np.finfo(dt).eps)
    tol = 4.0 * (a.shape[1] + 2) * eps * (float(an.max(initial=0)) + float(cn.max(initial=0)))
    g = a @ c.T
    g *= -2.0
    g += an.astype(dt)[:, None]
    g += cn.astype(dt)[None, :]
    r, k = np.nonzero(g < s2 + tol)
    del g
    w = np.empty(len(r))
    step = max(1, CHUNK_BYTES // (8 * a.shape[1]) // 4)
    for s in range(0, len(r), step):
        diff = np.asarray(xr[r[s:s + step]], dtype=np.float64) - np.asarray(xc[k[s:s + step]], dtype=np.float64)
        w[s:s + step] = 1.0 - np.einsum("ij,ij->i", diff, diff) / s2
    keep = w > 0
    return r[keep], k[keep], w[keep]


def sum_largest(rows: np.ndarray, weights: np.ndarray, n_rows: int, kde_k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the sum of its ``kde_k`` largest weights, added largest first (so the value
    depends only on the multiset of weights), and its number of positive weights."""
    order = np.lexsort((-weights, rows))
    rows, weights = rows[order], weights[order]
    count = np.bincount(rows, minlength=n_rows)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    rank = np.arange(len(rows)) - first[rows]
    top = rank < kde_k
    return np.bincount(rows[top], weights=weights[top], minlength=n_rows), count


def range_density(xr: np.ndarray, xc: np.ndarray, sigma: float, kde_k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Densities of the rows ``xr`` against the columns ``xc`` (which must include each row
    itself, or its duplicate, for ``rho >= 1``): float64 sums of the ``kde_k`` largest kernel
    weights, and the number of columns inside the kernel. Memory: blocks of about
    ``CHUNK_BYTES`` of distances."""
    rho = np.zeros(len(xr))
    cnt = np.zeros(len(xr), dtype=np.int64)
    step = block_rows(len(xc), 4)
    for s in range(0, len(xr), step):
        r, _, w = kernel_pairs(xr[s:s + step], xc, sigma)
        rho[s:s + step], cnt[s:s + step] = sum_largest(r, w, min(step, len(xr) - s), kde_k)
    return rho, cnt


def kde_exact(x: np.ndarray, sigma: float, kde_k: int, *, rows: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Densities (and within-kernel counts) of ``x[rows]`` (default all rows) against all of
    ``x``: every pair's kernel weight from float64 BLAS (no screening, no pruning; the plain
    computation, for checks)."""
    x64 = np.asarray(x, dtype=np.float64)
    xn = _sq_norms(x64)
    rows = np.arange(len(x64)) if rows is None else np.asarray(rows)
    s2 = float(sigma) ** 2
    rho = np.empty(len(rows))
    cnt = np.empty(len(rows), dtype=np.int64)
    step = block_rows(len(x64), 8)
    for s in range(0, len(rows), step):
        r = rows[s:s + step]
        d2 = xn[r][:, None] + xn[None, :] - 2.0 * (x64[r] @ x64.T)
        w = np.maximum(0.0, 1.0 - np.maximum(d2, 0.0) / s2)
        cnt[s:s + len(r)] = np.count_nonzero(w, axis=1)
        k = min(kde_k, w.shape[1])
        w = -np.sort(-np.partition(w, w.shape[1] - k, axis=1)[:, w.shape[1] - k:], axis=1)
        rho[s:s + len(r)] = w.sum(axis=1)
    return rho, cnt


class PivotColumns:
    """Which columns can hold a row's kernel neighbours, by the triangle inequality
    ``||u - v|| >= |D(u, p) - D(v, p)|`` around pivot rows ``p``.

    ``n_pivots`` seeded random rows of ``x`` serve as pivots; each row is assigned its nearest
    pivot, and a block of rows with pivot distances in ``[lo, hi]`` needs only the columns
    whose distance to that pivot lies in ``[lo - sigma, hi + sigma]`` (widened by the
    rounding bound of the float32 distances): one contiguous range of the columns sorted by
    pivot distance. Exact: no column inside the kernel is left out.
    """

    def __init__(self, x: np.ndarray, sigma: float, *, n_pivots: int = 512, seed: int = 0,
                 block: int = 512) -> None:
        rng = np.random.default_rng(seed)
        self.pivots = np.sort(rng.choice(len(x), size=min(n_pivots, len(x)), replace=False))
        dt = np.float64 if x.dtype == np.float64 else np.float32
        xs = np.asarray(x, dtype=dt)
        xn = _sq_norms(xs)
        pn = xn[self.pivots]
        d2 = np.empty((len(x), len(self.pivots)))
        step = block_rows(len(self.pivots), 8)
        for s in range(0, len(x), step):
            d2[s:s + step] = xn[s:s + step, None] + pn[None, :] - 2.0 * (xs[s:s + step] @ xs[self.pivots].T)
        self.dist = np.sqrt(np.maximum(d2, 0.0))
        tol = 4.0 * (x.shape[1] + 2) * float(np.finfo(dt).eps) * 2.0 * float(xn.max(initial=0))
        self.reach = float(sigma) + 2.0 * np.sqrt(tol) + 1e-9  # |D32 - D| <= sqrt(tol) per distance
        self.block = int(block)
        self._sorted: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _by_pivot(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        if p not in self._sorted:
            order = np.argsort(self.dist[:, p], kind="stable")
            self._sorted[p] = (order, self.dist[order, p])
        return self._sorted[p]

    def blocks(self, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(rows block, its candidate columns)`` covering ``rows`` (positions in ``x``)."""
        near = np.argmin(self.dist[rows], axis=1)
        out = []
        for p in np.unique(near):
            mine = rows[near == p]
            mine = mine[np.argsort(self.dist[mine, p], kind="stable")]
            order, sd = self._by_pivot(int(p))
            for a in range(0, len(mine), self.block):
                blk = mine[a:a + self.block]
                lo, hi = self.dist[blk[0], p] - self.reach, self.dist[blk[-1], p] + self.reach
                i, j = np.searchsorted(sd, [lo, hi], side="left")[0], np.searchsorted(sd, hi, side="right")
                out.append((blk, np.sort(order[i:j])))
        return out
