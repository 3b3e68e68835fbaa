"""The Ray executor: blocks run as Ray tasks or on Ray actors. The only module that imports Ray."""
from __future__ import annotations

import os
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping

from ..errors import ConfigError
from .base import WorkerFactory


def ray_init(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to a Ray cluster (``address``, else ``$RAY_ADDRESS``), or start a local one."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'tasksift[ray]'") from None
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                                  "include_dashboard": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    return ray


def _run_worker_class(ray: Any, num_gpus: float):
    @ray.remote(num_gpus=num_gpus, max_restarts=3, max_task_retries=3)
    class BlockWorker:
        def __init__(self, factory: WorkerFactory) -> None:
            self.fn = factory()

        def run(self, payload: Any) -> Any:
            return self.fn(payload)

        def pid(self) -> int:
            return os.getpid()

    return BlockWorker


class RayExecutor:
    """Runs tasks (:meth:`map_tasks`) as Ray tasks with ``num_cpus=1`` and blocks
    (:meth:`map_blocks`) on a pool of actors that each build their worker once. Ray retries a
    task or actor call whose process died (up to 3 times)."""

    name = "ray"
    in_process = False

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.ray = ray_init(address)
        self._requested = workers
        self.workers = int(workers or max(1, int(self.ray.cluster_resources().get("CPU", 1))))
        self._remote: dict[Callable, Any] = {}

    def _drain(self, submit_one: Callable[[Any, int], Any], calls: Iterable[tuple[Hashable, Any]],
               slots: int) -> Iterator[tuple[Hashable, Any]]:
        """Keep ``slots`` calls in flight; ``submit_one(item, slot)`` starts one on ``slot``
        and a finished call's slot takes the next item."""
        ray = self.ray
        it = iter(calls)
        pending: dict[Any, tuple[Hashable, int]] = {}

        def submit(slot: int) -> bool:
            try:
                key, item = next(it)
            except StopIteration:
                return False
            pending[submit_one(item, slot)] = (key, slot)
            return True

        for slot in range(slots):
            if not submit(slot):
                break
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                key, slot = pending.pop(ref)
                yield key, ray.get(ref)
                submit(slot)

    def map_tasks(self, fn: Callable[..., Any], calls: Iterable[tuple[Hashable, tuple]], *,
                  shared: Mapping[str, Any] | None = None) -> Iterator[tuple[Hashable, Any]]:
        ray = self.ray
        if fn not in self._remote:
            self._remote[fn] = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=False)(fn)
        task = self._remote[fn]
        refs = {k: ray.put(v) for k, v in (shared or {}).items()}  # one copy in the object store
        yield from self._drain(lambda args, _slot: task.remote(*args, **refs), calls, self.workers)

    def map_blocks(self, factory: WorkerFactory, calls: Iterable[tuple[Hashable, Any]], *,
                   accelerator: str | None = None) -> Iterator[tuple[Hashable, Any]]:
        ray = self.ray
        gpus = int(ray.cluster_resources().get("GPU", 0)) if accelerator == "gpu" else 0
        n = self._requested or (gpus if gpus else self.workers)
        Worker = _run_worker_class(ray, 1 if gpus else 0)
        actors = [Worker.remote(factory) for _ in range(n)]
        try:
            yield from self._drain(lambda payload, slot: actors[slot].run.remote(payload), calls, n)
        finally:
            for a in actors:
                ray.kill(a)

    def __repr__(self) -> str:
        return f"RayExecutor(workers={self.workers})"
