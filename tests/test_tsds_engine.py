"""The one TSDS engine: the same result in process, on the local executor and on Ray
(2-worker local cluster), from an array and from a .npy path; sharded search and its top-k
merge; killed tasks retried."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from tasksift.exec import LocalExecutor, make_executor
from tasksift.methods.tsds import tsds
from tasksift.neighbors import TopK, iter_row_blocks, merge_topk, read_npy_rows, search_blocks, sharded_search


def _clustered(n, m, d=32, clusters=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    lab = rng.integers(0, clusters, n)
    x = centres[lab] + rng.standard_normal((n, d)) * 0.08
    x[7] = x[3]  # an exact duplicate (ties broken by lower id everywhere)
    q = centres[rng.integers(0, 3, m)] + rng.standard_normal((m, d)) * 0.08
    return q.astype(np.float32), x.astype(np.float32)


@pytest.fixture(scope="module")
def tsds_data(tmp_path_factory):
    q, x = _clustered(4000, 40)
    path = tmp_path_factory.mktemp("tsds") / "x.npy"
    np.save(path, x)
    return q, x, path


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    here = str(Path(__file__).parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------------------------------
# one top-k merge


def test_topk_merges_blocks_in_any_order_with_ties_by_lower_id():
    rng = np.random.default_rng(1)
    d = np.round(rng.random((6, 900)), 2).astype(np.float32)  # many exact ties
    want_i = np.lexsort((np.broadcast_to(np.arange(900), d.shape), d), axis=1)[:, :50]
    for order in (range(0, 900, 128), reversed(range(0, 900, 128))):
        top = TopK(6, 50)
        for s in order:
            top.add(d[:, s:s + 128], np.arange(s, min(900, s + 128)))
        got_d, got_i = top.result()
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_d, np.take_along_axis(d, want_i, axis=1))
    # blocks smaller than k, written into one reused buffer: entries wait in the buffers
    # across several blocks before a compaction, and must not alias the block
    buf = np.empty((6, 16), dtype=np.float32)
    top = TopK(6, 50)
    for s in range(0, 900, 16):
        w = min(16, 900 - s)
        buf[:, :w] = d[:, s:s + w]
        top.add(buf[:, :w], np.arange(s, s + w))
        buf[:] = -1.0  # overwritten before the next block
    got_d, got_i = top.result(sort=False)
    np.testing.assert_array_equal(np.sort(got_i, axis=1), np.sort(want_i, axis=1))
    np.testing.assert_array_equal(got_d, np.take_along_axis(d, got_i, axis=1))
    short = TopK(2, 10)
    short.add(d[:2, :4], np.array([0, 1, -1, 3]))
    _, i = short.result()
    assert (i[:, 3:] == -1).all() and set(i[0, :3]) == {0, 1, 3}


def test_search_blocks_same_for_memory_and_disk(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2500, 12)).astype(np.float32)
    x[2000] = x[5]
    q = rng.standard_normal((9, 12)).astype(np.float32)
    q[0] = x[5]
    path = tmp_path / "x.npy"
    np.save(path, x)
    full = cdist(q, x, "sqeuclidean")
    want = np.argsort(full, axis=1, kind="stable")[:, :70]
    for src in (x, np.load(path, mmap_mode="r"), path):
        d2, ids = search_blocks(q, iter_row_blocks(src, 333), 70)
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_allclose(d2, np.take_along_axis(full, want, axis=1), rtol=1e-4, atol=1e-4)
    assert ids[0, :2].tolist() == [5, 2000]
    np.testing.assert_array_equal(read_npy_rows(path, 100, 900, np.array([100, 101, 500, 899])),
                                  x[[100, 101, 500, 899]])


def test_merge_topk_drops_missing_ids():
    parts = [(np.array([[0.5, np.inf]]), np.array([[3, -1]]), 0), (np.array([[0.1, 0.7]]), np.array([[0, 1]]), 10)]
    d, i = merge_topk(parts, 3, "l2")
    assert i.tolist() == [[10, 3, 11]] and d.tolist() == [[0.1, 0.5, 0.7]]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_sharded_search_equals_exact(tmp_path, metric, local_ray):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 16)).astype(np.float32)
    x[500] = x[10]  # an exact tie across shards
    q = rng.normal(size=(7, 16)).astype(np.float32)
    q[0] = x[10]
    score = cdist(q, x, "sqeuclidean") if metric == "l2" else -(q.astype(np.float64) @ x.T)
    want = np.argsort(score, axis=1, kind="stable")[:, :25]
    np.save(tmp_path / "x.npy", x)
    for ex in (None, make_executor("ray", workers=2)):
        for src, rows in ((x, 130), (tmp_path / "x.npy", 300)):
            d, i = sharded_search(q, src, 25, metric=metric, shard_rows=rows, executor=ex)
            np.testing.assert_array_equal(i, want)
            sgn = 1 if metric == "l2" else -1
            np.testing.assert_allclose(d, sgn * np.take_along_axis(score, want, axis=1), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------
# the engine on every executor


@pytest.mark.parametrize("sigma,index", [(0.0, "auto"), (0.75, "auto")])
def test_engine_same_in_process_local_executor_and_ray(tsds_data, local_ray, sigma, index):
    q, x, path = tsds_data
    kw = dict(sigma=sigma, max_k=300, kde_k=100, seed=0, normalize=True, index=index)
    ref = tsds(q, x, **kw)  # in process, one shard
    assert ref.info["execution"]["shards"] == 1
    runs = [(LocalExecutor(), x), (LocalExecutor(), path), (make_executor("ray", workers=2), x),
            (make_executor("ray", workers=2), path)]
    for ex, cands in runs:
        got = tsds(q, cands, executor=ex, shard_rows=700, **kw)
        assert got.info["execution"]["shards"] == 6 and got.info["execution"]["executor"] == ex.name
        np.testing.assert_array_equal(got.p, ref.p)
        np.testing.assert_array_equal(got.neighbor_ids, ref.neighbor_ids)
        np.testing.assert_array_equal(got.neighbor_dist, ref.neighbor_dist)
        np.testing.assert_array_equal(got.rho, ref.rho)
        assert got.info["prefetched"] == ref.info["prefetched"]
        assert got.info["search_cut_uncertified"] == 0
    assert x.flags.writeable and np.abs(np.linalg.norm(x[:5], axis=1) - 1).max() > 1e-3  # input untouched


def test_engine_matches_float64_brute_force(tsds_data):
    """The float32 search with a float64 cut and the pruned range KDE give the plain float64
    computation's answer (every distance, every density, full sort)."""
    from tasksift.methods.tsds import kde_exact, l2_normalize, water_filling

    q, x, _ = tsds_data
    got = tsds(q, x, max_k=300, kde_k=100, normalize=True, shard_rows=900)
    q64, x64 = l2_normalize(q.astype(np.float64)), l2_normalize(x.astype(np.float64))
    D = cdist(q64, x64)
    ids = np.argsort(D, axis=1, kind="stable")[:, :300]
    dist = np.take_along_axis(D, ids, axis=1)
    U = np.unique(ids)
    rho = np.ones(len(x))
    rho[U], _ = kde_exact(x64[U], 0.75, 100)
    gamma, s, _ = water_filling(dist, ids, rho[ids], alpha=0.5, C=5.0)
    p = np.bincount(ids.ravel(), weights=gamma.ravel(), minlength=len(x))
    # the same lists (the engine normalises float32 input in float32: near-ties may swap)
    np.testing.assert_array_equal(np.sort(got.neighbor_ids, axis=1), np.sort(ids, axis=1))
    assert np.abs(got.p - p / p.sum()).sum() < 1e-6
    known = ~np.isnan(got.rho)
    np.testing.assert_allclose(got.rho[known], rho[known], rtol=1e-6)


def test_engine_bad_rows_named_in_any_shard(tmp_path):
    from tasksift.errors import DataError

    q, x = _clustered(500, 4)
    x[333, 5] = np.nan
    np.save(tmp_path / "x.npy", x)
    for cands in (x, tmp_path / "x.npy"):
        with pytest.raises(DataError, match="row 333"):
            tsds(q, cands, shard_rows=100, max_k=50)


def test_engine_killed_tasks_are_retried(tsds_data, local_ray, tmp_path):
    q, x, path = tsds_data
    kw = dict(sigma=0.75, max_k=300, kde_k=100, seed=0, normalize=True, shard_rows=700)
    ref = tsds(q, path, **kw)
    got = tsds(q, path, executor=make_executor("ray", workers=2), kill_once_dir=str(tmp_path), **kw)
    # one search task and one density task really killed their worker process mid-run
    assert (tmp_path / "killed-search").exists() and (tmp_path / "killed-kde").exists()
    np.testing.assert_array_equal(got.p, ref.p)
    np.testing.assert_array_equal(got.neighbor_ids, ref.neighbor_ids)
    pids = {t["pid"] for t in got.info["execution"]["tasks"]}
    assert int((tmp_path / "killed-search").read_text()) not in pids  # its work was redone elsewhere


def test_tsds_method_uses_the_context_backend(tsds_data, local_ray):
    from tasksift.data.example import Example
    from tasksift.exec import make_executor
    from tasksift.methods.base import SelectionContext
    from tasksift.methods.registry import get_method

    def examples(n):
        return [Example(messages=[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
                        raw={}, row=i) for i in range(n)]

    q, x, _ = tsds_data
    out = {}
    for backend in ("local", "ray"):
        ctx = SelectionContext(examples(len(x)), examples(len(q)), seed=3, progress=False,
                               executor=make_executor(backend, workers=2))
        ctx.set_embeddings("pool", x)
        ctx.set_embeddings("target", q)
        out[backend] = get_method("tsds")(max_k=300, kde_k=100, shard_rows=1000).select(ctx, 50)
    np.testing.assert_array_equal(out["ray"].indices, out["local"].indices)
    np.testing.assert_array_equal(out["ray"].scores, out["local"].scores)
    info = out["ray"].info["execution"]
    assert info["shards"] == 4 and info["executor"] == "ray" and "tasks" not in info


@pytest.mark.parametrize("threads", [1, 2, None])
def test_engine_result_does_not_depend_on_blas_threads(tsds_data, threads):
    from tasksift.errors import ConfigError

    q, x, _ = tsds_data
    ref = tsds(q, x, max_k=300, kde_k=100, seed=0)
    got = tsds(q, x, max_k=300, kde_k=100, seed=0, blas_threads=threads)
    assert np.abs(got.p - ref.p).sum() < 1e-12
    np.testing.assert_array_equal(got.neighbor_ids, ref.neighbor_ids)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="blas_threads"):
            tsds(q, x, max_k=300, blas_threads=bad)


def _near_ties(m_tied=2, n=400, d=8, seed=3):
    """Queries with many candidates at float32-equal but float64-distinct distances, the
    float64-nearest having the highest ids (the float32 ties go to the lowest ids)."""
    rng = np.random.default_rng(seed)
    q = np.zeros((m_tied + 2, d))
    q[:, 0] = 1.0
    q[m_tied:] = rng.standard_normal((2, d))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    # x_j = cos(t_j) e0 + sin(t_j) u_j: distance to e0 is 2 sin(t_j / 2), t_j falling with j
    # by steps float32 cannot see
    t = 0.6 - 1e-11 * np.arange(n)
    u = rng.standard_normal((n, d))
    u[:, 0] = 0
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    x = np.cos(t)[:, None] * np.eye(d)[0] + np.sin(t)[:, None] * u
    return q, x


@pytest.mark.parametrize("as_path", [False, True])
def test_uncertified_queries_are_searched_again_exactly(tmp_path, as_path):
    """Near-ties at the cut that the float32 search cannot order: the engine notices (the
    float32 bound does not certify those queries), searches them again and returns the
    plain float64 computation's lists and probabilities."""
    from tasksift.methods.tsds import kde_exact, water_filling

    q, x = _near_ties()
    src = x
    if as_path:
        src = tmp_path / "x.npy"
        np.save(src, x)
    L = 40
    got = tsds(q, src, max_k=L, kde_k=30, sigma=0.3, margin=2, shard_rows=150)
    assert got.info["search_cut_uncertified"] >= 2
    assert got.info["search_researched_rows"] >= 2 * L
    D = cdist(q, x)
    ids = np.lexsort((np.broadcast_to(np.arange(len(x)), D.shape), D), axis=1)[:, :L]
    np.testing.assert_array_equal(got.neighbor_ids, ids)
    assert (ids[:2] >= len(x) - L).all()  # the float64-nearest are the highest ids
    dist = np.take_along_axis(D, ids, axis=1)
    np.testing.assert_allclose(got.neighbor_dist, dist, rtol=0, atol=1e-12)
    U = np.unique(ids)
    rho = np.ones(len(x))
    rho[U], _ = kde_exact(x[U], 0.3, 30)
    gamma, _, _ = water_filling(dist, ids, rho[ids], alpha=0.5, C=5.0)
    p = np.bincount(ids.ravel(), weights=gamma.ravel(), minlength=len(x))
    assert np.abs(got.p - p / p.sum()).sum() < 1e-9


@pytest.mark.parametrize("hugepages", [True, False, None])
def test_hugepage_advice_leaves_the_result_and_restores_numpys_setting(tsds_data, hugepages):
    from tasksift.errors import ConfigError
    from tasksift.methods.tsds.engine import hugepage_switch

    q, x, _ = tsds_data
    switch = hugepage_switch()
    before = switch(True)
    try:
        ref = tsds(q, x, max_k=300, kde_k=100, seed=0)
        got = tsds(q, x, max_k=300, kde_k=100, seed=0, hugepages=hugepages)
        assert switch(True) is True  # the setting in force before the calls is back
    finally:
        switch(before)
    assert np.abs(got.p - ref.p).sum() < 1e-12
    np.testing.assert_array_equal(got.neighbor_ids, ref.neighbor_ids)
    with pytest.raises(ConfigError, match="hugepages"):
        tsds(q, x, max_k=300, hugepages="no")


def test_reuse_memory_leaves_the_result_unchanged(tsds_data):
    from tasksift.errors import ConfigError

    q, x, _ = tsds_data
    on = tsds(q, x, max_k=300, kde_k=100, seed=0)
    off = tsds(q, x, max_k=300, kde_k=100, seed=0, reuse_memory=False)
    np.testing.assert_array_equal(on.p, off.p)
    np.testing.assert_array_equal(on.neighbor_ids, off.neighbor_ids)
    with pytest.raises(ConfigError, match="reuse_memory"):
        tsds(q, x, max_k=300, reuse_memory="yes")
