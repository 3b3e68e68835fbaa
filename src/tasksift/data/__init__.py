"""Data layer: read files/datasets, detect layouts, normalise to Examples, write subsets.

``LoadedData`` and ``load_examples`` (readers, layouts, pyarrow) are imported on first use,
so that modules which only need :class:`Example` (the methods, the TSDS engine) start fast.
"""
from __future__ import annotations

from typing import Any

from .example import Example, content_id

__all__ = ["Example", "LoadedData", "content_id", "load_examples"]


def __getattr__(name: str) -> Any:
    if name in ("LoadedData", "load_examples"):
        from . import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
