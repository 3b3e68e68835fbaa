"""TSDS densities: ``rho_u = sum_v max(0, 1 - ||x_u - x_v||^2 / sigma^2)`` over the ``kde_k``
nearest rows ``v`` (``u`` itself included, so ``rho >= 1``; ``m`` exact duplicates give
``m + 1``).

The kernel is zero from distance ``sigma`` on, so only rows inside radius ``sigma`` count and
the sum is the ``kde_k`` largest kernel weights of the row: an exact *range* computation, no
k-NN search. :func:`range_density` takes the weights of a block of rows against its columns
from one float64 BLAS product (``1 - (|a|^2 + |c|^2 - 2 a.c) / sigma^2``; weights within that
product's rounding bound of 1, duplicates among them, are recomputed from the differences, so
a duplicate's weight is exactly 1) and sums each row's ``kde_k`` largest: the value depends
on the other columns scanned, or their order, only through float64 rounding (relative 1e-15).
:class:`PivotColumns` says which columns can hold a row's kernel neighbours (triangle
inequality), so a row is compared with its neighbourhood instead of every row.
:func:`kde_exact` is the plain float64 computation against all rows.
"""
from __future__ import annotations

import numpy as np

from ...neighbors import CHUNK_BYTES, block_rows

EPS64 = float(np.finfo(np.float64).eps)


def sq_norms(a: np.ndarray) -> np.ndarray:
    """Float64 squared L2 norms of the rows of ``a`` (any float dtype; float64 sums): the
    ``rn``/``cn`` that :func:`kernel_columns`, :func:`kernel_weights` and
    :func:`range_density` accept, so that norms computed once serve every block."""
    return np.einsum("ij,ij->i", a, a, dtype=np.float64)


def kernel_columns(xr: np.ndarray, xc: np.ndarray, sigma: float, kde_k: int | None = None, *,
                   rn: np.ndarray | None = None, cn: np.ndarray | None = None) -> np.ndarray:
    """Indices of the columns ``xc`` that may lie inside the kernel (distance < ``sigma``) of
    some row of ``xr`` and, with ``kde_k``, also among that row's ``kde_k`` nearest columns: a
    float32 BLAS screen, widened by its rounding bound (certified: no such column is left
    out; of columns tied at a row's ``kde_k``-th distance, any may be kept, which leaves the
    sum of the ``kde_k`` largest weights unchanged). ``rn``, ``cn``: the rows' and columns'
    squared norms (:func:`sq_norms`), when known."""
    a32, c32 = np.asarray(xr, dtype=np.float32), np.asarray(xc, dtype=np.float32)
    # float32 norms (float32 BLAS-speed sums, no casting): each within d eps of the true one;
    # given float64 norms are nearer still
    an = np.einsum("ij,ij->i", a32, a32).astype(np.float64) if rn is None else np.asarray(rn, dtype=np.float64)
    cn = np.einsum("ij,ij->i", c32, c32).astype(np.float64) if cn is None else np.asarray(cn, dtype=np.float64)
    s2 = float(sigma) ** 2
    # |fl32(a.c) - a.c| <= (d + 2) eps |a| |c|, the float32 norms and shifts below add at most
    # (d + 4) eps (|a|^2 + |c|^2) / 2; the bound allows 2 (d + 8) eps (|a|^2 + |c|^2 + s2).
    # float32 rounding of xr/xc itself is covered when they are float64
    eps = float(np.finfo(np.float32).eps)
    tol = 4.0 * (a32.shape[1] + 8) * eps * (float(an.max(initial=0)) + float(cn.max(initial=0)) + s2)
    if xr.dtype != np.float32 or xc.dtype != np.float32:  # the float32 copies moved each row by <= eps |x|
        tol += 4.0 * eps * (float(an.max(initial=0)) + float(cn.max(initial=0)))
        tol *= 2.0
    # d^2 < s2 + tol  <=>  a.c - |c|^2 / 2 > (|a|^2 - s2 - tol) / 2
    if not (np.isfinite(an).all() and np.isfinite(cn).all()):  # beyond float32's range: no screen
        return np.arange(len(xc))
    g = a32 @ c32.T
    g -= (0.5 * cn).astype(np.float32)[None, :]  # v = a.c - |c|^2 / 2: larger is nearer, |err| <= tol / 2
    if kde_k is None or kde_k >= g.shape[1]:
        g -= (0.5 * (an - s2 - tol)).astype(np.float32)[:, None]
        return np.flatnonzero((g > 0).any(axis=0))
    inside = g > (0.5 * (an - s2 - tol)).astype(np.float32)[:, None]
    # a row's true kde_k nearest have v >= (its kde_k-th largest v, as screened) - tol; rows
    # with at most kde_k columns inside the screen keep them all
    over = np.flatnonzero(np.count_nonzero(inside, axis=1) > int(kde_k))
    if len(over):
        go = g[over]
        kth = np.partition(go, go.shape[1] - int(kde_k), axis=1)[:, go.shape[1] - int(kde_k)]
        inside[over] &= go >= (kth.astype(np.float64) - tol).astype(np.float32)[:, None]
    return np.flatnonzero(inside.any(axis=0))


def kernel_weights(xr: np.ndarray, xc: np.ndarray, sigma: float, *, rn: np.ndarray | None = None,
                   cn: np.ndarray | None = None) -> np.ndarray:
    """The (len(xr), len(xc)) float64 kernel weights ``max(0, 1 - d^2 / sigma^2)`` of every
    pair (row of ``xr``, row of ``xc``), from one float64 BLAS product
    ``(2 a / s2) . c`` shifted by ``1 - |a|^2 / s2`` per row and ``-|c|^2 / s2`` per column
    (the shifts run over the (rows x columns) result, not over copies of the columns). Weights
    within that computation's rounding bound of 1 (duplicates, near-duplicates) are
    recomputed from the differences, so a duplicate's weight is exactly 1. ``rn``, ``cn``:
    the squared norms (:func:`sq_norms`), when known."""
    s2 = float(sigma) ** 2
    a, c = np.asarray(xr, dtype=np.float64), np.asarray(xc, dtype=np.float64)
    d = a.shape[1]
    an = sq_norms(a) if rn is None else np.asarray(rn, dtype=np.float64)
    cn = sq_norms(c) if cn is None else np.asarray(cn, dtype=np.float64)
    w = np.matmul(a * (2.0 / s2), c.T)
    w += (1.0 - an / s2)[:, None]
    w -= (cn / s2)[None, :]
    # |fl(w) - w| <= (d + 4) eps * (sum of the terms' magnitudes), x4 to spare
    tol = 4.0 * (d + 4) * EPS64 * (1.0 + 2.0 * (float(an.max(initial=0)) + float(cn.max(initial=0))) / s2)
    np.maximum(w, 0.0, out=w)
    r, k = np.nonzero(w > 1.0 - 2.0 * tol)
    if len(r):
        step = max(1, CHUNK_BYTES // (8 * d) // 4)
        for i in range(0, len(r), step):
            diff = a[r[i:i + step]] - c[k[i:i + step]]
            w[r[i:i + step], k[i:i + step]] = np.maximum(0.0, 1.0 - np.einsum("ij,ij->i", diff, diff) / s2)
    return w


def sum_largest(w: np.ndarray, kde_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of the (rows, cols) weights ``w >= 0``: the sum of its ``kde_k`` largest and
    its number of positive weights."""
    cnt = np.count_nonzero(w, axis=1)
    rho = w.sum(axis=1)
    over = np.flatnonzero(cnt > kde_k)
    if len(over):
        wo = w[over]
        rho[over] = np.partition(wo, wo.shape[1] - kde_k, axis=1)[:, wo.shape[1] - kde_k:].sum(axis=1)
    return rho, cnt


def range_density(xr: np.ndarray, xc: np.ndarray, sigma: float, kde_k: int, *, counts: bool = True,
                  rn: np.ndarray | None = None, cn: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Densities of the rows ``xr`` against the columns ``xc`` (which must include each row
    itself, or its duplicate, for ``rho >= 1``, and every row's kernel neighbours): float64
    sums of the ``kde_k`` largest kernel weights, and the number of columns inside the kernel.
    Per block of rows, :func:`kernel_columns` screens the columns in float32 and
    :func:`kernel_weights` weighs the rest in float64. ``counts=False``: the screen also drops
    the columns beyond each row's ``kde_k`` nearest (faster where the cap binds) and no counts
    are returned. ``rn``, ``cn``: the rows' and columns' squared norms (:func:`sq_norms`),
    when known (computed once here otherwise). Memory: blocks of about ``CHUNK_BYTES``."""
    rho = np.zeros(len(xr))
    cnt = np.zeros(len(xr), dtype=np.int64)
    rn = sq_norms(xr) if rn is None else np.asarray(rn, dtype=np.float64)
    cn = sq_norms(xc) if cn is None else np.asarray(cn, dtype=np.float64)
    step = block_rows(len(xc), 8)
    for s in range(0, len(xr), step):
        xb, bn = xr[s:s + step], rn[s:s + step]
        cols = kernel_columns(xb, xc, sigma, None if counts else kde_k, rn=bn, cn=cn)
        w = kernel_weights(xb, xc[cols], sigma, rn=bn, cn=cn[cols])
        rho[s:s + step], cnt[s:s + step] = sum_largest(w, kde_k)
    return rho, (cnt if counts else None)


def kde_exact(x: np.ndarray, sigma: float, kde_k: int, *, rows: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Densities (and within-kernel counts) of ``x[rows]`` (default all rows) against all of
    ``x``: every pair's kernel weight from float64 BLAS (no screening, no pruning; the plain
    computation, for checks)."""
    x64 = np.asarray(x, dtype=np.float64)
    xn = sq_norms(x64)
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
    """Which columns can hold a row's kernel neighbours: cells of ``x`` around ``n_pivots``
    centres (a few seeded k-means steps) and two triangle-inequality bounds.

    The centres come from ``iterations`` Lloyd steps on ``sample`` seeded rows; every row of
    ``x`` then joins the cell of its nearest centre. For a block of rows ``u`` (one
    cell ``A``, sorted by distance to its centre) a column ``v`` of cell ``C`` is kept only if

    * *hyperplane*: ``|t(u) - t(v)| <= sigma |c_A - c_C|`` for some ``u``, where
      ``t(x) = x.c_A - x.c_C`` (Cauchy-Schwarz: ``|t(u) - t(v)| <= ||u - v|| |c_A - c_C|``), and
    * *annulus*: ``|D(u, c_C) - D(v, c_C)| <= sigma`` for some ``u``,

    both widened by the rounding bound of the float32 products ``x.c`` they come from. Exact:
    no column inside the kernel is left out. ``norms``: :func:`sq_norms` of ``x``, when known
    (used for float32 ``x``). Memory: ``len(x) * n_pivots`` float32 products ``g`` (in the
    rows' order) and, per row, its cell, distance to its centre and norm in *sorted* positions
    (by cell, then distance: ``order``/``pos`` map between the two), plus two (P, P) float64
    tables of the cells' hyperplane ranges (:meth:`cell_ranges`).
    """

    def __init__(self, x: np.ndarray, sigma: float, *, n_pivots: int = 256, seed: int = 0,
                 block: int = 256, iterations: int = 3, sample: int = 16384,
                 norms: np.ndarray | None = None) -> None:
        rng = np.random.default_rng(seed)
        n, d = x.shape
        self.sigma, self.block = float(sigma), int(block)
        xs = np.asarray(x, dtype=np.float32)
        self.n = n
        # the bounds need the norms of the float32 rows: given ones serve for float32 input
        xn = np.asarray(norms, dtype=np.float64) if norms is not None and xs is x else sq_norms(xs)
        self.trivial = not np.isfinite(xn).all()  # beyond float32's range: no pruning
        if self.trivial:
            return
        sample = xs[np.sort(rng.choice(n, size=min(n, int(sample)), replace=False))]
        centres = np.asarray(sample[np.sort(rng.choice(len(sample), size=min(int(n_pivots), n), replace=False))],
                             dtype=np.float64)
        for it in range(int(iterations) + 1):  # Lloyd steps on a sample, then every row assigned
            last = it == int(iterations)
            pts = xs if last else sample
            c32 = centres.astype(np.float32)
            self.cn = sq_norms(c32)
            g = self._products(pts, c32)
            cell = self._nearest(g, self.cn)
            if last:
                break
            # each used cell's centre moves to its members' mean (float32 sums of sorted rows,
            # as a float32 product would give: the centres only steer the pruning)
            size = np.bincount(cell, minlength=len(centres))
            used = np.flatnonzero(size)
            starts = (np.cumsum(size) - size)[used]
            sums = np.add.reduceat(pts[np.argsort(cell, kind="stable")], starts, axis=0)
            centres[used] = np.asarray(sums, dtype=np.float64) / size[used, None]
        # the last assignment was made against c32: the products g are those of c32
        self.c32 = c32
        p = len(centres)
        if x.dtype != np.float32:  # bounds hold for the float32 copies, each within eps |x| of its row
            self.sigma += 2.0 * float(np.finfo(np.float32).eps) * float(np.sqrt(xn.max(initial=0)))
        # |fl32(x.c) - x.c| <= (d + 2) eps |x| |c| (x4 to spare); distances from them carry sqrt of twice that
        self.err = 4.0 * (d + 2) * float(np.finfo(np.float32).eps) * float(np.sqrt(xn.max(initial=0) * self.cn.max(initial=0)))
        rows = np.arange(n)
        gown = g[cell, rows]
        dist = np.sqrt(np.maximum(xn + self.cn[cell] - 2.0 * gown.astype(np.float64), 0.0))  # D(x, own centre)
        # from here on the rows live in *sorted* positions: by cell, then by distance to its
        # centre (a cell's members are one contiguous run ``starts[C]:starts[C + 1]``)
        self.order = np.lexsort((dist, cell))  # sorted position -> row of x
        self.pos = np.empty(n, dtype=np.int64)
        self.pos[self.order] = rows  # row of x -> sorted position
        self.cell, self.dist, self.xn = cell[self.order], dist[self.order], xn[self.order]
        self.gown = gown[self.order].astype(np.float64)
        self.starts = np.searchsorted(self.cell, np.arange(p + 1))
        c64 = self.c32.astype(np.float64)
        self.gaps = np.stack([np.sqrt(sq_norms(c64 - c)) for c in c64])  # |c_A - c_C|, from the differences
        self.used = np.flatnonzero(self.starts[1:] > self.starts[:-1])
        cuts = self.starts[self.used]
        self.rmin = np.full(p, np.inf)
        self.rmax = np.full(p, -np.inf)
        self.rmin[self.used] = self.dist[cuts]  # sorted by distance within each cell
        self.rmax[self.used] = self.dist[self.starts[self.used + 1] - 1]
        self.g = g  # (centres, rows of x): not reordered (no second copy)
        # per (A, C) bounds on t_A(v) = v.c_A - v.c_C over C's members v, filled for a cell A
        # when a block of A first asks (:meth:`cell_ranges`)
        self.tmin = np.full((p, p), -np.inf)
        self.tmax = np.full((p, p), np.inf)
        self.ranged = np.zeros(p, dtype=bool)
        self._own32 = self.gown.astype(np.float32)
        # float32 differences are within |a - b| eps / 2 of the float64 ones, |a|, |b| <= max |x| |c|
        self._tol = 2.0 * float(np.finfo(np.float32).eps) * float(np.sqrt(xn.max(initial=0) * self.cn.max(initial=0))) + 1e-30

    def cell_ranges(self, a: int) -> tuple[np.ndarray, np.ndarray]:
        """(P,) least and greatest ``t_A(v) = v.c_A - v.c_C`` (``A = a``) over the members
        ``v`` of each cell ``C``, as the column test computes them (float64 differences of the
        float32 products; here float32 differences widened by their rounding bound; +-inf for
        empty cells): a cell whose range misses a block's hyperplane interval holds no
        candidate column. Computed once per cell ``a``."""
        if not self.ranged[a]:
            tv = self.g[a, self.order]  # in sorted positions: each cell's members contiguous
            tv -= self._own32
            cuts = self.starts[self.used]
            self.tmin[a] = np.inf
            self.tmax[a] = -np.inf
            self.tmin[a, self.used] = np.minimum.reduceat(tv, cuts) - self._tol
            self.tmax[a, self.used] = np.maximum.reduceat(tv, cuts) + self._tol
            self.ranged[a] = True
        return self.tmin[a], self.tmax[a]

    @staticmethod
    def _products(xs: np.ndarray, c32: np.ndarray) -> np.ndarray:
        """``c32 @ xs.T`` (float32, centres x rows: a centre's products with every row lie
        together), one BLAS call straight into its output (no scratch)."""
        g = np.empty((len(c32), len(xs)), dtype=np.float32)
        np.matmul(c32, xs.T, out=g)
        return g

    @staticmethod
    def _nearest(g: np.ndarray, cn: np.ndarray, cols: int = 16384) -> np.ndarray:
        """Per row of ``x`` (column of the products ``g``), the centre maximising
        ``g - |c|^2 / 2`` (the nearest; ties to the lower centre, as ``argmax``): a running
        maximum down the centres, over ``cols`` columns at a time (contiguous rows of ``g``;
        an ``argmax`` along axis 0 would first copy each block transposed, 5x slower here)."""
        half = (0.5 * cn).astype(np.float32)
        out = np.empty(g.shape[1], dtype=np.int64)
        for s in range(0, g.shape[1], cols):
            blk = g[:, s:s + cols]
            best = blk[0] - half[0]
            arg = np.zeros(blk.shape[1], dtype=np.int64)
            v = np.empty_like(best)
            more = np.empty(blk.shape[1], dtype=bool)
            for i in range(1, len(blk)):
                np.subtract(blk[i], half[i], out=v)
                np.greater(v, best, out=more)
                np.maximum(best, v, out=best)
                np.copyto(arg, i, where=more)
            out[s:s + cols] = arg
        return out

    def blocks(self, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(rows block, its candidate columns)`` covering ``rows`` (positions in ``x``;
        the columns sorted): the rows of one cell per block (mixing cells widens the bounds
        far more than it saves)."""
        rows = np.asarray(rows)
        if self.trivial:
            return [(rows[a:a + self.block], np.arange(self.n)) for a in range(0, len(rows), self.block)]
        ps = np.sort(self.pos[rows])  # by cell, then by distance to its centre
        cuts = np.flatnonzero(np.diff(self.cell[ps])) + 1
        out = []
        span_d = np.sqrt(2.0 * self.err) * 2.0 + 1e-9
        for part in np.split(ps, cuts):
            A = int(self.cell[part[0]])
            gap = self.gaps[A]  # |c_A - c_C|
            tmin, tmax = self.cell_ranges(A)
            reach_t = self.sigma * gap * (1.0 + 1e-12) + 4.0 * self.err
            for a in range(0, len(part), self.block):
                blk = part[a:a + self.block]
                blk_rows = self.order[blk]  # the block's rows of x
                gb = self.g[:, blk_rows].T.astype(np.float64)  # (B, P)
                t = gb[:, [A]] - gb  # t(u) for every cell C
                t_lo, t_hi = t.min(axis=0) - reach_t, t.max(axis=0) + reach_t
                du = np.sqrt(np.maximum(self.xn[blk][:, None] + self.cn[None, :] - 2.0 * gb, 0.0))
                d_lo, d_hi = du.min(axis=0) - self.sigma - span_d, du.max(axis=0) + self.sigma + span_d
                # cells whose members' centre distances overlap the annulus and whose
                # hyperplane range meets the interval, then their members
                cand = np.flatnonzero((d_lo <= self.rmax) & (d_hi >= self.rmin)
                                      & (tmax >= t_lo) & (tmin <= t_hi))
                i = self.starts[cand]
                span = self.starts[cand + 1] - i
                idx = np.repeat(i - np.concatenate([[0], np.cumsum(span)[:-1]]), span) + np.arange(span.sum())
                c = self.cell[idx]
                idx_rows = self.order[idx]
                tv = self.g[A, idx_rows].astype(np.float64) - self.gown[idx]
                dv = self.dist[idx]
                keep = (tv >= t_lo[c]) & (tv <= t_hi[c]) & (dv >= d_lo[c]) & (dv <= d_hi[c])
                out.append((blk_rows, np.sort(idx_rows[keep])))
        return out
