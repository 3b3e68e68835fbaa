"""The process executor: blocks run in worker processes on this machine, one per core.

For one machine with several cores and no cluster: :meth:`ProcessExecutor.map_tasks` starts
``workers`` processes for each new set of ``shared`` arguments, which on Linux are forks of
this one, so the large read-only ``shared`` arguments (a query matrix, the prefetched rows of TSDS) reach every
worker without a copy (copy-on-write pages); elsewhere (``spawn``) they are pickled once
per worker. Each call's own arguments and its result travel by pickle, so tasks take small
arguments (row ranges, index arrays) and return small results. Workers run one BLAS thread
each (the cores are the workers'). A worker process that dies breaks the pool: a fresh pool
runs again every call not yet handed back (the dead worker's, and the others then in flight:
tasks are stateless), up to ``retries`` times per map. Workers of :meth:`map_tasks` are kept
while later calls share the very same objects (TSDS asks for densities several times against
one prefetched set); shared arguments must not change while a map uses them.

:meth:`map_blocks` keeps one pool of workers, each built by ``factory()`` once, for the
executor's life: a model is loaded once per worker however many blocks follow. Payloads
(e.g. texts) are pickled to the workers. ``in_process`` is False: featurizers hand workers
row ranges to read themselves, as with Ray.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping

from ..errors import ConfigError
from .base import WorkerFactory

_SHARED: Mapping[str, Any] = {}
_WORKER: Callable[[Any], Any] | None = None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def start_method() -> str:
    """``fork`` on Linux (workers share this process's pages), else ``spawn``."""
    return "fork" if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods() else "spawn"


def _one_blas_thread() -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)   # held for the worker's life


def _init_tasks(shared: Mapping[str, Any]) -> None:
    global _SHARED
    _SHARED = shared
    _one_blas_thread()


def _run_task(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(*args, **_SHARED)


def _init_blocks(factory: WorkerFactory) -> None:
    global _WORKER
    _one_blas_thread()
    _WORKER = factory()


def _run_block(payload: Any) -> Any:
    assert _WORKER is not None
    return _WORKER(payload)


class ProcessExecutor:
    """Runs tasks and blocks on ``workers`` local processes (default: one per available core).

    ``retries``: how many times a map replaces a dead worker and reruns its unfinished calls
    before the error (BrokenProcessPool) propagates.
    """

    name = "processes"
    in_process = False

    def __init__(self, workers: int | None = None, *, retries: int = 3) -> None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
        self.workers = int(workers or available_cores())
        self.retries = int(retries)
        self._context = mp.get_context(start_method())
        self._block_pools: dict[Any, ProcessPoolExecutor] = {}   # factory -> its workers
        #: (ids of the shared arguments, their workers, the arguments: kept alive so ids stay theirs)
        self._task_pool: tuple[Any, ProcessPoolExecutor, dict] | None = None

    def _drain(self, make_pool: Callable[[], ProcessPoolExecutor], run: Callable[..., Any],
               calls: Iterable[tuple[Hashable, Any]], wrap: Callable[[Any], tuple],
               pool: ProcessPoolExecutor | None = None,
               replaced: Callable[[ProcessPoolExecutor], None] | None = None) -> Iterator[tuple[Hashable, Any]]:
        """Keep ``2 x workers`` calls in flight on ``pool`` (default: a fresh ``make_pool()``,
        shut down at the end); on a dead worker, a fresh pool (handed to ``replaced`` when
        given, which then owns it) reruns every call not yet handed back."""
        it = iter(calls)
        slots = 2 * self.workers
        owned = replaced is None
        pool = pool or make_pool()
        pending: dict[Future, tuple[Hashable, Any]] = {}
        backlog: list[tuple[Hashable, Any]] = []    # calls to (re)submit before new ones
        failures = 0

        def recover() -> None:
            nonlocal pool, failures
            failures += 1
            if failures > self.retries:
                raise BrokenProcessPool(f"a worker process died {failures} times in one map")
            backlog.extend(pending.values())
            pending.clear()
            pool.shutdown(wait=True, cancel_futures=True)
            pool = make_pool()
            if replaced is not None:
                replaced(pool)

        def fill() -> None:
            while len(pending) < slots:
                try:
                    key, item = backlog.pop(0) if backlog else next(it)
                except StopIteration:
                    return
                try:
                    pending[pool.submit(run, *wrap(item))] = (key, item)
                except BrokenProcessPool:   # the pool broke since the last wait
                    backlog.insert(0, (key, item))
                    recover()

        try:
            fill()
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    key, item = pending.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        backlog.append((key, item))
                        broken = True
                        continue
                    yield key, result
                if broken:
                    recover()
                fill()
        finally:
            if owned:
                pool.shutdown(wait=True, cancel_futures=True)

    def map_tasks(self, fn: Callable[..., Any], calls: Iterable[tuple[Hashable, tuple]], *,
                  shared: Mapping[str, Any] | None = None) -> Iterator[tuple[Hashable, Any]]:
        shared = dict(shared or {})
        key = tuple(sorted((k, id(v)) for k, v in shared.items()))

        def make_pool() -> ProcessPoolExecutor:
            # under fork the initializer's arguments are inherited, not pickled
            return ProcessPoolExecutor(self.workers, mp_context=self._context, initializer=_init_tasks,
                                       initargs=(shared,))

        if self._task_pool is None or self._task_pool[0] != key:   # the same shared objects: same workers
            self._close_task_pool()
            self._task_pool = (key, make_pool(), shared)

        def replaced(pool: ProcessPoolExecutor) -> None:
            self._task_pool = (key, pool, shared)

        yield from self._drain(make_pool, _run_task, calls, lambda args: (fn, tuple(args)),
                               pool=self._task_pool[1], replaced=replaced)

    def _close_task_pool(self) -> None:
        if self._task_pool is not None:
            pool, self._task_pool = self._task_pool[1], None
            pool.shutdown(wait=True, cancel_futures=True)

    def map_blocks(self, factory: WorkerFactory, calls: Iterable[tuple[Hashable, Any]], *,
                   accelerator: str | None = None) -> Iterator[tuple[Hashable, Any]]:
        key: Any = factory
        try:
            hash(factory)
        except TypeError:   # unhashable: a pool of its own for this map
            key = None

        def make_pool() -> ProcessPoolExecutor:
            return ProcessPoolExecutor(self.workers, mp_context=self._context, initializer=_init_blocks,
                                       initargs=(factory,))

        if key is None:
            yield from self._drain(make_pool, _run_block, calls, lambda payload: (payload,))
            return
        if key not in self._block_pools:
            self._block_pools[key] = make_pool()

        def replaced(pool: ProcessPoolExecutor) -> None:
            self._block_pools[key] = pool

        yield from self._drain(make_pool, _run_block, calls, lambda payload: (payload,),
                               pool=self._block_pools[key], replaced=replaced)

    def close(self) -> None:
        """Stop every worker and drop the shared arguments kept for them (also done on leaving
        a ``with`` block and when the executor is garbage-collected)."""
        self._close_task_pool()
        pools, self._block_pools = self._block_pools, {}
        for p in pools.values():
            p.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ProcessExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"ProcessExecutor(workers={self.workers}, start={start_method()})"
