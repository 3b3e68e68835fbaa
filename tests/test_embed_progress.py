"""The embedding progress bar moves per batch (not per store block) and says how many rows
came from the cache."""
from __future__ import annotations

import numpy as np
import pytest

from tasksift.data.example import Example
from tasksift.exec import LocalExecutor
from tasksift.features.embed import EmbedConfig, Embedder


class RecordingBar:
    """Stands in for tqdm: keeps its settings and every update."""

    made: list["RecordingBar"] = []

    def __init__(self, total=None, initial=0, desc=None, disable=False, **_):
        self.total, self.n, self.desc, self.disable = total, initial, desc, disable
        self.initial, self.updates, self.postfix, self.closed = initial, [], "", False
        RecordingBar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)
        self.n += n

    def set_postfix_str(self, s):
        self.postfix = s

    def close(self):
        self.closed = True


@pytest.fixture()
def bars(monkeypatch):
    import tqdm.auto

    real = tqdm.auto.tqdm
    RecordingBar.made = []
    # the pipeline's bar counts rows; other bars (model loading) stay real
    monkeypatch.setattr(tqdm.auto, "tqdm",
                        lambda *a, **kw: RecordingBar(**kw) if kw.get("unit") == "row" else real(*a, **kw))
    return RecordingBar.made


def rows(n, start=0):
    return [Example(messages=[{"role": "user", "content": f"apples and pears number {i} " * (1 + i % 4)}],
                    raw={}, row=i) for i in range(start, start + n)]


class ElsewhereExecutor:
    """An executor that is not the in-process one (as a Ray cluster is not): blocks run
    somewhere a per-batch callback cannot reach, so the bar moves per block."""

    name, workers, in_process = "elsewhere", 1, False

    def __init__(self):
        self.inner = LocalExecutor()
        self.factories = []

    def map_tasks(self, fn, calls, *, shared=None):
        return self.inner.map_tasks(fn, calls, shared=shared)

    def map_blocks(self, factory, calls, *, accelerator=None):
        self.factories.append(factory)
        return self.inner.map_blocks(factory, calls, accelerator=accelerator)


def test_bar_moves_per_batch_and_counts_cached_rows(tiny_embed_model, cache_dir, bars):
    cfg = EmbedConfig(model=tiny_embed_model, device="cpu", batch_size=3)
    e = Embedder(cfg, cache_dir=cache_dir, progress=True)
    first = e.embed(rows(10), flush_every=10)            # one store block, four batches
    bar = bars[-1]
    assert bar.updates == [3, 3, 3, 1] and bar.n == bar.total == 10
    assert bar.initial == 0 and bar.postfix == "0 from cache" and bar.closed

    again = e.embed(rows(14), flush_every=10)            # 10 cached, 4 new: two batches
    bar = bars[-1]
    assert bar.initial == 10 and bar.postfix == "10 from cache"
    assert bar.updates == [3, 1] and bar.n == bar.total == 14
    np.testing.assert_allclose(again[:10], first, atol=1e-6)

    e.embed(rows(14))                                    # all cached: the bar still says so
    bar = bars[-1]
    assert bar.updates == [] and bar.n == bar.total == 14 and bar.postfix == "14 from cache" and bar.closed


def test_batches_keep_rows_in_order(tiny_embed_model, cache_dir):
    """Per-batch encoding (length-sorted, then restored) gives each row its own vector; an
    encode_texts replaced on the instance (as tests do) still sees every batch."""
    texts = [ex.text for ex in rows(11)]
    batched = Embedder(EmbedConfig(model=tiny_embed_model, device="cpu", batch_size=2),
                       cache_dir=cache_dir, progress=False)
    seen = []
    out = batched.compute_block(texts, on_rows=seen.append)["values"]
    assert seen == [2, 2, 2, 2, 2, 1]
    one_by_one = np.stack([batched.encode_texts([t])[0] for t in texts])
    np.testing.assert_allclose(out, one_by_one, atol=1e-5)
    calls = []
    batched.encode_texts = lambda t: (calls.append(len(t)), one_by_one[[texts.index(x) for x in t]])[1]
    np.testing.assert_array_equal(batched.compute_block(texts, on_rows=lambda n: None)["values"], one_by_one)
    assert calls == [2, 2, 2, 2, 2, 1]


def test_bar_moves_per_block_when_blocks_run_elsewhere(tiny_embed_model, cache_dir, bars):
    ex = ElsewhereExecutor()
    e = Embedder(EmbedConfig(model=tiny_embed_model, device="cpu", batch_size=3), cache_dir=cache_dir,
                 progress=True, executor=ex)
    e.embed(rows(10), flush_every=5)
    assert bars[-1].updates == [5, 5] and bars[-1].n == 10
    assert all(f.on_rows is None for f in ex.factories)  # no bar callback is shipped to a worker
