"""Ray backend: features equal the in-process backend's and a killed worker is retried
(sharded search and TSDS on Ray: tests/test_tsds_engine.py)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from tasksift.data.example import Example  # noqa: E402
from tasksift.distributed import get_or_compute_ray  # noqa: E402
from tasksift.features.cache import FeatureCache  # noqa: E402
from tasksift.features.embed import EmbedConfig, Embedder  # noqa: E402


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
    remote = Embedder(cfg, cache_dir=tmp_path / "b", progress=False, backend="ray", num_workers=2)
    got = remote.embed(exs, flush_every=7)
    assert got.shape == local.shape
    np.testing.assert_allclose(got, local, atol=1e-6)
    assert len(list((tmp_path / "b").rglob("shard-*.npz"))) == 5  # ceil(30 / 7) blocks, one shard each
    # cached now: a second ray run computes nothing (no actors are even started)
    again = Embedder(cfg, cache_dir=tmp_path / "b", progress=False, backend="ray")
    again.encode_texts = None
    np.testing.assert_array_equal(again.embed(exs), got)


class DieOnceFactory:
    """A worker function that kills its own process the first time it sees block 2."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self):
        def compute(items):
            if 2 in [int(x) for x in items] and not os.path.exists(self.marker):
                Path(self.marker).write_text("died")
                os._exit(1)
            return np.array([[float(x), float(x) ** 2] for x in items])

        return compute


def test_killed_worker_is_retried_and_result_complete(tmp_path, local_ray):
    cache = FeatureCache(tmp_path / "c", "toy", {"v": 1})
    ids = [f"r{i}" for i in range(10)]
    marker = tmp_path / "died"
    out = get_or_compute_ray(cache, ids, list(range(10)), DieOnceFactory(str(marker)), block_size=3,
                             num_workers=2, progress=False)
    assert marker.exists()  # a worker really died mid-run
    np.testing.assert_array_equal(out["values"], np.array([[i, i * i] for i in range(10)], float))
    # the cache holds every row exactly once per finished block
    assert len(FeatureCache(tmp_path / "c", "toy", {"v": 1})) == 10


def test_driver_rerun_computes_only_missing(tmp_path, local_ray):
    cache = FeatureCache(tmp_path / "c", "toy", {})
    cache.write_shard(["r0", "r1"], {"values": np.array([[0.0, 0.0], [1.0, 1.0]])})  # a previous run's
    seen = tmp_path / "seen"

    class Recording:
        def __call__(self):
            def compute(items):
                with open(seen, "a") as f:
                    f.write("".join(f"{x}\n" for x in items))
                return np.array([[float(x), float(x) ** 2] for x in items])
            return compute

    out = get_or_compute_ray(cache, [f"r{i}" for i in range(5)], list(range(5)), Recording(), block_size=2,
                             progress=False)
    assert sorted(int(x) for x in seen.read_text().split()) == [2, 3, 4]
    assert out["values"][:, 0].tolist() == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------
# LM loss features on Ray
# ---------------------------------------------------------------------------------------
def test_ray_lm_losses_equal_local(tmp_path, local_ray):
    pytest.importorskip("transformers")
    from lm_fixtures import sample_examples, save_tiny

    from tasksift.features.lm import LMConfig, LMScorer, LMWorkerFactory

    model_dir = save_tiny(tmp_path / "tiny-llama")
    cfg = LMConfig(model=str(model_dir), max_length=48, device="cpu")
    exs = sample_examples(14)
    local = LMScorer(cfg, cache_dir=tmp_path / "a", progress=False).losses(exs, unconditional=True)
    remote = LMScorer(cfg, cache_dir=tmp_path / "b", progress=False, backend="ray", num_workers=2)
    got = remote.losses(exs, unconditional=True, flush_every=4)
    assert remote.computed_rows == 2 * len(exs)
    np.testing.assert_allclose(got.loss, local.loss, rtol=0, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(got.uncond_loss, local.uncond_loss, rtol=0, atol=1e-6, equal_nan=True)
    for f in ("n_response_tokens", "n_tokens", "truncated", "status"):
        np.testing.assert_array_equal(getattr(got, f), getattr(local, f))
    assert len(list((tmp_path / "b").rglob("shard-*.npz"))) == 2 * 4  # ceil(14 / 4) blocks per feature
    # the same row-level cache: a local scorer now finds every row there
    again = LMScorer(cfg, cache_dir=tmp_path / "b", progress=False)
    np.testing.assert_array_equal(again.losses(exs).loss, got.loss)
    assert again.computed_rows == 0
    import pickle

    assert pickle.loads(pickle.dumps(LMWorkerFactory(cfg, "uncond"))) == LMWorkerFactory(cfg, "uncond")


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
    remote = GradScorer(cfg, cache_dir=tmp_path / "b", progress=False, backend="ray", num_workers=2)
    got = remote.features(exs, flush_every=4)
    assert np.isfinite(local.features).all() and (local.grad_norm > 0).all()
    np.testing.assert_allclose(got.features, local.features, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got.status, local.status)
    assert len(list((tmp_path / "b").rglob("shard-*.npz"))) == 3            # ceil(10 / 4) blocks
    again = GradScorer(cfg, cache_dir=tmp_path / "b", progress=False)
    np.testing.assert_array_equal(again.features(exs).features, got.features)
    assert again.computed_rows == 0
