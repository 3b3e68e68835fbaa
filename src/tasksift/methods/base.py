"""What a selection method is: a class with a ``select(ctx, k)`` method.

A method receives a :class:`SelectionContext` (the pool and target examples, seed, and lazy
access to cached features) and the number of rows ``k`` to select, and returns a
:class:`MethodResult`. Register it with :func:`tasksift.methods.registry.register`.
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from ..data.example import Example
from ..data.pool import Pool, as_pool
from ..errors import ConfigError
from ..exec import Executor, LocalExecutor
from .params import Option, defaults_of, validate_options
from .registry import MethodInfo


@dataclass
class MethodResult:
    """What a method returns.

    indices: selected pool positions, best first (length k, unless the method explains in
        ``info`` why it returned fewer).
    scores: one float per pool row, higher = preferred; NaN for rows the method did not score.
    columns: extra per-pool-row arrays written to the output as ``<name>`` columns.
    info: JSON-serialisable facts for the manifest (diagnostics, counts, recall, ...).
    """

    indices: np.ndarray
    scores: np.ndarray | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class SelectionContext:
    """Inputs shared by every method, with features computed on first use and cached.

    Attributes: ``pool`` (a :class:`~tasksift.data.pool.Pool`: a lazy sequence of
    :class:`Example` with columns ``ids``, ``words``, ``sources``... and batch iteration;
    prefer ``pool.batches()``/``pool.examples(indices)`` to indexing row by row), ``target``
    (a list of :class:`Example`), ``seed``, ``rng`` (a
    seeded ``numpy.random.Generator``), ``cache_dir``, ``progress``, ``embed_config``,
    ``executor`` (where feature blocks and search shards run, see :mod:`tasksift.exec`;
    default: this process), ``timings`` (seconds per stage, filled as features are computed) and ``info``.
    """

    def __init__(self, pool: Pool | Sequence[Example], target: Sequence[Example], *, seed: int = 0,
                 cache_dir=None, progress: bool = True, embed_config=None,
                 options: dict[str, Any] | None = None, executor: Executor | None = None) -> None:
        from ..features.embed import EmbedConfig

        self.pool: Pool = as_pool(pool)
        self.target = list(target)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.cache_dir = cache_dir
        self.progress = progress
        self.embed_config = embed_config or EmbedConfig()
        self.options = dict(options or {})
        self.executor: Executor = executor if executor is not None else LocalExecutor()
        self.timings: dict[str, float] = {}
        self.info: dict[str, Any] = {}
        self._embedder = None
        self._emb: dict[str, np.ndarray] = {}

    def timed(self, stage: str):
        """Context manager adding the elapsed seconds of a block to ``timings[stage]``."""
        ctx = self

        class _T:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                ctx.timings[stage] = ctx.timings.get(stage, 0.0) + time.perf_counter() - self.t

        return _T()

    @property
    def embedder(self):
        if self._embedder is None:
            from ..features.embed import Embedder

            self._embedder = Embedder(self.embed_config, cache_dir=self.cache_dir,
                                      progress=self.progress, executor=self.executor)
        return self._embedder

    @property
    def backend(self) -> str:
        """The executor's name (``"local"`` or ``"ray"``), for code that reports it."""
        return self.executor.name

    def embeddings(self, which: str) -> np.ndarray:
        """Embeddings of ``"pool"`` or ``"target"`` examples, (n, d) float32."""
        if which not in ("pool", "target"):
            raise ValueError(which)
        if which not in self._emb:
            with self.timed(f"embed_{which}"):
                self._emb[which] = self.embedder.embed(getattr(self, which), desc=f"embedding {which}")
        return self._emb[which]

    def restrict(self, indices: Sequence[int]) -> "SelectionContext":
        """A context over the pool rows ``indices`` only (same target, seed, cache and
        settings); pool embeddings already computed are sliced, not recomputed. Methods run
        on it return positions into ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        sub = SelectionContext(self.pool.take(idx), self.target, seed=self.seed,
                               cache_dir=self.cache_dir, progress=self.progress,
                               embed_config=self.embed_config, options=self.options,
                               executor=self.executor)
        sub._embedder = self._embedder
        if "pool" in self._emb:
            sub._emb["pool"] = self._emb["pool"][idx]
        if "target" in self._emb:
            sub._emb["target"] = self._emb["target"]
        sub.timings = self.timings
        return sub

    def set_embeddings(self, which: str, emb: np.ndarray) -> None:
        """Provide precomputed embeddings (e.g. from the Ray backend or a .npy file)."""
        n = len(getattr(self, which))
        if emb.shape[0] != n:
            raise ConfigError(f"{which} embeddings have {emb.shape[0]} rows for {n} examples")
        self._emb[which] = np.asarray(emb, dtype=np.float32)


class SelectionMethod(abc.ABC):
    """Base class of selection methods.

    A subclass declares its options once, in ``parameters`` (name -> :class:`Option`: default,
    one-line help, accepted values); ``defaults`` is derived from it. The constructor
    validates the given options against that table (unknown name or badly typed value: one
    :class:`ConfigError`), so a bad option fails before any feature is computed.
    Subclasses implement :meth:`select`.
    """

    info: ClassVar[MethodInfo]
    parameters: ClassVar[dict[str, Option]] = {}
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "parameters" in cls.__dict__:
            cls.defaults = defaults_of(cls.parameters)
        elif "defaults" in cls.__dict__:   # an older method that lists defaults only: any value
            cls.parameters = {k: Option(v, "") for k, v in cls.defaults.items()}

    def __init__(self, **config: Any) -> None:
        name = self.info.name if hasattr(self, "info") else type(self).__name__
        validate_options(name, self.parameters, config)
        self.config = {**defaults_of(self.parameters), **config}

    @abc.abstractmethod
    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        """Choose ``k`` pool rows."""


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest finite scores, best first; ties broken by lower index."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    n_finite, k = int(finite.sum()), max(0, int(k))
    if 0 < k < n_finite:
        # only the rows at or above the k-th highest score can be chosen (ties at that score
        # included): sort those, not the whole pool (same order, a k-sized sort)
        values = scores[finite]
        values.partition(n_finite - k)
        finite &= scores >= values[n_finite - k]
        del values
    cand = np.flatnonzero(finite) if k else np.empty(0, np.int64)
    order = cand[np.lexsort((cand, -scores[cand]))]
    return order[:k]
