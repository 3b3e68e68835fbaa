"""Embedding precision, runtime and static models: dtype resolution, cache keys, static
distillation (offline, on the tiny test model), and the manifest's embedding block."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tasksift.errors import ConfigError
from tasksift.features import embed as embed_mod
from tasksift.features import embed_models as em
from tasksift.store import config_hash
from tasksift.features.embed import EmbedConfig, Embedder

TEXTS = ["the cat is good", "how many apples does the dog buy", "python function returns sum of list",
         "translate hello world to french", "the movie review was bad", "capital city of france"]


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    flags = em.cpu_flags(info)
    assert {"avx512_bf16", "avx512f"} <= flags and em.cpu_supports_bf16(flags)
    assert not em.cpu_supports_bf16({"fpu", "avx2", "avx512f"})
    assert em.cpu_supports_bf16({"amx_bf16"}) and em.cpu_supports_bf16({"fp", "asimd", "bf16"})  # ARM
    assert em.cpu_flags(tmp_path / "missing") == set()
    assert em.onnx_quantization_config(flags) == "avx512_vnni"
    assert em.onnx_quantization_config({"avx2"}) == "avx2"


def test_dtype_resolution(monkeypatch):
    bf16, plain = {"avx512_bf16"}, {"avx2"}
    assert em.resolve_dtype("auto", "cpu", flags=bf16) == "bfloat16"
    assert em.resolve_dtype("auto", "cpu", flags=plain) == "float32"
    for dt in ("float32", "bfloat16", "float16", "int8"):
        assert em.resolve_dtype(dt, "cpu", flags=plain) == dt        # explicit wins
    monkeypatch.setattr(em, "gpu_supports_bf16", lambda device: True)
    assert em.resolve_dtype("auto", "cuda") == "bfloat16"
    monkeypatch.setattr(em, "gpu_supports_bf16", lambda device: False)
    assert em.resolve_dtype("auto", "cuda:0") == "float16"
    assert em.resolve_dtype("auto", "mps") == "float32"
    assert em.resolve_dtype("auto", "cpu", runtime="onnx", flags=bf16) == "float32"
    assert em.resolve_dtype("int8", "cpu", runtime="onnx") == "int8"
    assert em.resolve_dtype("bfloat16", "cpu", model="static") is None   # static: looked-up vectors
    with pytest.raises(ConfigError, match="dtype must be one of"):
        em.resolve_dtype("fp8", "cpu")
    with pytest.raises(ConfigError, match="runtime must be one of"):
        em.resolve_dtype("auto", "cpu", runtime="tensorrt")
    with pytest.raises(ConfigError, match="CPU only"):
        em.resolve_dtype("int8", "cuda")
    with pytest.raises(ConfigError, match="float32 or int8"):
        em.resolve_dtype("bfloat16", "cpu", runtime="onnx")
    with pytest.raises(ConfigError, match="calibration"):
        em.resolve_dtype("int8", "cpu", runtime="openvino")


def test_batch_size_resolution():
    assert em.resolve_batch_size(None, "cpu") == em.CPU_BATCH_SIZE
    assert em.resolve_batch_size(None, "cpu", model="static") == em.STATIC_BATCH_SIZE
    assert em.resolve_batch_size(7, "cuda") == 7
    with pytest.raises(ConfigError):
        em.resolve_batch_size(0, "cpu")


def test_cache_key_differs_per_dtype_runtime_and_model(tiny_embed_model):
    base = dict(model=tiny_embed_model, device="cpu")
    configs = [EmbedConfig(**base, dtype=d) for d in ("float32", "bfloat16", "float16", "int8")]
    configs += [EmbedConfig(**base, dtype="int8", runtime="onnx"), EmbedConfig(**base, runtime="onnx"),
                EmbedConfig(model="static"), EmbedConfig(model="default", device="cpu", dtype="float32"),
                EmbedConfig(**base, dtype="float32", max_tokens=64)]
    hashes = [config_hash(c.cache_key()) for c in configs]
    assert len(set(hashes)) == len(hashes)
    # settings that do not change the vectors do not change the key
    same = EmbedConfig(**base, dtype="float32", batch_size=3, threads=1)
    assert config_hash(same.cache_key()) == hashes[0]
    # float32 on torch keys exactly as before dtype/runtime existed (older caches stay valid)
    legacy = {"model": embed_mod.model_fingerprint(tiny_embed_model), "text": "text", "max_chars": 4000,
              "max_tokens": None, "normalize": True}
    assert configs[0].cache_key() == legacy
    # "auto" keys as what it resolves to on this machine
    auto = EmbedConfig(**base)
    assert auto.cache_key() == EmbedConfig(**base, dtype=auto.resolved_dtype()).cache_key()


def test_precisions_embed_close_to_float32_and_cache_apart(tiny_embed_model, cache_dir):
    ref = Embedder(EmbedConfig(model=tiny_embed_model, device="cpu", dtype="float32"), cache_dir, progress=False)
    base = ref.encode_texts(TEXTS)
    assert np.allclose(np.linalg.norm(base, axis=1), 1, atol=1e-5)
    for dt in ("bfloat16", "float16", "int8"):
        e = Embedder(EmbedConfig(model=tiny_embed_model, device="cpu", dtype=dt), cache_dir, progress=False)
        v = e.encode_texts(TEXTS)
        assert v.dtype == np.float32 and v.shape == base.shape
        assert (np.sum(v * base, axis=1) > 0.99).all(), dt
        assert e.cache.dir != ref.cache.dir
    if em.cpu_supports_bf16():
        assert EmbedConfig(model=tiny_embed_model, device="cpu").resolved_dtype() == "bfloat16"


def test_tiny_model_tokenizer_knows_its_words(tiny_embed_model):
    """The fixture's tokenizer must tokenise its own words (it once mapped all to [UNK])."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_embed_model)
    assert tok.unk_token_id not in tok("the cat buys apples")["input_ids"]


def test_static_model_distilled_offline_on_first_use_and_cached(tiny_embed_model, cache_dir, monkeypatch):
    monkeypatch.setattr(embed_mod, "default_embed_model_path", lambda: tiny_embed_model)
    e = Embedder(EmbedConfig(model="static"), cache_dir, progress=False)
    v = e.encode_texts(TEXTS)
    assert v.shape == (len(TEXTS), 32) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)          # real, normalised vectors
    assert np.linalg.matrix_rank(v) >= len(TEXTS) - 1                     # rows differ
    models = sorted((e.cache.root / "models").iterdir())
    assert [p.name.startswith("static-") for p in models] == [True]        # one folder, no temp left
    assert json.loads((models[0] / "config.json").read_text())["model_type"] == "model2vec"
    # a second embedder reuses the distilled model (distillation would fail now)
    monkeypatch.setattr(em, "distill_static_model", lambda *a, **k: pytest.fail("distilled twice"))
    e2 = Embedder(EmbedConfig(model="static"), cache_dir, progress=False)
    assert np.allclose(e2.encode_texts(TEXTS), v)
    # the distilled folder, or static:<folder>, loads directly as a model2vec model
    for name in (str(models[0]), "static:" + str(models[0])):
        e3 = Embedder(EmbedConfig(model=name), cache_dir, progress=False)
        assert np.allclose(e3.encode_texts(TEXTS), v, atol=1e-6)
        assert e3.config.resolved_dtype() is None


def test_static_distillation_is_atomic(tiny_embed_model, tmp_path, monkeypatch):
    """A failed distillation leaves no folder behind (the next run starts clean)."""
    import model2vec.distill as m2v

    def broken(**kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(m2v, "distill", broken)
    dest = tmp_path / "models" / "static-x"
    with pytest.raises(ConfigError, match="boom"):
        em.distill_static_model(tiny_embed_model, dest)
    assert not dest.exists() and list((tmp_path / "models").iterdir()) == []


def test_bad_static_model_is_a_config_error(tmp_path):
    e = Embedder(EmbedConfig(model="static:" + str(tmp_path / "nope")), tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match="cannot load static"):
        e.model


def test_manifest_records_embedding_settings(tiny_embed_model, tmp_path):
    from tasksift import api

    rows = [{"instruction": f"question {i} about apples", "output": f"answer {i}"} for i in range(20)]
    target = [{"instruction": "how many apples", "output": "3"}]
    cfg = EmbedConfig(model=tiny_embed_model, device="cpu", dtype="float32", max_tokens=64, text="prompt")
    sel = api.select(rows, target, method="knn", count=3, embed=cfg, cache_dir=tmp_path / "c", progress=False)
    sel.save(tmp_path / "out")
    emb = json.loads((tmp_path / "out" / "manifest.json").read_text())["embedding"]
    assert emb["used"] is True
    assert emb["model"] == tiny_embed_model and emb["model_fingerprint"] == embed_mod.model_fingerprint(tiny_embed_model)
    assert (emb["text"], emb["max_tokens"], emb["dtype"], emb["runtime"], emb["device"]) == \
        ("prompt", 64, "float32", "torch", "cpu")
    assert emb["max_chars"] == 4000 and emb["normalize"] is True and emb["batch_size"] == em.CPU_BATCH_SIZE
    sel = api.select(rows, target, method="random", count=3, embed=cfg, cache_dir=tmp_path / "c", progress=False)
    assert sel.manifest()["embedding"] == {"used": False}


def test_cli_embedding_flags_reach_the_config():
    from tasksift.cli import build_parser, embed_config, resolve_settings

    args = build_parser().parse_args(["select", "--pool", "p.jsonl", "--target", "t.jsonl", "--out", "o",
                                      "--ratio", "0.1", "--embed-dtype", "int8", "--embed-runtime", "onnx",
                                      "--embed-threads", "2", "--embed-batch-size", "16",
                                      "--embed-model", "static"])
    c = embed_config(resolve_settings(args))
    assert (c.dtype, c.runtime, c.threads, c.batch_size, c.model) == ("int8", "onnx", 2, 16, "static")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["select", "--embed-dtype", "fp8"])
