"""tasksift: pick the training data worth fine-tuning on for one task."""
from __future__ import annotations

__version__ = "0.1.0"

from .budget import Budget  # noqa: E402
from .errors import ConfigError, DataError, TasksiftError  # noqa: E402

__all__ = ["Budget", "ConfigError", "DataError", "TasksiftError", "select", "load_examples",
           "Selection", "__version__"]


def __getattr__(name: str):
    # Heavy imports (pandas, torch, ...) happen only when these are used.
    if name in ("select", "Selection"):
        from . import api

        return getattr(api, name)
    if name == "load_examples":
        from .data import load_examples

        return load_examples
    raise AttributeError(name)
