"""Ray backend: features (through the feature pipeline) equal the in-process backend's and a
killed worker is retried (sharded search and TSDS on Ray: tests/test_tsds_engine.py)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from tasksift.data.example import Example  # noqa: E402
from store_fixtures import ToyFeaturizer, logged_rows, toy_values  # noqa: E402
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
