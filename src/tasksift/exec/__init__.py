"""Where work runs: one :class:`Executor` protocol, chosen in one place.

Featurizers, neighbour search and TSDS hand their blocks of work to an executor and never
ask which one it is. :func:`make_executor` is the only place the backend name is read, and
:mod:`tasksift.exec.ray` the only module that imports Ray. :mod:`tasksift.exec.processes`
uses the cores of this machine without a cluster.
"""
from __future__ import annotations

from .base import Executor, WorkerFactory
from .local import LocalExecutor

BACKENDS = ("local", "processes", "ray")


def make_executor(backend: str = "local", *, workers: int | None = None,
                  address: str | None = None) -> Executor:
    """The executor for ``backend``: ``"local"`` (this process, one block after another),
    ``"processes"`` (``workers`` local processes, default one per core: see
    :mod:`tasksift.exec.processes`) or ``"ray"`` (tasks and actors on the cluster at
    ``address`` / ``$RAY_ADDRESS``, else a local one; ``workers`` at a time, default: the
    cluster's CPUs, or its GPUs for featurizers that need one)."""
    from ..errors import ConfigError

    if isinstance(backend, Executor):
        return backend
    if backend == "local":
        return LocalExecutor()
    if backend == "processes":
        from .processes import ProcessExecutor

        return ProcessExecutor(workers=workers)
    if backend == "ray":
        from .ray import RayExecutor

        return RayExecutor(workers=workers, address=address)
    raise ConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")


__all__ = ["BACKENDS", "Executor", "LocalExecutor", "WorkerFactory", "make_executor"]
