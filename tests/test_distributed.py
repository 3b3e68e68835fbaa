"""Ray backend: features (through the feature pipeline) equal the in-process backend's, a
killed worker is retried, and sharded neighbour search equals one exact index."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from tasksift.data.example import Example  # noqa: E402
from store_fixtures import ToyFeaturizer, logged_rows, toy_values  # noqa: E402
from tasksift.distributed import merge_topk, sharded_search  # noqa: E402
from tasksift.exec import LocalExecutor, make_executor  # noqa: E402
from tasksift.features.embed import EmbedConfig, Embedder  # noqa: E402
from tasksift.features.pipeline import compute_features, open_store  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    # workers must import the worker-function classes defined in this test module
    here = str(Path(__file__).parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def _examples(n):
    return [Example(messages=[{"role": "user", "content": f"question {i} about apples"},
                              {"role": "assistant", "content": f"answer {i * 3}"}], raw={}, row=i) for i in range(n)]


def test_ray_embeddings_equal_local(tmp_path, tiny_embed_model, local_ray):
    exs = _examples(30)
    cfg = EmbedConfig(model=tiny_embed_model)
    local = Embedder(cfg, cache_dir=tmp_path / "a", progress=False).embed(exs)
    remote = Embedder(cfg, cache_dir=tmp_path / "b", progress=False, executor=make_executor("ray", workers=2))
    got = remote.embed(exs, flush_every=7)
    assert remote._model is None                      # the workers embedded, not the driver
    assert got.shape == local.shape
    np.testing.assert_allclose(got, local, atol=1e-6)
    assert len(list((tmp_path / "b").rglob("seg-*.seg"))) == 5  # ceil(30 / 7) blocks, one segment each
    # cached now: a second ray run computes nothing (no actors are even started)
    again = Embedder(cfg, cache_dir=tmp_path / "b", progress=False, executor=make_executor("ray"))
    again.encode_texts = None
    np.testing.assert_array_equal(again.embed(exs), got)


def test_ray_features_equal_local_and_a_killed_worker_is_retried(tmp_path, local_ray):
    marker, log = tmp_path / "died", tmp_path / "log"
    f = ToyFeaturizer(log=str(log), die_on=4, marker=str(marker))
    rows = list(range(20))
    res = compute_features(f, rows, open_store(f, tmp_path / "c"), make_executor("ray", workers=2),
                           block_rows=3, progress=False)
    assert marker.exists()                            # a worker really died mid-run
    local = compute_features(ToyFeaturizer(), rows, open_store(f, tmp_path / "local"), LocalExecutor(),
                             block_rows=3, progress=False)
    for k, v in toy_values(rows).items():
        np.testing.assert_array_equal(res.values[k], v)
        np.testing.assert_array_equal(local.values[k], v)
    assert res.rows_computed == 20 and len(open_store(f, tmp_path / "c")) == 20
    # the block that died was computed again (and logged once: the dying worker logged nothing)
    assert logged_rows(log) == rows


def test_driver_rerun_computes_only_missing(tmp_path, local_ray):
    log = tmp_path / "log"
    f = ToyFeaturizer(log=str(log))
    open_store(f, tmp_path / "c").write(["r0", "r1"], toy_values([0, 1]))   # a previous run's
    res = compute_features(f, list(range(5)), open_store(f, tmp_path / "c"), make_executor("ray"),
                           block_rows=2, progress=False)
    assert logged_rows(log) == [2, 3, 4] and res.rows_cached == 2
    assert res.values["n"].tolist() == [0, 3, 6, 9, 12]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_sharded_search_equals_exact(tmp_path, metric, local_ray):
    import faiss

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 16)).astype(np.float32)
    x[500] = x[10]  # an exact tie across shards
    q = rng.normal(size=(7, 16)).astype(np.float32)
    q[0] = x[10]
    index = faiss.IndexFlatL2(16) if metric == "l2" else faiss.IndexFlatIP(16)
    index.add(x)
    D, I = index.search(q, 25)
    for backend in ("local", "ray"):
        d, i = sharded_search(q, x, 25, metric=metric, shard_rows=130, backend=backend)
        np.testing.assert_allclose(d, D, rtol=1e-5, atol=1e-4)
        # same neighbours; the exact tie (10, 500) may come in either order from faiss
        assert all(set(a) == set(b) for a, b in zip(i.tolist(), I.tolist()))
        assert set(i[0, :2].tolist()) == {10, 500}
    np.save(tmp_path / "x.npy", x)
    d, i = sharded_search(q, tmp_path / "x.npy", 25, metric=metric, shard_rows=300, backend="ray")
    np.testing.assert_allclose(d, D, rtol=1e-5, atol=1e-4)


def test_merge_topk_drops_missing_ids():
    parts = [(np.array([[0.5, np.inf]]), np.array([[3, -1]]), 0), (np.array([[0.1, 0.7]]), np.array([[0, 1]]), 10)]
    d, i = merge_topk(parts, 3, "l2")
    assert i.tolist() == [[10, 3, 11]] and d.tolist() == [[0.1, 0.5, 0.7]]


# ---------------------------------------------------------------------------------------
# distributed TSDS
# ---------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("sigma,index", [(0.0, "auto"), (0.75, "auto"), (0.75, "ivf")])
def test_tsds_ray_equals_in_process(tsds_data, local_ray, sigma, index):
    from tasksift.methods.tsds import tsds

    q, x, path = tsds_data
    kw = dict(sigma=sigma, max_k=300, kde_k=100, seed=0, normalize=True, index=index)
    ref = tsds(q, x, **kw)
    for cands in (x, path):  # an array, and a .npy path read by the workers
        got = tsds(q, cands, backend="ray", num_workers=2, shard_rows=700, **kw)
        assert got.info["distributed"]["shards"] == 6
        np.testing.assert_allclose(got.p, ref.p, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got.neighbor_ids, ref.neighbor_ids)
        np.testing.assert_allclose(got.neighbor_dist, ref.neighbor_dist, rtol=0, atol=1e-9)
        assert got.info["prefetched"] == ref.info["prefetched"]
        if sigma:
            np.testing.assert_allclose(got.rho, ref.rho, rtol=0, atol=1e-9)
            assert got.info["index"]["kde"] == ref.info["index"]["kde"]
    assert x.flags.writeable and np.abs(np.linalg.norm(x[:5], axis=1) - 1).max() > 1e-3  # input untouched


def test_tsds_ray_killed_tasks_are_retried(tsds_data, local_ray, tmp_path):
    from tasksift.distributed import tsds_ray

    q, x, path = tsds_data
    kw = dict(sigma=0.75, max_k=300, kde_k=100, seed=0, normalize=True)
    ref = tsds_ray(q, path, shard_rows=700, backend="local", **kw)
    got = tsds_ray(q, path, shard_rows=700, num_workers=2, _kill_once=str(tmp_path), **kw)
    # one search task and one KDE task really killed their worker process mid-run
    assert (tmp_path / "killed-search").exists() and (tmp_path / "killed-kde").exists()
    np.testing.assert_array_equal(got.p, ref.p)
    np.testing.assert_array_equal(got.neighbor_ids, ref.neighbor_ids)
    pids = {t["pid"] for t in got.info["distributed"]["tasks"]}
    assert int((tmp_path / "killed-search").read_text()) not in pids  # its work was redone elsewhere


def test_tsds_method_uses_ray_backend(tsds_data, local_ray):
    from tasksift.methods.base import SelectionContext
    from tasksift.methods.registry import get_method

    q, x, _ = tsds_data
    exs = _examples(len(x))
    targets = _examples(len(q))
    out = {}
    for backend in ("local", "ray"):
        ctx = SelectionContext(exs, targets, seed=3, progress=False, executor=make_executor(backend, workers=2))
        ctx.set_embeddings("pool", x)
        ctx.set_embeddings("target", q)
        out[backend] = get_method("tsds")(max_k=300, kde_k=100, shard_rows=1000).select(ctx, 50)
    np.testing.assert_array_equal(out["ray"].indices, out["local"].indices)
    np.testing.assert_allclose(out["ray"].scores, out["local"].scores, atol=1e-6)
    assert out["ray"].info["distributed"]["shards"] == 4 and "tasks" not in out["ray"].info["distributed"]


# ---------------------------------------------------------------------------------------
# LM loss features on Ray
# ---------------------------------------------------------------------------------------
def test_ray_lm_losses_equal_local(tmp_path, local_ray):
    pytest.importorskip("transformers")
    from lm_fixtures import sample_examples, save_tiny

    from tasksift.features.lm import LMConfig, LMFeaturizer, LMScorer

    model_dir = save_tiny(tmp_path / "tiny-llama")
    cfg = LMConfig(model=str(model_dir), max_length=48, device="cpu")
    exs = sample_examples(14)
    local = LMScorer(cfg, cache_dir=tmp_path / "a", progress=False).losses(exs, unconditional=True)
    remote = LMScorer(cfg, cache_dir=tmp_path / "b", progress=False, executor=make_executor("ray", workers=2))
    got = remote.losses(exs, unconditional=True, flush_every=4)
    assert remote.computed_rows == 2 * len(exs)
    np.testing.assert_allclose(got.loss, local.loss, rtol=0, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(got.uncond_loss, local.uncond_loss, rtol=0, atol=1e-6, equal_nan=True)
    for f in ("n_response_tokens", "n_tokens", "truncated", "status"):
        np.testing.assert_array_equal(getattr(got, f), getattr(local, f))
    assert not remote._lm.loaded                      # the workers scored, not the driver
    assert len(list((tmp_path / "b").rglob("seg-*.seg"))) == 2 * 4  # ceil(14 / 4) blocks per feature
    # the same row-level cache: a local scorer now finds every row there
    again = LMScorer(cfg, cache_dir=tmp_path / "b", progress=False)
    np.testing.assert_array_equal(again.losses(exs).loss, got.loss)
    assert again.computed_rows == 0
    import pickle

    shipped = pickle.loads(pickle.dumps(LMFeaturizer(cfg, "uncond", scorer=again)))
    assert shipped == LMFeaturizer(cfg, "uncond") and shipped._scorer is None


# ---------------------------------------------------------------------------------------
# LESS gradient features on Ray
# ---------------------------------------------------------------------------------------
def test_ray_gradient_features_equal_local(tmp_path, local_ray):
    pytest.importorskip("peft")
    from lm_fixtures import sample_examples, save_tiny

    from tasksift.features.grads import GradConfig, GradScorer
    from tasksift.features.lm import load_causal_lm
    from tasksift.finetune import finetune_lora

    model_dir = save_tiny(tmp_path / "tiny-llama")
    model, tok = load_causal_lm(str(model_dir), device="cpu")
    adapter = finetune_lora(model, sample_examples(8), tokenizer=tok, steps=4, lr=1e-2, r=4, alpha=8, batch_size=4,
                            max_length=64, seed=0, out_dir=tmp_path / "adapter", progress=False,
                            target_modules=["q_proj", "v_proj"])
    cfg = GradConfig(model=str(model_dir), adapter=str(adapter), max_length=64, proj_dim=64, device="cpu")
    exs = sample_examples(10)
    local = GradScorer(cfg, cache_dir=tmp_path / "a", progress=False).features(exs)
    remote = GradScorer(cfg, cache_dir=tmp_path / "b", progress=False, executor=make_executor("ray", workers=2))
    got = remote.features(exs, flush_every=4)
    assert np.isfinite(local.features).all() and (local.grad_norm > 0).all()
    np.testing.assert_allclose(got.features, local.features, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got.status, local.status)
    assert len(list((tmp_path / "b").rglob("seg-*.seg"))) == 3              # ceil(10 / 4) blocks
    again = GradScorer(cfg, cache_dir=tmp_path / "b", progress=False)
    np.testing.assert_array_equal(again.features(exs).features, got.features)
    assert again.computed_rows == 0
