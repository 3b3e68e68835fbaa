"""The sparse gather of the prefetched pairs' float64 distances against the dense product and
the definition, on instances with ties and duplicates; the duplicate finder and the in-place
row compaction it relies on."""
import numpy as np
import pytest

from tasksift.methods.tsds.engine import compact_rows
from tasksift.methods.tsds.gather import first_copies, pair_distances, nearest_chain
from tasksift.neighbors import gathered_distances


def grid_rows(rng, n, d, dtype):
    """Rows on a coarse grid (tied distances) with a third of them exact duplicates."""
    x = np.round(rng.standard_normal((n, d)) * 2) / 2
    x[rng.integers(0, n, n // 3)] = x[rng.integers(0, n, n // 3)]
    return x.astype(dtype)


def definition(q, rows, pos):
    diff = q[:, None, :].astype(np.float64) - rows[np.maximum(pos, 0)].astype(np.float64)
    return np.where(pos >= 0, np.sqrt((diff ** 2).sum(axis=2)), np.inf)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,group,block", [(1, 1, 7), (2, 1, 1), (23, 5, 16), (40, 32, 1024), (9, 2, 3)])
def test_pair_distances_equal_the_dense_product_and_the_definition(dtype, m, group, block):
    rng = np.random.default_rng(m)
    rows = grid_rows(rng, 400, 9, dtype)
    q = np.concatenate([rows[:m // 2], grid_rows(rng, m - m // 2, 9, dtype)])  # some queries sit on rows
    pos = rng.integers(-1, len(rows), (m, 120))
    got = pair_distances(q, rows, pos, group=group, block=block)
    np.testing.assert_array_equal(np.isinf(got), pos < 0)
    np.testing.assert_allclose(got, definition(q, rows, pos), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, gathered_distances(q, rows, pos), rtol=0, atol=1e-12)
    # exact duplicates get bit-identical distances to every query, wherever they sit
    same = (rows[pos.clip(0)][:, :, None, :] == rows[pos.clip(0)][:, None, :, :]).all(axis=3)
    same &= (pos >= 0)[:, :, None] & (pos >= 0)[:, None, :]
    i, a, b = np.nonzero(same)
    assert len(i) > m * 120 and (got[i, a] == got[i, b]).all()


def test_pair_distances_empty_inputs():
    q = np.ones((3, 4), np.float32)
    assert np.isinf(pair_distances(q, np.ones((5, 4), np.float32), np.full((3, 2), -1))).all()
    assert pair_distances(q, np.ones((5, 4), np.float32), np.zeros((3, 0), np.int64)).shape == (3, 0)


def byte_first(rows):
    keys = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    return first[inv.ravel()]


@pytest.mark.parametrize("probes", [1, 2, 32])
@pytest.mark.parametrize("dtype,d", [(np.float32, 5), (np.float32, 64), (np.float64, 3), (np.float16, 3)])
def test_first_copies_by_bytes_even_when_hashes_collide(probes, dtype, d):
    rng = np.random.default_rng(d)
    x = rng.standard_normal((500, d)).astype(dtype)
    x[:, 0] = 1.0  # with probes=1 every row hashes alike: the exact fallback must settle them
    x[rng.integers(0, 500, 200)] = x[rng.integers(0, 500, 200)]
    got = first_copies(x, probes=probes)
    np.testing.assert_array_equal(got, byte_first(x))
    assert (got < np.arange(500)).sum() > 50 and (got <= np.arange(500)).all()
    z = np.zeros((4, 3), np.float32)
    z[1, 0] = -0.0  # -0.0 and 0.0 differ in bytes: not copies (their distances agree anyway)
    np.testing.assert_array_equal(first_copies(z), [0, 1, 0, 0])


def test_nearest_chain_is_a_permutation_of_nearest_steps():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((50, 6))
    order = nearest_chain(q)
    np.testing.assert_array_equal(np.sort(order), np.arange(50))
    assert order[0] == 0
    d = np.linalg.norm(q[order[0]] - q[order[1:]], axis=1)
    assert np.isclose(d[0], d.min())  # the first step goes to the nearest


def test_compact_rows_equals_fancy_indexing():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((10000, 3))
    keep = np.sort(rng.choice(10000, 6001, replace=False))
    want = x[keep].copy()
    np.testing.assert_array_equal(compact_rows(x.copy(), keep, rows=97), want)
    assert compact_rows(x, np.arange(10000)) is x


def test_positions_in_equals_a_binary_search():
    from tasksift.methods.tsds.engine import positions_in

    rng = np.random.default_rng(5)
    rows = np.unique(rng.integers(0, 1000, 300))
    ids = rng.choice(rows, (7, 40))
    ids[rng.random(ids.shape) < 0.2] = -1
    want = np.where(ids >= 0, np.searchsorted(rows, ids), -1)
    np.testing.assert_array_equal(positions_in(rows, ids, 1000), want)
