"""The one device resolver of every featurizer (embeddings, LM losses, LESS gradients)."""
from __future__ import annotations

from ..errors import ConfigError


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"`` (or empty) -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; an explicit
    CUDA device without CUDA is a ConfigError; anything else is returned as given."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    cuda = bool(torch is not None and torch.cuda.is_available())
    if device in (None, "", "auto"):
        return "cuda" if cuda else "cpu"
    if str(device).startswith("cuda") and not cuda:
        raise ConfigError(f"device '{device}' requested but CUDA is not available")
    return str(device)


def accelerator_for(device: str | None) -> str | None:
    """The accelerator a featurizer on ``device`` asks the executor for: ``"gpu"`` unless it
    was pinned to the CPU (``"auto"`` takes a GPU where the worker has one)."""
    return None if str(device or "auto").startswith("cpu") else "gpu"
