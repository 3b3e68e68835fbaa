"""Embeddings through the feature store: hits, a cache key per rendering, resume after a run
killed mid-way, and the store's folder layout (the store itself: tests/test_store.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from tasksift.data.example import Example
from tasksift.features.embed import EmbedConfig, Embedder
from tasksift.store.segment import read_field, read_header


def _examples(n: int) -> list[Example]:
    return [Example(messages=[{"role": "user", "content": f"how many apples {i}"},
                              {"role": "assistant", "content": f"the answer is {i * 7}"}], raw={}, row=i + 1)
            for i in range(n)]


def test_embedder_second_run_computes_nothing(tmp_path, tiny_embed_model):
    exs = _examples(12)
    cfg = EmbedConfig(model=tiny_embed_model)
    e1 = Embedder(cfg, cache_dir=tmp_path, progress=False)
    a = e1.embed(exs)
    assert a.shape == (12, 32) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    e2 = Embedder(cfg, cache_dir=tmp_path, progress=False)
    e2.encode_texts = lambda texts: (_ for _ in ()).throw(AssertionError("recomputed"))
    assert np.array_equal(e2.embed(exs), a)
    # batched computation equals one-at-a-time
    single = np.vstack([e1.encode_texts([t]) for t in [ex.text for ex in exs[:4]]])
    assert np.allclose(single, a[:4], atol=1e-5)
    # a different text rendering is a different cache entry
    e3 = Embedder(EmbedConfig(model=tiny_embed_model, text="prompt"), cache_dir=tmp_path, progress=False)
    assert not np.allclose(e3.embed(exs), a)


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_cache import _examples
    from tasksift.features.embed import EmbedConfig, Embedder
    e = Embedder(EmbedConfig(model={model!r}), cache_dir={cache!r}, progress=False)
    orig = e.encode_texts
    def slow(texts):
        time.sleep(0.3)
        return orig(texts)
    e.encode_texts = slow
    e.embed(_examples(40), flush_every=5)
    print("finished")
""")


def test_resume_after_kill(tmp_path, tiny_embed_model):
    cache = tmp_path / "cache"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), model=tiny_embed_model, cache=str(cache)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.rglob("seg-*.seg"))) < 3:
        time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(cache.rglob("seg-*.seg")))
    assert 3 <= done < 8, "the run was not killed mid-way"
    # A fresh run computes only the rest and gives the same numbers as an uninterrupted run.
    e = Embedder(EmbedConfig(model=tiny_embed_model), cache_dir=cache, progress=False)
    computed = []
    orig = e.encode_texts
    e.encode_texts = lambda texts: (computed.append(len(texts)), orig(texts))[1]
    resumed = e.embed(_examples(40), flush_every=5)
    assert sum(computed) == 40 - 5 * done
    clean = Embedder(EmbedConfig(model=tiny_embed_model), cache_dir=tmp_path / "clean", progress=False)
    assert np.allclose(resumed, clean.embed(_examples(40)), atol=1e-6)
    # every segment the killed run left is complete (written to a temp file, then renamed)
    for seg in cache.rglob("seg-*.seg"):
        h = read_header(seg)
        assert h.rows == 5 and read_field(h, "values").shape == (5, 32)
