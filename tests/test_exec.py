"""The executor seam: local and Ray executors give the same results; a worker is built once per
worker process; a Ray worker that dies is retried."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasksift.errors import ConfigError
from tasksift.exec import Executor, LocalExecutor, make_executor


def square_plus(x, *, offset=0):
    return x * x + offset


class CountingFactory:
    """Each built worker returns (payload * 10, how many workers this process has built)."""

    built = 0

    def __eq__(self, other):
        return isinstance(other, CountingFactory)

    def __hash__(self):
        return 1

    def __call__(self):
        CountingFactory.built += 1
        n = CountingFactory.built
        return lambda payload: (payload * 10, n)


def test_local_tasks_in_order_with_shared():
    ex = make_executor("local")
    assert isinstance(ex, Executor) and ex.workers == 1
    got = list(ex.map_tasks(square_plus, ((i, (i,)) for i in range(5)), shared={"offset": 1}))
    assert got == [(i, i * i + 1) for i in range(5)]


def test_local_worker_built_once_across_calls():
    CountingFactory.built = 0
    ex = LocalExecutor()
    a = list(ex.map_blocks(CountingFactory(), [("a", 1), ("b", 2)]))
    b = list(ex.map_blocks(CountingFactory(), [("c", 3)]))
    assert a == [("a", (10, 1)), ("b", (20, 1))] and b == [("c", (30, 1))]
    assert CountingFactory.built == 1


def test_calls_are_consumed_lazily():
    pulled = []

    def calls():
        for i in range(3):
            pulled.append(i)
            yield i, (i,)

    it = LocalExecutor().map_tasks(square_plus, calls())
    assert next(it) == (0, 0) and pulled == [0]


def test_unknown_backend_is_one_line_error():
    with pytest.raises(ConfigError, match="backend must be one of"):
        make_executor("dask")


def test_ray_imported_by_one_module_only():
    src = Path(__file__).resolve().parents[1] / "src" / "tasksift"
    importers = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                       if any(line.strip().startswith(("import ray", "from ray"))
                              for line in p.read_text(encoding="utf-8").splitlines()))
    assert importers == ["exec/ray.py"], importers


ray = None


@pytest.fixture(scope="module")
def ray_executor():
    global ray
    ray = pytest.importorskip("ray")
    here = str(Path(__file__).parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield make_executor("ray", workers=2)
    ray.shutdown()


def die_once(x, marker):
    if x == 2 and not os.path.exists(marker):
        Path(marker).write_text("died")
        os._exit(1)
    return x + 100


class DieOnceBlockFactory:
    def __init__(self, marker):
        self.marker = marker

    def __call__(self):
        return lambda payload: die_once(payload, self.marker)


def test_ray_tasks_equal_local_and_retry_a_dead_worker(ray_executor, tmp_path):
    calls = [(i, (i,)) for i in range(6)]
    local = dict(LocalExecutor().map_tasks(square_plus, calls, shared={"offset": 2}))
    remote = dict(ray_executor.map_tasks(square_plus, calls, shared={"offset": 2}))
    assert remote == local
    marker = str(tmp_path / "died")
    got = dict(ray_executor.map_tasks(die_once, [(i, (i, marker)) for i in range(4)]))
    assert got == {i: i + 100 for i in range(4)} and os.path.exists(marker)


def test_ray_blocks_retry_a_dead_actor(ray_executor, tmp_path):
    marker = str(tmp_path / "died-actor")
    got = dict(ray_executor.map_blocks(DieOnceBlockFactory(marker), [(i, i) for i in range(5)]))
    assert got == {i: i + 100 for i in range(5)} and os.path.exists(marker)
