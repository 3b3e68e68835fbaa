"""The manifest written beside every selection: what was run, on what, and how long it took."""
from __future__ import annotations

import sys
import time
from typing import Any

from . import __version__

_PACKAGES = ("numpy", "scipy", "faiss-cpu", "torch", "transformers", "sentence-transformers",
             "peft", "datasets", "pyarrow", "pandas")


def versions() -> dict[str, str]:
    import importlib.metadata as md  # here, not at import: engines that only need peak_memory_mb stay light
    import platform

    out = {"tasksift": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for p in _PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def peak_memory_mb() -> float:
    """Peak resident memory of this process (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def embedding_block(config: Any, timings: dict[str, float]) -> dict[str, Any]:
    """The manifest's ``embedding`` entry: whether this run embedded rows (an ``embed_*``
    stage in ``timings``) and, if so, every setting that shaped the vectors
    (``EmbedConfig.describe()``: model and its fingerprint, text, max tokens, dtype, ...)."""
    used = any(stage.startswith("embed_") for stage in timings)
    if not used:
        return {"used": False}
    return {"used": True, **config.describe()}


def manifest_dict(**parts: Any) -> dict[str, Any]:
    return {"tasksift_manifest": 1, "created": now_iso(), "versions": versions(), **parts}
