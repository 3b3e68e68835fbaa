"""The in-process executor: every block runs here, one after another."""
from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping

from .base import WorkerFactory


class LocalExecutor:
    """Runs every block in this process, in order. Workers built by a factory are kept for
    the executor's life, so a model is loaded once however many blocks follow."""

    name = "local"
    workers = 1
    in_process = True

    def __init__(self) -> None:
        self._workers: dict[Any, Callable[[Any], Any]] = {}

    def map_tasks(self, fn: Callable[..., Any], calls: Iterable[tuple[Hashable, tuple]], *,
                  shared: Mapping[str, Any] | None = None) -> Iterator[tuple[Hashable, Any]]:
        kw = dict(shared or {})
        for key, args in calls:
            yield key, fn(*args, **kw)

    def map_blocks(self, factory: WorkerFactory, calls: Iterable[tuple[Hashable, Any]], *,
                   accelerator: str | None = None) -> Iterator[tuple[Hashable, Any]]:
        worker = self.worker(factory)
        for key, payload in calls:
            yield key, worker(payload)

    def worker(self, factory: WorkerFactory) -> Callable[[Any], Any]:
        """The worker ``factory`` builds, built on first use and kept (factories are
        compared by equality, so equal frozen dataclasses share a worker)."""
        try:
            return self._workers[factory]
        except KeyError:
            pass
        except TypeError:  # unhashable factory: build a fresh worker each time
            return factory()
        w = self._workers[factory] = factory()
        return w

    def __repr__(self) -> str:
        return "LocalExecutor()"
