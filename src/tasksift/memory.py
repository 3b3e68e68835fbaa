"""Process memory settings for CPU training.

On Linux/glibc, memory that PyTorch frees during a training step mostly stays in the
process: glibc serves mid-sized blocks from its heaps and raises its mmap threshold after
every large free (up to 32 MiB), so the activations of each step end up in heap memory that
fragments and is never given back. Measured here (SmolLM2-135M, LoRA, 8 x 512 tokens,
activation checkpointing, 2 steps): resident memory grew by 9.5 GB, against 0.95 GB with
blocks of 1 MiB and more served by mmap (returned to the system on free), for ~10% more time.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc ``mallopt`` parameter number of M_MMAP_THRESHOLD
_M_MMAP_THRESHOLD = -3
#: blocks of at least this many bytes are mmap-ed (and unmapped on free) by default
DEFAULT_MMAP_THRESHOLD = 1 << 20
_applied: int | None = None


def return_freed_memory(threshold: int | None = None) -> int:
    """Have glibc serve allocations of ``threshold`` bytes and more with mmap, so that freed
    tensors go back to the system instead of fragmenting the heap (a fixed threshold also
    stops glibc from raising it after large frees). Returns the threshold applied, or 0 when
    nothing was done: not Linux/glibc, or ``$TASKSIFT_MMAP_THRESHOLD`` is 0.

    ``threshold`` defaults to ``$TASKSIFT_MMAP_THRESHOLD`` or 1 MiB. Idempotent; affects
    allocations made after the call.
    """
    global _applied
    if threshold is None:
        env = os.environ.get("TASKSIFT_MMAP_THRESHOLD", "")
        threshold = int(env) if env.isdigit() else DEFAULT_MMAP_THRESHOLD
    if threshold <= 0 or not sys.platform.startswith("linux"):
        return 0
    if _applied == threshold:
        return threshold
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(int(threshold)))
    except (OSError, AttributeError):   # not glibc (e.g. musl has no mallopt)
        return 0
    if ok != 1:
        return 0
    _applied = int(threshold)
    return _applied
