"""The executor protocol: what featurizers and search code may ask of a backend."""
from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping, Protocol, runtime_checkable

#: ``factory()`` runs once per worker and returns the callable that handles one block
#: (e.g. it loads a model once and returns ``embed(texts)``). It must be picklable.
WorkerFactory = Callable[[], Callable[[Any], Any]]


@runtime_checkable
class Executor(Protocol):
    """Runs blocks of work and hands back ``(key, result)`` pairs as they finish.

    Both methods consume ``calls`` lazily (at most :attr:`workers` argument sets are held at
    once), so a caller may stream blocks read from disk. Results may arrive in any order;
    every key comes back exactly once. A worker process that dies is retried (Ray) or the
    error propagates (local).
    """

    name: str
    #: how many blocks may run at the same time
    workers: int
    #: whether blocks run in this process (so may use its objects, e.g. an open pool); when
    #: False, workers are other processes, possibly on other machines, and read their own rows
    in_process: bool

    def map_tasks(self, fn: Callable[..., Any], calls: Iterable[tuple[Hashable, tuple]], *,
                  shared: Mapping[str, Any] | None = None) -> Iterator[tuple[Hashable, Any]]:
        """``(key, fn(*args, **shared))`` for each ``(key, args)`` of ``calls``. ``fn`` is a
        stateless module-level function; ``shared`` holds large read-only arguments sent to
        the workers once."""
        ...

    def map_blocks(self, factory: WorkerFactory, calls: Iterable[tuple[Hashable, Any]], *,
                   accelerator: str | None = None) -> Iterator[tuple[Hashable, Any]]:
        """``(key, worker(payload))`` for each ``(key, payload)``, where each worker is
        ``factory()`` built once per worker process (a model loaded once). ``accelerator``
        ``"gpu"`` asks for one GPU per worker where the cluster has GPUs."""
        ...
