"""The process executor: every key once, shared arguments inherited (not pickled) under fork,
dead workers replaced and their calls rerun, block workers built once per process, and TSDS
and a whole selection giving the same result as in this process."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tasksift.errors import ConfigError
from tasksift.exec import LocalExecutor, make_executor
from tasksift.exec.processes import BrokenProcessPool, ProcessExecutor, start_method

fork_only = pytest.mark.skipif(start_method() != "fork", reason="needs the fork start method (Linux)")


class NotPicklable:
    """A shared argument that fails if it is ever pickled."""

    def __init__(self, value: np.ndarray) -> None:
        self.value = value

    def __reduce__(self):
        raise TypeError("shared arguments must be inherited, not pickled")


def add_task(i: int, *, base: np.ndarray) -> tuple[int, float]:
    return os.getpid(), float(base.sum() + i)


def inherited_task(i: int, *, obj: NotPicklable) -> float:
    return float(obj.value[i])


def die_first_task(i: int, marker: str, *, base: np.ndarray) -> float:
    if i == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return float(base[i])


def always_die_task(i: int) -> None:
    os._exit(1)


class Counter:
    """A block worker factory: each worker counts the blocks it handled."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Counter)

    def __hash__(self) -> int:
        return 7

    def __call__(self):
        state = {"n": 0}

        def work(payload: int) -> tuple[int, int, int]:
            state["n"] += 1
            return os.getpid(), state["n"], payload * 2

        return work


def test_map_tasks_returns_every_key_once_with_the_shared_arguments():
    ex = ProcessExecutor(workers=2)
    base = np.arange(10.0)
    got = dict(ex.map_tasks(add_task, ((i, (i,)) for i in range(25)), shared={"base": base}))
    assert sorted(got) == list(range(25))
    assert all(v[1] == 45.0 + k for k, v in got.items())
    assert os.getpid() not in {v[0] for v in got.values()} and len({v[0] for v in got.values()}) <= 2
    local = dict(LocalExecutor().map_tasks(add_task, ((i, (i,)) for i in range(25)), shared={"base": base}))
    assert {k: v[1] for k, v in got.items()} == {k: v[1] for k, v in local.items()}


@fork_only
def test_shared_arguments_reach_forked_workers_without_pickling():
    ex = ProcessExecutor(workers=2)
    obj = NotPicklable(np.arange(6.0) * 3)
    assert dict(ex.map_tasks(inherited_task, ((i, (i,)) for i in range(6)), shared={"obj": obj})) == \
        {i: 3.0 * i for i in range(6)}


def test_a_dead_worker_is_replaced_and_its_calls_rerun(tmp_path):
    ex = ProcessExecutor(workers=2)
    marker = str(tmp_path / "died")
    got = dict(ex.map_tasks(die_first_task, ((i, (i, marker)) for i in range(12)), shared={"base": np.arange(12.0)}))
    assert os.path.exists(marker) and got == {i: float(i) for i in range(12)}
    with pytest.raises(BrokenProcessPool, match="died 2 times"):
        dict(ProcessExecutor(workers=1, retries=1).map_tasks(always_die_task, [(0, (0,))]))


def test_block_workers_are_built_once_per_process_and_kept():
    ex = ProcessExecutor(workers=2)
    try:
        first = dict(ex.map_blocks(Counter(), ((i, i) for i in range(10))))
        assert {k: v[2] for k, v in first.items()} == {i: 2 * i for i in range(10)}
        pids = {v[0] for v in first.values()}
        assert len(pids) <= 2
        assert sum(max(v[1] for v in first.values() if v[0] == p) for p in pids) == 10   # one worker a process
        again = dict(ex.map_blocks(Counter(), ((i, i) for i in range(4))))
        assert {v[0] for v in again.values()} <= pids             # the same processes
        seen = list(first.values()) + list(again.values())
        assert sum(max(v[1] for v in seen if v[0] == p) for p in pids) == 14   # their workers counted on
    finally:
        ex.close()


def test_make_executor_builds_and_checks_it():
    ex = make_executor("processes", workers=3)
    assert isinstance(ex, ProcessExecutor) and ex.workers == 3 and not ex.in_process
    assert make_executor("processes").workers >= 1
    with pytest.raises(ConfigError, match="workers"):
        make_executor("processes", workers=0)


def _clustered(n: int, d: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d))
    x = centres[rng.integers(0, 12, n)] + 0.4 * rng.standard_normal((n, d))
    x = np.vstack([x, x[:40]])                                 # exact duplicates
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(len(x), m, replace=False)] + 0.05 * rng.standard_normal((m, d))
    return q.astype(np.float32), x.astype(np.float32)


@pytest.mark.parametrize("path", [False, True])
def test_tsds_on_processes_equals_tsds_here(tmp_path, path):
    from tasksift.methods.tsds.engine import tsds

    q, x = _clustered(3000, 24, 30)
    src = x
    if path:
        src = str(tmp_path / "x.npy")
        np.save(src, x)
    kw = dict(seed=0, max_k=300, kde_k=60, sigma=0.8, alpha=0.5, C=5.0)
    here = tsds(q, x, **kw)
    ex = ProcessExecutor(workers=2)
    there = tsds(q, src, executor=ex, kill_once_dir=str(tmp_path), **kw)     # first search + kde tasks die once
    assert os.path.exists(tmp_path / "killed-search") and os.path.exists(tmp_path / "killed-kde")
    np.testing.assert_array_equal(there.p, here.p)
    np.testing.assert_array_equal(there.neighbor_ids, here.neighbor_ids)
    np.testing.assert_array_equal(there.rho, here.rho)
    info = there.info["execution"]
    assert info["executor"] == "processes" and info["shards"] == 2          # one shard per worker by default
    assert os.getpid() not in {t["pid"] for t in info["tasks"] if t["stage"] in ("search", "kde")}


def test_pool_features_on_processes_equal_local_and_a_dead_worker_is_retried(tmp_path):
    from tasksift.data import load_examples
    from tasksift.features.pipeline import compute_features, open_store
    from test_ray_pool import FIELDS, TextStats, write_pool

    pool = load_examples(write_pool(tmp_path / "pool", 1200), role="pool").pool
    local = compute_features(TextStats(), pool, open_store(TextStats(), tmp_path / "local"), LocalExecutor(),
                             block_rows=200, progress=False)
    marker, log = tmp_path / "died", tmp_path / "log"
    f = TextStats(die_row=345, marker=str(marker), log=str(log))
    ex = ProcessExecutor(workers=2)
    try:
        got = compute_features(f, pool, open_store(f, tmp_path / "procs"), ex, block_rows=200, progress=False)
    finally:
        ex.close()
    assert marker.exists()                                        # a worker died mid-block
    for k in FIELDS:
        np.testing.assert_array_equal(got.values[k], local.values[k])
    assert os.getpid() not in set(got.values["pid"].tolist())      # computed by the workers
    logged = log.read_text().split()
    assert len(set(logged)) == local.rows_computed                  # every row, the dead block's again
    assert len(logged) - len(set(logged)) <= 2 * ex.workers * 200     # reruns: at most the calls in flight


@pytest.mark.slow   # ~40 s on 2 busy cores: each worker loads the embedding model
def test_selection_on_processes_equals_local_end_to_end(tmp_path, tiny_embed_model):
    from tasksift.api import select
    from tasksift.features.embed import EmbedConfig
    from test_ray_pool import write_pool, write_target

    folder, target = write_pool(tmp_path / "pool", 300), write_target(tmp_path / "target.jsonl")
    kw = dict(method="tsds", count=40, embed=EmbedConfig(model=tiny_embed_model), progress=False, seed=0)
    local = select(folder, target, cache_dir=tmp_path / "a", **kw)
    there = select(folder, target, cache_dir=tmp_path / "b", backend="processes", num_workers=2, **kw)
    assert there.ids == local.ids and list(there.indices) == list(local.indices)
    assert there.info["backend"] == "processes"
