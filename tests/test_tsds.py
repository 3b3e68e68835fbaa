"""TSDS engine: exactness against an LP solve, near-duplicates, the reference code's defects
fixed (unreached queries, -1 ids, sampling), fill rule, indexes, CLI and bad input."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from scipy import sparse
from scipy.optimize import linprog
from scipy.spatial.distance import cdist

from tasksift.errors import ConfigError, DataError
from tasksift.methods import tsds as T
from tasksift.neighbors import knn, recall_at_k, resolve_index


def lp_optimum(D: np.ndarray, rho: np.ndarray, alpha: float, C: float,
               allowed: np.ndarray | None = None) -> float:
    """Exact minimum of (alpha/C) sum d*g + (1-alpha) M max rho_j g_ij over plans with rows
    summing to 1/M, linearised with t >= rho_j g_ij (optionally only ``allowed`` pairs)."""
    M, N = D.shape
    c = np.concatenate([alpha / C * D.ravel(), [(1 - alpha) * M]])
    A_eq = sparse.hstack([sparse.kron(sparse.eye(M), np.ones((1, N))), sparse.csr_matrix((M, 1))])
    A_ub = sparse.hstack([sparse.diags(np.tile(rho, M)), -np.ones((M * N, 1))])
    bounds = [(0, None)] * (M * N + 1)
    if allowed is not None:
        bounds = [(0, None) if a else (0, 0) for a in allowed.ravel()] + [(0, None)]
    r = linprog(c, A_ub=A_ub, b_ub=np.zeros(M * N), A_eq=A_eq, b_eq=np.full(M, 1 / M),
                bounds=bounds, method="highs")
    assert r.status == 0, r.message
    return float(r.fun)


def exact_rho(x: np.ndarray, sigma: float, kde_k: int | None = None) -> np.ndarray:
    if sigma == 0:
        return np.ones(len(x))
    w = np.maximum(0.0, 1.0 - cdist(x, x, "sqeuclidean") / sigma ** 2)
    if kde_k is not None and kde_k < len(x):
        w = -np.sort(-w, axis=1)[:, :kde_k]
    return w.sum(axis=1)


def random_instance(rng: np.random.Generator):
    M = int(rng.integers(1, 11))
    N = int(rng.integers(1, 201))
    d = int(rng.integers(1, 6))
    x = rng.standard_normal((N, d)) * rng.choice([0.1, 0.5, 1.0])
    if N > 3 and rng.random() < 0.5:  # exact duplicates
        x[rng.integers(0, N, size=N // 3)] = x[rng.integers(0, N, size=N // 3)]
    if rng.random() < 0.3:  # coarse grid: many tied distances
        x = np.round(x, 1)
    q = rng.standard_normal((M, d)) * 0.5
    if rng.random() < 0.2 and N > 1:  # a query sitting on a candidate
        q[0] = x[0]
    return q, x


def test_plan_matches_lp_on_random_instances():
    rng = np.random.default_rng(20241124)
    seen = set()
    for case in range(150):
        q, x = random_instance(rng)
        alpha = float(rng.choice([0.0, 0.01, 0.2, 0.5, 0.8, 0.99, 1.0]))
        sigma = float(rng.choice([0.0, 0.5, 0.75, 2.0]))
        C = float(rng.choice([0.5, 5.0]))
        N = len(x)
        res = T.tsds(q, x, alpha=alpha, C=C, sigma=sigma, max_k=N, kde_k=N)
        rho = exact_rho(x, sigma)
        known = ~np.isnan(res.rho)  # densities are computed only where the plan needs them
        np.testing.assert_allclose(res.rho[known], rho[known], rtol=1e-9, atol=1e-9)
        assert known[res.p > 0].all()
        plan = res.plan()
        D = cdist(q, x)
        got = T.objective(plan, D, rho, alpha=alpha, C=C)
        want = lp_optimum(D, rho, alpha, C)
        assert abs(got - want) <= 1e-6 * max(abs(want), 1e-12), (case, got, want)
        np.testing.assert_allclose(np.asarray(plan.sum(axis=1)).ravel(), 1 / len(q), rtol=1e-9)
        assert (res.p >= 0).all() and abs(res.p.sum() - 1) < 1e-12
        np.testing.assert_allclose(res.p, np.asarray(plan.sum(axis=0)).ravel(), atol=1e-12)
        seen.add((sigma == 0, alpha))
    assert len(seen) >= 10  # both variants, several alphas


def test_restricted_to_max_k_matches_restricted_lp():
    """With max_k < N the plan is optimal among plans using each query's max_k nearest."""
    rng = np.random.default_rng(7)
    for _ in range(25):
        q, x = random_instance(rng)
        N = len(x)
        L = int(rng.integers(1, N + 1))
        alpha = float(rng.choice([0.1, 0.5, 0.9]))
        sigma = float(rng.choice([0.0, 0.75]))
        res = T.tsds(q, x, alpha=alpha, sigma=sigma, max_k=L, kde_k=N)
        allowed = np.zeros((len(q), N), bool)
        for i in range(len(q)):
            allowed[i, res.neighbor_ids[i][res.neighbor_ids[i] >= 0]] = True
        rho = np.ones(N)
        U = np.flatnonzero(allowed.any(axis=0))
        rho[U] = exact_rho(x[U], sigma)
        got = T.objective(res.plan(), cdist(q, x), rho, alpha=alpha, C=5.0)
        want = lp_optimum(cdist(q, x), rho, alpha, 5.0, allowed)
        assert abs(got - want) <= 1e-6 * max(abs(want), 1e-12)


def test_uniform_variant_closed_form():
    """KNN-Uniform: p_j = (#queries with j among their K nearest) / (K M)."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((6, 4))
    x = rng.standard_normal((80, 4))
    res = T.tsds(q, x, sigma=0, alpha=0.5, C=5.0, max_k=80)
    D = np.sort(cdist(q, x), axis=1)
    K = next(k for k in range(1, 80) if 0.5 / 5.0 * (D[:, k:k + 1] - D[:, :k]).sum() >= 0.5 * 6)
    counts = np.zeros(80)
    for row in np.argsort(cdist(q, x), axis=1)[:, :K]:
        counts[row] += 1
    np.testing.assert_allclose(res.p, counts / (K * 6), atol=1e-12)
    assert res.threshold == pytest.approx(K)


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_near_duplicates_share_one_points_mass():
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((300, 16)))
    q = _unit(rng.standard_normal((10, 16)))
    j0 = int(np.argmin(np.linalg.norm(x - q[0], axis=1)))
    copies = _unit(x[j0] + 1e-3 * rng.standard_normal((50, 16)))
    x2 = np.vstack([x, copies])
    group = np.r_[j0, np.arange(300, 350)]
    base = T.tsds(q, x, sigma=0.75).p[j0]
    kde = T.tsds(q, x2, sigma=0.75).p[group].sum()
    uni = T.tsds(q, x2, sigma=0).p[group].sum()
    assert kde == pytest.approx(base, rel=0.05)   # the 51 near-copies get one point's share
    assert uni > 10 * base                        # without the KDE they take a large share
    assert uni > 0.1


def test_unreached_query_gives_its_mass_to_its_nearest_neighbour():
    rng = np.random.default_rng(1)
    dense = _unit(np.ones((1, 8)) + 1e-3 * rng.standard_normal((60, 8)))
    lonely = np.zeros((1, 8))
    lonely[0, 0] = -1.0
    others = rng.standard_normal((40, 8))
    others[:, 0] = np.abs(others[:, 0])  # nothing near the lonely point -e0
    others = _unit(others)
    x = np.vstack([dense, lonely, others])
    q = np.vstack([_unit(np.ones((4, 8)) + 1e-3 * rng.standard_normal((4, 8))),
                   _unit(lonely + 0.05 * np.eye(8)[1])])
    alpha = 0.99
    res = T.tsds(q, x, alpha=alpha, sigma=0.75, max_k=len(x), kde_k=len(x))
    assert res.filled[4] == 0 and res.info["unreached_queries"] >= 1
    assert res.gamma[4, 0] == pytest.approx(1 / 5) and res.neighbor_ids[4, 0] == 60
    assert res.p[60] >= 1 / 5 - 1e-12
    assert res.info["mass_before_renormalisation"] == pytest.approx(1.0, abs=1e-12)
    rho = exact_rho(x, 0.75)
    assert T.objective(res.plan(), cdist(q, x), rho, alpha=alpha, C=5.0) == pytest.approx(
        lp_optimum(cdist(q, x), rho, alpha, 5.0), rel=1e-6)


def test_minus_one_ids_are_dropped():
    rng = np.random.default_rng(2)
    dist = np.sort(rng.random((3, 6)), axis=1)
    ids = np.arange(18).reshape(3, 6)
    rho = 1 + rng.random((3, 6))
    cut = ids.copy()
    cut[0, 4:] = -1
    cut[2, 1:] = -1
    dcut = np.where(cut >= 0, dist, np.inf)
    g, s, K = T.water_filling(dcut, cut, rho, alpha=0.5, C=0.5)
    assert (g[cut < 0] == 0).all()
    np.testing.assert_allclose(g.sum(axis=1), 1 / 3)
    # the -1 slots change nothing compared with lists that simply end there
    g0, s0, _ = T.water_filling(dcut[:, :4], cut[:, :4], rho[:, :4], alpha=0.5, C=0.5)
    np.testing.assert_allclose(g[:, :4], g0)
    with pytest.raises(ValueError):
        T.water_filling(dist, np.where(np.arange(6) == 0, -1, ids), rho, alpha=0.5, C=0.5)
    # an IVF index with one probed list returns -1 ids for long lists: they are dropped
    x = _unit(rng.standard_normal((400, 8))).astype(np.float32)
    q = _unit(rng.standard_normal((5, 8))).astype(np.float32)
    res = T.tsds(q, x, max_k=300, index="IVF16,Flat", sigma=0.75)
    assert res.info["ann_dropped_ids"] > 0
    assert res.p.shape == (400,) and abs(res.p.sum() - 1) < 1e-12 and (res.p >= 0).all()
    assert 0 < res.info["ann_recall"]["search"] < 1


def test_sampling_modes_seeded_and_reproducible():
    rng = np.random.default_rng(5)
    p = rng.random(200) ** 3
    p[rng.random(200) < 0.3] = 0
    p /= p.sum()
    for mode in T.SAMPLING_MODES:
        a, ia = T.draw(p, 30, rng=11, sampling=mode)
        b, _ = T.draw(p, 30, rng=11, sampling=mode)
        np.testing.assert_array_equal(a, b)
        assert len(a) == 30 and (p[a] > 0).all() and ia["filled"] == 0
    wo, _ = T.draw(p, 30, rng=11, sampling="without_replacement")
    assert len(np.unique(wo)) == 30
    assert not np.array_equal(wo, T.draw(p, 30, rng=12, sampling="without_replacement")[0])
    top, _ = T.draw(p, 30, rng=1, sampling="top")
    np.testing.assert_array_equal(top, np.lexsort((np.arange(200), -p))[:30])
    wr, info = T.draw(p, 500, rng=3, sampling="with_replacement")
    assert len(wr) == 500 and info["distinct"] < 500
    # one draw without replacement follows p
    firsts = np.array([T.draw(p, 1, rng=s)[0][0] for s in range(3000)])
    freq = np.bincount(firsts, minlength=200) / 3000
    assert np.abs(freq - p).max() < 0.03
    # with replacement follows p too
    freq = np.bincount(T.draw(p, 20000, rng=0, sampling="with_replacement")[0], minlength=200) / 20000
    assert np.abs(freq - p).max() < 0.015


def test_draw_without_replacement_is_stable_to_small_changes_of_p():
    """One Gumbel variate per row: a row entering the support with a tiny probability, or a
    1e-6 relative change of every probability, leaves the draw as it was (a per-support draw
    of the noise reshuffled it like a new seed: bfloat16 vectors then gave Jaccard 0.15 with
    float32's TSDS selection at 1% of 5k real rows, against 0.96 now)."""
    rng = np.random.default_rng(8)
    p = rng.random(5000) ** 4
    p[rng.random(5000) < 0.6] = 0
    p /= p.sum()
    a, _ = T.draw(p, 50, rng=3)
    q = p.copy()
    q[np.flatnonzero(p == 0)[0]] = 1e-12          # a new supported row, first of all zeros
    np.testing.assert_array_equal(T.draw(q, 50, rng=3)[0], a)
    r = p * (1 + 1e-6 * rng.standard_normal(5000))
    assert len(set(T.draw(r / r.sum(), 50, rng=3)[0]) & set(a)) == 50


def test_support_smaller_than_budget_is_filled_by_nearest_rule():
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 3))
    x = rng.standard_normal((40, 3))
    p = np.zeros(40)
    p[[3, 7, 9]] = [0.5, 0.3, 0.2]
    key = cdist(x, q).min(axis=1)
    for mode in ("without_replacement", "top"):
        idx, info = T.draw(p, 10, rng=0, sampling=mode, fill_key=lambda: T.nearest_query_distance(q, x))
        assert set(idx[:3]) == {3, 7, 9}
        rest = [j for j in np.argsort(key, kind="stable") if j not in (3, 7, 9)][:7]
        np.testing.assert_array_equal(idx[3:], rest)
        assert info["support_size"] == 3 and info["filled"] == 7
        assert info["support_smaller_than_budget"] and info["fill_rule"].startswith("nearest")
    idx, info = T.draw(p, 10, rng=0)
    assert len(idx) == 3 and info["fill_rule"].startswith("none")
    with pytest.raises(ConfigError):
        T.draw(p, 41, rng=0)


def test_index_auto_and_overrides():
    assert resolve_index("auto", 200, 10_000) == "exact"
    assert resolve_index("auto", 200, 1_000_000) == "flat"
    assert resolve_index("auto", 500_000, 500_000) == "ivf"
    assert resolve_index("hnsw", 1, 10) == "hnsw"
    rng = np.random.default_rng(6)
    centres = _unit(rng.standard_normal((20, 32)))
    x = _unit(centres[rng.integers(0, 20, 3000)] + 0.1 * rng.standard_normal((3000, 32))).astype(np.float32)
    q = _unit(centres[:3] + 0.1 * rng.standard_normal((3, 32))).astype(np.float32)
    exact = knn(q, x, 50, index="exact")
    for kind in ("flat", "ivf", "hnsw"):
        r = knn(q, x, 50, index=kind)
        assert r.index.startswith(kind)
        assert r.recall is not None and r.recall > 0.9
        assert recall_at_k(r.ids, exact.ids) > 0.9
        np.testing.assert_allclose(r.distances[:, :10], exact.distances[:, :10], atol=1e-5)
    ref = T.tsds(q, x, max_k=500, kde_k=200, index="exact")
    assert ref.info["index"] == {"search": "exact", "kde": "exact-range"}
    assert ref.info["search_cut_uncertified"] == 0
    for kind in ("flat", "auto"):  # the exact kinds all take the same exact engine
        r = T.tsds(q, x, max_k=500, kde_k=200, index=kind)
        np.testing.assert_array_equal(r.p, ref.p)
    for kind in ("ivf", "hnsw"):  # approximate search; the densities stay exact
        r = T.tsds(q, x, max_k=500, kde_k=200, index=kind)
        assert r.info["index"] == {"search": r.info["index"]["search"], "kde": "exact-range"}
        assert r.info["index"]["search"].startswith(kind) and r.info["ann_recall"]["search"] > 0.9
        assert np.abs(r.p - ref.p).sum() < 0.1
    with pytest.raises(ConfigError):
        T.tsds(q, x, index="NoSuchIndex,Flat")


def test_kde_caps_at_kde_k_and_counts_duplicates():
    x = np.zeros((5, 3))
    x[4] = [10, 0, 0]
    rho, _ = T.kde_exact(x, 0.75, 1000)
    np.testing.assert_allclose(rho, [4, 4, 4, 4, 1])  # m exact duplicates give m + 1
    rho, _ = T.kde_exact(x, 0.75, 2)
    np.testing.assert_allclose(rho, [2, 2, 2, 2, 1])
    for dt in (np.float64, np.float32):
        rho, cnt = T.range_density(x.astype(dt), x.astype(dt), 0.75, 2)
        assert rho.tolist() == [2, 2, 2, 2, 1] and cnt.tolist() == [4, 4, 4, 4, 1]


def _tied_instance(rng, n=400, d=6, dtype=np.float64):
    """Points on a coarse grid (many tied distances, some exactly sigma apart) with exact
    duplicates."""
    x = np.round(rng.standard_normal((n, d)) * 0.5, 1) * 0.75
    x[rng.integers(0, n, n // 4)] = x[rng.integers(0, n, n // 4)]
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kde_k", [1, 3, 17, 1000])
def test_range_density_equals_exact_kernel_sum_with_ties_and_duplicates(dtype, kde_k):
    rng = np.random.default_rng(kde_k)
    x = _tied_instance(rng, dtype=dtype)
    sigma = 0.75
    # the kernel sum straight from the definition: float64 differences, every pair
    d2 = cdist(x.astype(np.float64), x.astype(np.float64), "sqeuclidean")
    w = np.maximum(0.0, 1.0 - d2 / sigma ** 2)
    want = (-np.sort(-w, axis=1))[:, :kde_k].sum(axis=1)
    got, cnt = T.range_density(x, x, sigma, kde_k)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # pairs exactly sigma apart (weight 0 up to rounding) may count either way
    on_edge = (np.abs(d2 - sigma ** 2) < 1e-12).sum(axis=1)
    assert on_edge.sum() > 0 and (np.abs(cnt - (w > 0).sum(axis=1)) <= on_edge).all()
    assert (got >= 1).all()
    np.testing.assert_allclose(T.kde_exact(x, sigma, kde_k)[0], want, rtol=1e-9, atol=1e-9)
    # any superset of the kernel neighbours as columns, in any order, gives the same values (to rounding)
    perm = rng.permutation(len(x))
    again, _ = T.range_density(x[:50], np.concatenate([x[perm], x[:7]]) if kde_k >= 1000 else x[perm], sigma, kde_k)
    if kde_k >= 1000:  # the extra copies of rows 0..6 are extra duplicates: their rows gain weight
        want50 = want[:50] + np.maximum(0.0, 1.0 - cdist(x[:50].astype(np.float64), x[:7].astype(np.float64),
                                                          "sqeuclidean") / sigma ** 2).sum(axis=1)
        np.testing.assert_allclose(again, want50, rtol=1e-12)
    else:
        np.testing.assert_allclose(again, got[:50], rtol=1e-12)


def test_densities_only_where_the_plan_needs_them_give_the_full_solution():
    """The lazy solve (densities of each query's first K_i + 1 neighbours) equals the
    water-filling with every density known."""
    rng = np.random.default_rng(3)
    for case in range(30):
        q, x = random_instance(rng)
        if len(x) < 20:
            continue
        sigma = float(rng.choice([0.5, 0.75, 2.0]))
        alpha = float(rng.choice([0.2, 0.5, 0.9]))
        res = T.tsds(q, x, alpha=alpha, sigma=sigma, max_k=len(x), kde_k=len(x))
        rho, _ = T.range_density(x, x, sigma, len(x))  # every density, against every row
        known = ~np.isnan(res.rho)
        np.testing.assert_allclose(res.rho[known], rho[known], rtol=1e-12)  # float64 rounding only
        ids = res.neighbor_ids
        gamma, s, K = T.water_filling(res.neighbor_dist, ids, rho[np.maximum(ids, 0)], alpha=alpha, C=5.0)
        assert s == pytest.approx(res.threshold, rel=1e-12)
        assert (np.abs(K - res.filled) <= 1).all()  # a neighbour exactly at the level counts either way
        np.testing.assert_allclose(gamma, res.gamma, rtol=1e-10, atol=1e-15)
    # a big list with a small plan: only a few densities are computed
    x = _unit(rng.standard_normal((3000, 8)))
    res = T.tsds(x[:5], x, max_k=2000, kde_k=50, alpha=0.9)
    assert res.info["density_rows"] < res.info["prefetched"] / 4
    assert np.isnan(res.rho).sum() > 0 and not np.isnan(res.rho[res.p > 0]).any()


def test_float32_and_normalize():
    rng = np.random.default_rng(8)
    q = rng.standard_normal((5, 12)) * 3
    x = rng.standard_normal((300, 12)) * 3
    p64 = T.selection_probabilities(q, x, normalize=True)
    p32 = T.selection_probabilities(q.astype(np.float32), x.astype(np.float32), normalize=True)
    assert np.abs(p64 - p32).sum() < 1e-3
    pn = T.selection_probabilities(_unit(q), _unit(x))
    assert np.abs(p64 - pn).sum() < 1e-6
    assert abs(T.selection_probabilities(q, x).sum() - 1) < 1e-12


def test_registered_method_selects_from_context():
    from tasksift.methods.base import SelectionContext
    from tasksift.methods.registry import get_method

    rng = np.random.default_rng(9)
    x = _unit(rng.standard_normal((500, 16))).astype(np.float32)
    q = _unit(rng.standard_normal((8, 16))).astype(np.float32)
    cls = get_method("tsds")
    assert cls.info.stochastic and cls.info.needs == ("embeddings",)

    def ctx(seed=0):
        c = SelectionContext([None] * 500, [None] * 8, seed=seed)
        c.set_embeddings("pool", x)
        c.set_embeddings("target", q)
        return c

    c = ctx()
    r = cls().select(c, 40)
    assert len(r.indices) == 40 == len(np.unique(r.indices))
    np.testing.assert_allclose(r.scores, r.columns["tsds_prob"])
    assert abs(r.scores.sum() - 1) < 1e-12
    for key in ("support_size", "filled", "fill_rule", "ann_recall", "index", "tsds_timings"):
        assert key in r.info
    assert {"tsds_search", "tsds_kde", "tsds_solve", "tsds_sample"} <= set(c.timings)
    np.testing.assert_array_equal(r.indices, cls().select(ctx(), 40).indices)
    assert not np.array_equal(r.indices, cls().select(ctx(1), 40).indices)
    big = cls(sampling="top", alpha=0.99, sigma=0).select(ctx(), 450)
    assert big.info["filled"] == 450 - big.info["support_size"] > 0
    assert len(np.unique(big.indices)) == 450
    wr = cls(sampling="with_replacement").select(ctx(), 100)
    assert len(np.unique(wr.indices)) == len(wr.indices) <= 100
    assert wr.columns["tsds_draws"].sum() == 100
    with pytest.raises(ConfigError):
        cls(alpha=2)
    with pytest.raises(ConfigError):
        cls(sampling="sometimes")
    with pytest.raises(ConfigError):
        cls(bogus=1)


def _parse(argv):
    from tasksift.commands import tsds as cmd

    parser = argparse.ArgumentParser(prog="tasksift")
    cmd.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_handler_on_npy_files(tmp_path, capsys):
    rng = np.random.default_rng(10)
    q = _unit(rng.standard_normal((6, 24))).astype(np.float32)
    x = _unit(rng.standard_normal((700, 24))).astype(np.float32)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    argv = ["tsds", "--query", str(tmp_path / "q.npy"), "--candidates", str(tmp_path / "x.npy"),
            "--count", "25", "--seed", "3", "--out", str(out), "--alpha", "0.4"]
    args = _parse(argv)
    assert args.func(args) == 0
    sel = np.load(out / "selected.npy")
    p = np.load(out / "probabilities.npy")
    assert len(sel) == 25 == len(np.unique(sel)) and p.shape == (700,) and abs(p.sum() - 1) < 1e-12
    assert [int(v) for v in (out / "indices.txt").read_text().split()] == sel.tolist()
    summ = json.loads((out / "summary.json").read_text())
    assert summ["selection"]["support_size"] == int((p > 0).sum())
    assert summ["settings"]["alpha"] == 0.4 and "ann_recall" in summ and "timings" in summ
    np.testing.assert_allclose(p, T.selection_probabilities(q, x, alpha=0.4, seed=3))
    assert "selected 25 rows" in capsys.readouterr().out
    args = _parse(argv)
    args.func(args)
    np.testing.assert_array_equal(np.load(out / "selected.npy"), sel)
    # via the main CLI, top mode, support smaller than the count
    from tasksift.cli import main

    out2 = tmp_path / "out2"
    rc = main(["tsds", "--query", str(tmp_path / "q.npy"), "--candidates", str(tmp_path / "x.npy"),
               "--count", "600", "--sampling", "top", "--sigma", "0", "--out", str(out2)])
    assert rc == 0
    summ = json.loads((out2 / "summary.json").read_text())
    assert summ["selection"]["filled"] == 600 - summ["selection"]["support_size"] > 0
    assert "filled by the nearest-to-query rule" in capsys.readouterr().out
    assert not list(out.glob(".*tmp*"))


@pytest.mark.parametrize("case", ["missing", "shape", "dims", "nan", "empty", "pickle", "count", "alpha"])
def test_cli_bad_input(tmp_path, case, capsys):
    rng = np.random.default_rng(11)
    q = rng.standard_normal((3, 5)).astype(np.float32)
    x = rng.standard_normal((30, 5)).astype(np.float32)
    qp, xp = tmp_path / "q.npy", tmp_path / "x.npy"
    np.save(qp, q)
    extra = []
    if case == "missing":
        xp = tmp_path / "nope.npy"
    elif case == "shape":
        np.save(xp, x[:, 0])
    elif case == "dims":
        np.save(xp, x[:, :4])
    elif case == "nan":
        x[7, 2] = np.nan
        np.save(xp, x)
    elif case == "empty":
        np.save(xp, x[:0])
    elif case == "pickle":
        xp.write_bytes(b"not an npy file")
    else:
        np.save(xp, x)
        extra = ["--count", "31"] if case == "count" else ["--alpha", "1.5"]
    args = _parse(["tsds", "--query", str(qp), "--candidates", str(xp), "--out", str(tmp_path / "o")] + extra)
    err = ConfigError if case in ("count", "alpha") else DataError
    with pytest.raises(err) as ei:
        args.func(args)
    msg = str(ei.value)
    assert "\n" not in msg
    if err is DataError:
        assert str(xp) in msg
    assert not (tmp_path / "o" / "probabilities.npy").exists()
    from tasksift.cli import main

    assert main(["tsds", "--query", str(qp), "--candidates", str(xp), "--out", str(tmp_path / "o")] + extra) == 2
    assert "tasksift: error:" in capsys.readouterr().err


def test_select_api_with_tsds_writes_manifest(tmp_path, tiny_embed_model):
    import tasksift
    from tasksift.data.demo import write_demo_data
    from tasksift.features.embed import EmbedConfig

    pool, target = write_demo_data(tmp_path / "data")
    kw = dict(method="tsds", ratio=0.1, embed=EmbedConfig(model=tiny_embed_model),
              cache_dir=tmp_path / "c", progress=False, seed=4)
    sel = tasksift.select(pool, target, **kw)
    k = round(0.1 * len(sel.pool))
    assert len(sel.indices) == k == len(set(sel.ids))
    p = sel.probabilities
    assert p is not None and abs(p.sum() - 1) < 1e-9
    assert sel.info["support_size"] == int((p > 0).sum())
    assert {"tsds_search", "tsds_kde", "tsds_solve"} <= set(sel.timings)
    sel.save(tmp_path / "out")
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["info"]["index"]["search"] == "exact" and "ann_recall" in man["info"]
    assert tasksift.select(pool, target, **kw).ids == sel.ids
    grouped = tasksift.select(pool, target, group_by="task", count=12, quotas="equal",
                              **{a: b for a, b in kw.items() if a != "ratio"})
    assert len(set(grouped.ids)) == 12


def test_neighbors_helpers():
    from tasksift.neighbors import exact_search, min_distance

    rng = np.random.default_rng(12)
    x = rng.standard_normal((3000, 10)).astype(np.float32)
    q = rng.standard_normal((7, 10)).astype(np.float32)
    d2, ids = exact_search(q, x, 120, chunk=500)
    full = cdist(q, x, "sqeuclidean")
    np.testing.assert_array_equal(ids, np.argsort(full, axis=1, kind="stable")[:, :120])
    np.testing.assert_allclose(d2, np.sort(full, axis=1)[:, :120], rtol=1e-4, atol=1e-4)
    assert recall_at_k(ids, ids) == 1.0
    half = ids.copy()
    half[:, 60:] = -1
    assert recall_at_k(half, ids) == pytest.approx(0.5)
    np.testing.assert_allclose(min_distance(x, q, chunk=1000), cdist(x, q).min(axis=1), rtol=1e-5)


def test_pivot_columns_never_leave_out_a_kernel_neighbour():
    rng = np.random.default_rng(11)
    for dtype in (np.float64, np.float32):
        centres = _unit(rng.standard_normal((15, 24)))
        x = _unit(centres[rng.integers(0, 15, 1500)] + rng.uniform(0.02, 0.3) * rng.standard_normal((1500, 24)))
        x[rng.integers(0, 1500, 100)] = x[rng.integers(0, 1500, 100)]
        x = x.astype(dtype)
        piv = T.kde.PivotColumns(x, 0.75, n_pivots=16, seed=1, block=64)
        rows = np.sort(rng.choice(1500, 400, replace=False))
        near = cdist(x.astype(np.float64), x.astype(np.float64)) < 0.75
        seen = []
        for blk, cols in piv.blocks(rows):
            seen += blk.tolist()
            assert near[blk][:, np.setdiff1d(np.arange(1500), cols)].sum() == 0
        assert sorted(seen) == rows.tolist()
        total = sum(len(b) * len(c) for b, c in piv.blocks(rows))
        assert total < 400 * 1500  # it does prune
