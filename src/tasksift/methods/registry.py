"""The method registry: a new selection method is one module that calls :func:`register`.

Modules listed in :data:`BUILTIN_MODULES` are imported lazily the first time the registry is
queried, so ``import tasksift`` stays cheap and a method whose optional dependency is missing
only fails when it is used.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

from ..errors import ConfigError

#: Modules (relative to ``tasksift.methods``) that hold built-in methods.
BUILTIN_MODULES = [
    "random_", "knn", "tsds", "lobass", "ifd", "perplexity", "dsir", "less", "diversity", "dedup", "answer_style",
]

COST_CLASSES = ("cheap", "moderate", "expensive")


@dataclass(frozen=True)
class SurveyTraits:
    """What the survey "Take the essence and discard the dross" (Liu et al., NAACL 2025) and its
    TEDD-Ranker page need to rank a method's feasibility.

    ``llms_trained``: LLMs trained while building the selector; ``steps``: algorithm steps of
    one selection (the survey's appendix A.5 way of counting); ``reproducible``: open code;
    ``model_dependent``: would another selector model change the result; ``dataset_dependent``:
    must the selector be redone (retrained) for another candidate pool; ``gpt_dependent``: does
    it rely on a proprietary LLM (ChatGPT/GPT-4).
    """

    llms_trained: float
    steps: int
    reproducible: bool = True
    model_dependent: bool = False
    dataset_dependent: bool = False
    gpt_dependent: bool = False


@dataclass(frozen=True)
class MethodInfo:
    """What ``tasksift methods`` shows about a method."""

    name: str
    description: str
    needs: tuple[str, ...] = ()   # e.g. ("embeddings",), ("lm",), ("gradients",), ("ngrams",)
    cost: str = "cheap"           # one of COST_CLASSES
    stochastic: bool = False      # whether the seed changes the result
    survey: SurveyTraits | None = None   # the survey's feasibility inputs (None: not declared)


_REGISTRY: dict[str, type] = {}
_loaded = False
T = TypeVar("T", bound=type)


def register(name: str, *, description: str, needs: tuple[str, ...] = (), cost: str = "cheap",
             stochastic: bool = False, survey: SurveyTraits | Mapping[str, Any] | None = None) -> Callable[[T], T]:
    """Class decorator registering a :class:`~tasksift.methods.base.SelectionMethod`
    (``survey``: its inputs to the survey's feasibility rank, a :class:`SurveyTraits` or the
    mapping of its fields)."""
    if cost not in COST_CLASSES:
        raise ValueError(f"cost must be one of {COST_CLASSES}, got {cost!r}")
    if survey is not None and not isinstance(survey, SurveyTraits):
        survey = SurveyTraits(**survey)

    def deco(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.info = MethodInfo(name, description, tuple(needs), cost, stochastic, survey)
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(f"tasksift.methods.{mod}")
        except ModuleNotFoundError as e:  # a module not written yet, or not installed
            if e.name != f"tasksift.methods.{mod}":
                raise


def get_method(name: str) -> type:
    """The method class registered as ``name`` (ConfigError listing the choices if unknown)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def available_methods() -> list[MethodInfo]:
    """Every registered method's info, sorted by name."""
    _load_builtins()
    return [_REGISTRY[n].info for n in sorted(_REGISTRY)]
