"""Ray workers read their own blocks of a file-backed pool (tasksift.data.blocks): the driver
sends row references, never rows; the features equal the in-process run's on a generated
and on a real pool; a worker that dies mid-block is retried; the shared copy of the pool
file is removed when the pool goes."""
from __future__ import annotations

import gc
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA
from tasksift.data import load_examples
from tasksift.data.blocks import RowBlock, share_pool
from tasksift.data.pool import ArrowRows, Pool
from tasksift.errors import ConfigError
from tasksift.exec import LocalExecutor, make_executor
from tasksift.features.pipeline import POOL_FILES, compute_features, open_store

REAL_POOL = next((p for p in (SHARED_DATA / "pool", Path(os.environ.get("TASKSIFT_SHARED_DATA", "/nonexistent")) / "pool")
                  if p.is_dir()), None)


class TextStats:
    """A model-free featurizer of Examples: characters, words and row number of each text, the
    process that computed it, and a text checksum. ``die_row``: the first worker to see that
    row number kills its own process (once: ``marker``); ``log``: file of the computed rows
    (``source:row`` lines)."""

    kind = "textstats"
    accelerator = None

    def __init__(self, die_row: int | None = None, marker: str | None = None, log: str | None = None):
        self.die_row, self.marker, self.log = die_row, marker, log

    def cache_key(self) -> dict:
        return {"v": 1}

    def row_id(self, ex) -> str:
        return ex.id + ":stats"

    def block_item(self, ex):
        return ex.text, ex.row, ex.source or ""

    def compute_block(self, items: list) -> dict:
        rows = [row for _, row, _ in items]
        if self.die_row in rows and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        if self.log:
            with open(self.log, "a") as f:
                f.write("".join(f"{s}:{r}\n" for _, r, s in items))
        return {"chars": np.array([len(t) for t, _, _ in items]),
                "words": np.array([len(t.split()) for t, _, _ in items]),
                "row": np.array(rows),
                "sum": np.array([sum(t.encode()) % 1_000_003 + len(s) for t, _, s in items]),
                "pid": np.full(len(items), os.getpid())}


FIELDS = ("chars", "words", "row", "sum")


def write_target(path: Path) -> Path:
    """Five target examples about pears (for the pools of :func:`write_pool`)."""
    path.write_text("".join(json.dumps({"instruction": f"Question {i} about pears?", "output": "pears"}) + "\n"
                            for i in range(5)))
    return path


def write_pool(folder: Path, n: int) -> Path:
    """A folder of two files in two layouts, with a few rows repeated (duplicate ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    a = [{"instruction": f"Question {i} about apples and pears?", "input": "", "output": f"answer {i * 7}"}
         for i in range(n)]
    a += a[:5]                                    # repeated content: one id, computed once
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in a))
    b = [{"messages": [{"role": "user", "content": f"say {i} twice"}, {"role": "assistant", "content": f"{i} {i}"}]}
         for i in range(n // 2)]
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in b))
    return folder


def test_row_blocks_read_the_same_examples_as_the_pool(tmp_path):
    pool = load_examples(write_pool(tmp_path / "pool", 5000), role="pool").pool
    assert isinstance(pool.stored_rows()[0], ArrowRows)
    shared = share_pool(pool, tmp_path / "shared")
    assert share_pool(pool, tmp_path / "shared") is shared          # one copy per pool and folder
    rng = np.random.default_rng(0)
    view = pool.take(rng.permutation(len(pool))[:3000])               # scattered rows, both files
    idx = rng.permutation(len(view))[:1500]
    block = pickle.loads(pickle.dumps(shared.block(view, idx)))
    assert block.examples() == view.examples(idx)
    assert {ex.source for ex in block.examples()} == {"a.jsonl", "b.jsonl"}
    assert shared.block(view, []).examples() == []
    moved = RowBlock(str(tmp_path / "elsewhere" / "rows.arrow"), block.positions, block.columns)
    with pytest.raises(ConfigError, match="filesystem every worker shares"):
        moved.examples()
    # a reference is small: a few dozen bytes a row, far less than the rows themselves
    assert len(pickle.dumps(block)) < 64 * len(idx) < len(pickle.dumps(view.examples(idx)))


def test_in_memory_rows_are_not_shared(tmp_path):
    exs = load_examples(write_pool(tmp_path / "pool", 10), role="pool").pool.examples(range(5))
    assert share_pool(exs, tmp_path / "s") is None and share_pool(Pool.from_examples(exs), tmp_path / "s") is None


def test_shared_copy_goes_with_the_pool_and_orphans_are_removed(tmp_path):
    folder = tmp_path / "shared"
    pool = load_examples(write_pool(tmp_path / "pool", 50), role="pool").pool
    path = Path(share_pool(pool, folder).path)
    assert path.is_file()
    del pool
    gc.collect()
    assert not path.exists() and list(folder.iterdir()) == []
    # a copy left by a process of this host that was killed is removed when the next is made
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    import socket

    orphan = folder / f"{socket.gethostname()}-{dead}-0123456789ab"
    orphan.mkdir()
    (orphan / "rows.arrow").write_bytes(b"x")
    other_host = folder / f"elsewhere-{dead}-0123456789ab"
    other_host.mkdir()
    keep = load_examples(write_pool(tmp_path / "pool2", 50), role="pool").pool
    share_pool(keep, folder)
    assert not orphan.exists() and other_host.exists()


# ---------------------------------------------------------------------------------------
# on a local 2-worker Ray cluster
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_executor():
    ray = pytest.importorskip("ray")
    here = str(Path(__file__).parent)   # workers import TextStats from this module
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield make_executor("ray", workers=2)
    ray.shutdown()


def _no_driver_reads(monkeypatch):
    """Make every read of pool rows in this (the driver's) process fail."""
    def refuse(self, *a, **k):
        raise AssertionError("the driver read pool rows")

    monkeypatch.setattr(ArrowRows, "read", refuse)


def test_ray_workers_read_their_blocks_and_equal_local_and_a_dead_worker_is_retried(
        tmp_path, ray_executor, monkeypatch):
    pool = load_examples(write_pool(tmp_path / "pool", 3000), role="pool").pool
    local = compute_features(TextStats(), pool, open_store(TextStats(), tmp_path / "local"), LocalExecutor(),
                             block_rows=500, progress=False)
    marker, log = tmp_path / "died", tmp_path / "log"
    die_row = 1234
    f = TextStats(die_row=die_row, marker=str(marker), log=str(log))
    _no_driver_reads(monkeypatch)
    got = compute_features(f, pool, open_store(f, tmp_path / "ray"), ray_executor, block_rows=500, progress=False)
    monkeypatch.undo()
    assert marker.exists()                                    # a worker really died mid-block
    for k in FIELDS:
        np.testing.assert_array_equal(got.values[k], local.values[k])
    assert got.rows_computed == local.rows_computed == len(pool) - 5 and got.rows_cached == 0
    assert os.getpid() not in set(got.values["pid"].tolist())  # computed by the workers
    logged = log.read_text().split()
    assert len(logged) == len(set(logged)) == len(pool) - 5       # each row once: the dead block retried
    assert {f"a.jsonl:{die_row}", f"b.jsonl:{die_row}"} <= set(logged)
    # no copy of the pool is left once it is gone
    del pool
    gc.collect()
    assert list((tmp_path / "ray" / POOL_FILES).iterdir()) == []


def test_ray_rerun_sends_only_missing_rows(tmp_path, ray_executor, monkeypatch):
    pool = load_examples(write_pool(tmp_path / "pool", 400), role="pool").pool
    log = tmp_path / "log"
    f = TextStats(log=str(log))
    store = open_store(f, tmp_path / "c")
    first = compute_features(f, pool.take(np.arange(0, 400, 2)), store, ray_executor, block_rows=64, progress=False)
    assert first.rows_computed == 200
    log.unlink()
    _no_driver_reads(monkeypatch)
    res = compute_features(f, pool, store, ray_executor, block_rows=64, progress=False)
    assert res.rows_cached == 200 and res.rows_computed == len(pool) - 5 - 200
    rows = [f"{s}:{r}" for s, r in zip(pool.sources, pool.row_numbers)]
    assert sorted(log.read_text().split()) == sorted(rows[1:400:2] + rows[405:])


@pytest.mark.skipif(REAL_POOL is None, reason=f"real data not found at {SHARED_DATA} (set TASKSIFT_SHARED_DATA)")
def test_ray_equals_local_on_a_real_pool(tmp_path, ray_executor):
    pool = load_examples(REAL_POOL, role="pool", limit=1500, skip_bad=True).pool
    assert len(pool) == 1500 and len(set(pool.sources)) >= 2
    local = compute_features(TextStats(), pool, open_store(TextStats(), tmp_path / "a"), LocalExecutor(),
                             block_rows=256, progress=False)
    got = compute_features(TextStats(), pool, open_store(TextStats(), tmp_path / "b"), ray_executor,
                           block_rows=256, progress=False)
    for k in FIELDS:
        np.testing.assert_array_equal(got.values[k], local.values[k])
    assert got.rows_computed == local.rows_computed


@pytest.mark.slow   # ~40 s: actors load an embedding model
def test_ray_selection_equals_local_end_to_end(tmp_path, tiny_embed_model, ray_executor):
    from tasksift.api import select
    from tasksift.features.embed import EmbedConfig

    folder, target = write_pool(tmp_path / "pool", 300), write_target(tmp_path / "target.jsonl")
    kw = dict(method="knn", count=40, embed=EmbedConfig(model=tiny_embed_model), progress=False, seed=0)
    local = select(folder, target, cache_dir=tmp_path / "a", **kw)
    remote = select(folder, target, cache_dir=tmp_path / "b", backend=ray_executor, **kw)
    assert remote.ids == local.ids and list(remote.indices) == list(local.indices)
    assert remote.info["backend"] == "ray"


class ContentStats(TextStats):
    """TextStats whose store ids derive from the pool's content ids (``content_row_id``)."""

    kind = "contentstats"

    def content_row_id(self, content_id: str) -> str:
        return content_id + ":stats"


def test_ids_from_content_ids_skip_the_copy_and_every_read_when_all_rows_are_cached(
        tmp_path, ray_executor, monkeypatch):
    from tasksift.data import blocks as blocks_mod
    from tasksift.features import pipeline as pipeline_mod

    pool = load_examples(write_pool(tmp_path / "pool", 600), role="pool").pool
    local = compute_features(TextStats(), pool, open_store(TextStats(), tmp_path / "local"), LocalExecutor(),
                             block_rows=128, progress=False)
    log = tmp_path / "log"
    f = ContentStats(log=str(log))
    store = open_store(f, tmp_path / "c")
    # the workers read each row once (features only: no id pass), the driver none
    _no_driver_reads(monkeypatch)
    monkeypatch.setattr(pipeline_mod, "_remote_row_ids", lambda *a, **k: pytest.fail("an id pass over the rows"))
    first = compute_features(f, pool, store, ray_executor, block_rows=128, progress=False)
    assert first.rows_computed == len(pool) - 5
    assert len(log.read_text().split()) == len(pool) - 5
    for k in FIELDS:
        np.testing.assert_array_equal(first.values[k], local.values[k])
    # every row cached: no copy of the pool file, no row read anywhere
    monkeypatch.setattr(ArrowRows, "copy_to", lambda *a, **k: pytest.fail("the pool file was copied"))
    monkeypatch.setattr(blocks_mod.SharedPool, "__init__", lambda *a, **k: pytest.fail("a shared copy was made"))
    again = compute_features(f, pool, store, ray_executor, block_rows=128, progress=False)
    assert again.rows_computed == 0 and again.rows_cached == len(pool) - 5
    for k in FIELDS:
        np.testing.assert_array_equal(again.values[k], local.values[k])
    assert len(log.read_text().split()) == len(pool) - 5
