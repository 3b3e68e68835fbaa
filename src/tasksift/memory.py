"""Process memory settings: for CPU training (freed blocks go back to the system) and for
array work made of many large temporaries (freed blocks are kept for reuse).

On Linux/glibc, memory that PyTorch frees during a training step mostly stays in the
process: glibc serves mid-sized blocks from its heaps and raises its mmap threshold after
every large free (up to 32 MiB), so the activations of each step end up in heap memory that
fragments and is never given back. Measured here (SmolLM2-135M, LoRA, 8 x 512 tokens,
activation checkpointing, 2 steps): resident memory grew by 9.5 GB, against 0.95 GB with
blocks of 1 MiB and more served by mmap (returned to the system on free), for ~10% more time.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from typing import Iterator

#: glibc ``mallopt`` parameter numbers of M_TRIM_THRESHOLD and M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: the mmap threshold glibc's dynamic one settles at in a process that frees large arrays
#: (its DEFAULT_MMAP_THRESHOLD_MAX; trimming at twice it): restored after
#: :func:`reuse_freed_memory` unless :func:`return_freed_memory` set one
_SETTLED_MMAP = 32 << 20
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
    if threshold <= 0:
        return 0
    if _applied == threshold:
        return threshold
    libc = _libc()
    if libc is None or libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(int(threshold))) != 1:
        return 0
    _applied = int(threshold)
    return _applied


def _libc() -> ctypes.CDLL | None:
    """glibc, where this is Linux with glibc (None otherwise: e.g. musl has no mallopt)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # pragma: no cover - no C library to load
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def reuse_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 512 << 20) -> Iterator[bool]:
    """While the context lasts, glibc serves blocks under ``mmap_threshold`` bytes from its
    heap and keeps up to ``trim_threshold`` bytes of freed heap memory, so a loop that makes
    and drops large temporaries reuses the same pages instead of mapping, faulting in and
    zeroing fresh ones each time (measured on TSDS at 100k candidates: system time 0.9 ->
    0.4 s, wall -11%, peak memory not higher). On exit the freed heap memory goes back to the
    system (``malloc_trim``) and the thresholds return to those :func:`return_freed_memory`
    applied, else to the values glibc's own dynamic thresholds settle at in a process that
    frees large arrays (32 MiB, and twice that for trimming: glibc cannot be told to resume
    adjusting them). Yields whether the settings were applied (False without glibc, or when
    ``$TASKSIFT_MMAP_THRESHOLD`` is 0: then a no-op)."""
    libc = _libc()
    if libc is None or os.environ.get("TASKSIFT_MMAP_THRESHOLD", "") == "0":
        yield False
        return
    ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(int(mmap_threshold))) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(int(trim_threshold))) == 1 and ok
    try:
        yield ok
    finally:
        after = _applied or _SETTLED_MMAP
        libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2 * after))
        libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(after))
        libc.malloc_trim(0)
