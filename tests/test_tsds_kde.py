"""The TSDS range KDE pieces (float32 column screen, float64 weights, pruning cells) against
the kernel sum straight from the definition, on instances with ties and duplicates."""
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from tasksift.methods.tsds.kde import PivotColumns, kernel_columns, kernel_weights, range_density

SIGMA = 0.75


def exact_weights(a: np.ndarray, b: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    d2 = cdist(a.astype(np.float64), b.astype(np.float64), "sqeuclidean")
    return np.maximum(0.0, 1.0 - d2 / sigma ** 2)


def tied_clusters(rng, n=600, d=12, dtype=np.float32):
    """Clustered points snapped to a coarse grid (many tied distances, some pairs exactly
    sigma apart), a quarter of them exact duplicates of others."""
    centres = rng.standard_normal((6, d)) * 2.0
    x = centres[rng.integers(0, 6, n)] + rng.standard_normal((n, d)) * 0.25
    x = np.round(x / 0.375) * 0.375  # grid step sigma / 2: distances of exactly sigma occur
    x[rng.integers(0, n, n // 4)] = x[rng.integers(0, n, n // 4)]
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_columns_never_drop_a_column_inside_the_kernel(dtype):
    rng = np.random.default_rng(0)
    x = tied_clusters(rng, dtype=dtype)
    w = exact_weights(x[:80], x)
    d2 = cdist(x[:80].astype(np.float64), x.astype(np.float64), "sqeuclidean")
    assert (np.abs(d2 - SIGMA ** 2) < 1e-12).any()  # the instance has pairs on the kernel's edge
    cols = kernel_columns(x[:80], x, SIGMA)
    inside = np.flatnonzero((w > 0).any(axis=0))
    assert np.isin(inside, cols).all()
    assert len(cols) < len(x)  # it does screen


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_weights_match_the_definition_and_duplicates_weigh_exactly_one(dtype):
    rng = np.random.default_rng(1)
    x = tied_clusters(rng, n=300, dtype=dtype)
    x[5] = x[3]
    w = kernel_weights(x[:40], x, SIGMA)
    np.testing.assert_allclose(w, exact_weights(x[:40], x), rtol=0, atol=1e-12)
    same = (x[:40, None, :] == x[None, :, :]).all(axis=2)
    assert (w[same] == 1.0).all() and same.sum() > 40


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kde_k", [1, 5, 60, 1000])
def test_pruned_blocks_give_the_exact_kernel_sum(dtype, kde_k):
    rng = np.random.default_rng(kde_k)
    x = tied_clusters(rng, dtype=dtype)
    w = exact_weights(x, x)
    want = (-np.sort(-w, axis=1))[:, :kde_k].sum(axis=1)
    piv = PivotColumns(x, SIGMA, n_pivots=24, seed=3, block=50)
    rows = np.sort(rng.choice(len(x), 250, replace=False))
    got = np.full(len(x), np.nan)
    seen = []
    for blk, cols in piv.blocks(rows):
        seen += blk.tolist()
        got[blk], _ = range_density(x[blk], x[cols], SIGMA, kde_k)
    assert sorted(seen) == rows.tolist()
    np.testing.assert_allclose(got[rows], want[rows], rtol=1e-12, atol=1e-12)
    assert (got[rows] >= 1).all()
    assert sum(len(b) * len(c) for b, c in piv.blocks(rows)) < len(rows) * len(x)  # it does prune


def test_rows_beyond_float32_range_are_not_screened_and_stay_exact():
    x = np.array([[0.0, 0.0], [0.5, 0.0], [1e39, 0.0], [1e39, 0.0]])
    assert kernel_columns(x, x, SIGMA).tolist() == [0, 1, 2, 3]
    piv = PivotColumns(x, SIGMA, n_pivots=2)
    (blk, cols), = piv.blocks(np.arange(4))
    assert cols.tolist() == [0, 1, 2, 3]
    rho, cnt = range_density(x, x, SIGMA, 10)
    np.testing.assert_allclose(rho[:2], [1 + (1 - 0.25 / SIGMA ** 2)] * 2, rtol=1e-14)
    assert cnt.tolist()[:2] == [2, 2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kde_k", [1, 2, 7, 40])
def test_screen_by_the_kde_k_nearest_keeps_the_exact_sum(dtype, kde_k):
    """counts=False also screens out the columns beyond each row's kde_k nearest; with many
    tied distances at the kde_k-th, the sum must not change."""
    rng = np.random.default_rng(10 + kde_k)
    x = tied_clusters(rng, n=400, dtype=dtype)
    w = exact_weights(x, x)
    want = (-np.sort(-w, axis=1))[:, :kde_k].sum(axis=1)
    got, cnt = range_density(x, x, SIGMA, kde_k, counts=False)
    assert cnt is None
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    full, _ = range_density(x, x, SIGMA, kde_k)
    np.testing.assert_allclose(got, full, rtol=1e-12, atol=1e-12)
    fewer = len(kernel_columns(x[:30], x, SIGMA, kde_k)) - len(kernel_columns(x[:30], x, SIGMA))
    assert fewer < 0 if kde_k == 1 else fewer <= 0  # it screens where the cap binds


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cell_ranges_hold_every_member_and_prune_nothing_the_column_test_keeps(dtype):
    """The per-(A, C) ranges of t_A(v) = v.c_A - v.c_C bound every member of C as the column
    test computes it, and pruning cells by them leaves the blocks' columns unchanged."""
    rng = np.random.default_rng(21)
    x = tied_clusters(rng, n=900, d=16, dtype=dtype)
    piv = PivotColumns(x, SIGMA, n_pivots=20, seed=2, block=40)
    tv = piv.g[:, piv.order].astype(np.float64) - piv.gown[None, :]  # (A, sorted position)
    for a in range(len(piv.c32)):
        tmin, tmax = piv.cell_ranges(a)
        for c in piv.used:
            seg = tv[a, piv.starts[c]:piv.starts[c + 1]]
            assert tmin[c] <= seg.min() and seg.max() <= tmax[c]
    rows = np.sort(rng.choice(len(x), 300, replace=False))
    pruned = piv.blocks(rows)
    piv.tmin[:], piv.tmax[:] = -np.inf, np.inf  # the column test alone (every cell's ranges are in)
    plain = piv.blocks(rows)
    assert len(pruned) == len(plain)
    for (b1, c1), (b2, c2) in zip(pruned, plain):
        assert b1.tolist() == b2.tolist() and c1.tolist() == c2.tolist()
    assert sorted(np.concatenate([b for b, _ in pruned]).tolist()) == rows.tolist()
    assert (np.sort(piv.order) == np.arange(len(x))).all() and (piv.order[piv.pos] == np.arange(len(x))).all()


def test_nearest_centre_is_argmax_with_ties_to_the_lower_centre():
    rng = np.random.default_rng(4)
    g = np.round(rng.standard_normal((37, 40000)) * 4).astype(np.float32)  # many exact ties
    cn = np.round(rng.random(37) * 4) / 2
    want = np.argmax(g - (0.5 * cn).astype(np.float32)[:, None], axis=0)
    assert (PivotColumns._nearest(g, cn) == want).all()
    assert (PivotColumns._nearest(g[:, :500], cn, cols=7) == want[:500]).all()  # blocks of 7 columns
    assert (PivotColumns._nearest(g[:1], cn[:1]) == 0).all()
