"""Diversity selectors: k-center, facility location (lazy = plain greedy = brute force), score-then-diverse."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from tasksift.data.example import Example
from tasksift.errors import ConfigError
from tasksift.methods.base import SelectionContext
from tasksift.methods.diversity import (FacilityLocationSelection, KCenterSelection, ScoreThenDiverseSelection,
                                        facility_location_greedy, facility_location_lazy, facility_location_value,
                                        kcenter_greedy, knn_graph)


def toy_ctx(x: np.ndarray, q: np.ndarray, seed: int = 0, raw=None) -> SelectionContext:
    pool = [Example(messages=[{"role": "user", "content": f"row {i}"}, {"role": "assistant", "content": "a"}],
                    raw=(raw[i] if raw else {"i": i}), row=i) for i in range(len(x))]
    target = [Example(messages=[{"role": "user", "content": f"t {i}"}, {"role": "assistant", "content": "b"}],
                      raw={}, row=i) for i in range(len(q))]
    ctx = SelectionContext(pool, target, seed=seed)
    ctx.set_embeddings("pool", np.asarray(x, dtype=np.float32))
    ctx.set_embeddings("target", np.asarray(q, dtype=np.float32))
    return ctx


def circle(deg) -> np.ndarray:
    r = np.radians(np.asarray(deg, dtype=float))
    return np.stack([np.cos(r), np.sin(r)], axis=1)


# ------------------------------------------------------------------------------- k-center
def test_kcenter_greedy_picks_the_farthest_point():
    x = np.array([[0.0], [1.0], [2.0], [10.0]])
    centers, pick, mind = kcenter_greedy(x, 3, first=0)
    assert centers.tolist() == [0, 3, 2]          # 10 is farthest from 0; then 2 (distance 2 > 1)
    assert pick[0] == np.inf and pick[1:].tolist() == [10.0, 2.0]
    np.testing.assert_allclose(mind, [0, 1, 0, 0])


def test_kcenter_never_repeats_a_center_on_duplicate_rows():
    x = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]])
    centers, _, mind = kcenter_greedy(x, 4, first=0)
    assert centers.tolist() == [0, 4, 1, 2] and (mind == 0).all()


def test_kcenter_method_starts_near_target_and_covers():
    x = circle([0, 10, 20, 180, 185])
    ctx = toy_ctx(x, circle([2]))
    res = KCenterSelection().select(ctx, 3)
    assert res.indices.tolist() == [0, 3, 2]      # nearest to target, then the opposite side, then 20 deg
    assert np.isnan(res.scores[[1, 4]]).all() and res.scores[0] > res.scores[3] > res.scores[2]
    # covering radius: farthest row from its nearest center, by brute force
    d = np.linalg.norm(x[:, None] - x[None, res.indices], axis=2).min(axis=1).max()
    assert res.info["covering_radius"] == pytest.approx(d, abs=1e-6)
    a = KCenterSelection(init="random").select(toy_ctx(x, circle([2]), seed=5), 5).indices
    assert sorted(a.tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError):
        KCenterSelection(init="centroid").select(ctx, 2)


def test_kcenter_is_a_2_approximation_on_random_points():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 2))
    centers, _, mind = kcenter_greedy(x, 3, first=0)
    dist = np.linalg.norm(x[:, None] - x[None], axis=2)
    opt = min(dist[:, list(s)].min(axis=1).max() for s in itertools.combinations(range(12), 3))
    assert mind.max() <= 2 * opt + 1e-9


# ---------------------------------------------------------------------- facility location
def brute_force_greedy(sim: np.ndarray, k: int) -> tuple[list[int], float]:
    """Plain greedy on a dense similarity matrix, evaluating F(S + j) from scratch."""
    picks: list[int] = []
    for _ in range(k):
        best, best_val = None, -1.0
        for j in range(sim.shape[1]):
            if j in picks:
                continue
            val = sim[:, picks + [j]].max(axis=1).sum()
            if val > best_val + 1e-12:
                best, best_val = j, val
        picks.append(best)
    return picks, float(sim[:, picks].max(axis=1).sum())


def test_knn_graph_is_sparse_clipped_cosine():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8))
    g = knn_graph(x, 5)
    assert sp.issparse(g) and g.shape == (40, 40) and g.nnz <= 40 * 5
    np.testing.assert_allclose(g.diagonal(), 1.0, atol=1e-5)
    assert g.data.min() >= 0
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = xn @ xn.T
    i, j = g.nonzero()
    np.testing.assert_allclose(g[i, j].A1, np.clip(cos[i, j], 0, None), atol=1e-5)


def test_facility_location_full_graph_matches_brute_force_on_30_points():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 5))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    dense = np.clip(xn @ xn.T, 0, None)
    g = knn_graph(x, 30)                 # k-NN graph with k = N is the full graph
    np.testing.assert_allclose(g.toarray(), dense, atol=1e-5)
    picks, gains = facility_location_lazy(g, 6)
    bf_picks, bf_val = brute_force_greedy(dense, 6)
    assert picks.tolist() == bf_picks
    assert gains.sum() == pytest.approx(bf_val, rel=1e-5)
    assert facility_location_value(dense, picks) == pytest.approx(bf_val, rel=1e-5)
    # greedy guarantee against the exhaustive optimum for k = 3
    opt = max(dense[:, list(s)].max(axis=1).sum() for s in itertools.combinations(range(30), 3))
    val3 = facility_location_value(dense, facility_location_lazy(g, 3)[0])
    assert (1 - 1 / np.e) * opt <= val3 <= opt + 1e-9


def test_lazy_greedy_equals_plain_greedy_on_a_sparse_graph():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 16))
    g = knn_graph(x, 6)
    lazy, lazy_g = facility_location_lazy(g, 40)
    plain, plain_g = facility_location_greedy(g, 40)
    assert lazy.tolist() == plain.tolist()
    np.testing.assert_allclose(lazy_g, plain_g, rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(lazy_g) <= 1e-9)      # diminishing returns
    assert lazy_g.sum() == pytest.approx(facility_location_value(g, lazy), rel=1e-9)


def test_facility_location_method_on_30_points():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 5))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    res = FacilityLocationSelection(neighbors=29).select(toy_ctx(x, x[:1]), 5)
    bf_picks, bf_val = brute_force_greedy(np.clip(xn @ xn.T, 0, None), 5)
    assert res.indices.tolist() == bf_picks
    assert res.info["objective"] == pytest.approx(bf_val, rel=1e-5)
    assert np.isnan(res.scores).sum() == 25
    with pytest.raises(ConfigError):
        FacilityLocationSelection(neighbors=0).select(toy_ctx(x, x[:1]), 5)


# --------------------------------------------------------------------- score-then-diverse
def test_score_then_diverse_skips_near_copies_of_taken_rows():
    # rows 0-2: near-identical, closest to the target; row 3 next closest; 4-5 far
    x = circle([0, 1, 2, 40, 120, 200])
    ctx = toy_ctx(x, circle([0]))
    res = ScoreThenDiverseSelection(threshold=0.9).select(ctx, 3)
    assert res.indices.tolist() == [0, 3, 4]
    assert res.info["skipped_as_redundant"] == 2
    # without a diversity threshold the same ranking takes the copies
    res = ScoreThenDiverseSelection(threshold=1.0).select(ctx, 3)
    assert res.indices.tolist() == [0, 1, 2]


def test_score_then_diverse_fills_and_uses_fields_or_methods():
    x = circle([0, 1, 2, 3])
    raw = [{"quality": q} for q in (1.0, 4.0, 3.0, 2.0)]
    ctx = toy_ctx(x, circle([0]), raw=raw)
    res = ScoreThenDiverseSelection(score="quality", threshold=0.9).select(ctx, 3)
    assert res.indices.tolist() == [1, 2, 3] and res.info["filled"] == 2
    res = ScoreThenDiverseSelection(score="quality", threshold=0.9, fill=False).select(ctx, 3)
    assert res.indices.tolist() == [1] and "short" in res.info
    res = ScoreThenDiverseSelection(score="kcenter", threshold=0.9).select(ctx, 2)
    assert len(res.indices) == 2 and "kcenter" in res.info["score"]
    with pytest.raises(ConfigError):
        ScoreThenDiverseSelection(score="nonexistent").select(ctx, 2)
    with pytest.raises(ConfigError):
        ScoreThenDiverseSelection(threshold="high").select(ctx, 2)


def test_diverse_walk_blocks_agree_with_one_at_a_time():
    from tasksift.methods.diversity import diverse_walk, normalize_rows

    rng = np.random.default_rng(5)
    x = normalize_rows(rng.normal(size=(600, 3)))
    order = rng.permutation(600)
    a, _ = diverse_walk(x, order, 50, 0.8, block=256)
    b, _ = diverse_walk(x, order, 50, 0.8, block=1)
    assert a.tolist() == b.tolist()
    cos = x[a] @ x[a].T
    assert (cos[~np.eye(len(a), dtype=bool)] <= 0.8 + 1e-6).all()
