"""tasksift.memory: large freed blocks go back to the system (glibc mmap threshold)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tasksift.memory import DEFAULT_MMAP_THRESHOLD, return_freed_memory



def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


pytestmark = pytest.mark.skipif(not _glibc(), reason="glibc only")

# glibc's malloc, free and mallinfo2 through ctypes, for the scripts below
GLIBC = textwrap.dedent("""
    import ctypes, json, sys
    import psutil

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2
""")

# glibc's own malloc/free through ctypes: a 16 MiB free first (glibc then raises its mmap
# threshold to 16 MiB), then 100 touched 2 MiB blocks, each followed by a 64 KiB block that
# pins the heap above it, then the 2 MiB blocks are freed
SCRIPT = GLIBC + textwrap.dedent("""
    from tasksift.memory import return_freed_memory
    applied = return_freed_memory() if sys.argv[1] == "on" else 0
    rss = lambda: psutil.Process().memory_info().rss
    libc.free(libc.malloc(16 << 20))
    base, mapped = rss(), libc.mallinfo2().hblks
    big, small = [], []
    for _ in range(100):
        big.append(libc.malloc(2 << 20))
        ctypes.memset(big[-1], 1, 2 << 20)
        small.append(libc.malloc(64 << 10))    # 64 KiB: too big for the small-chunk bins, so from the heap top
    mapped = libc.mallinfo2().hblks - mapped
    peak = rss()
    for p in big:
        libc.free(p)
    print(json.dumps({"applied": applied, "mmapped": mapped, "grown": (peak - base) / 2**20,
                      "kept": (rss() - base) / 2**20}))
""")


def _run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TASKSIFT_MMAP_THRESHOLD": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_freed_blocks_go_back_to_the_system():
    on, off = _run("on"), _run("off")
    assert on["applied"] == DEFAULT_MMAP_THRESHOLD
    assert on["grown"] > 180 and off["grown"] > 180          # 200 MiB were really allocated and touched
    assert on["mmapped"] == 100 and off["mmapped"] == 0
    assert on["kept"] < 20, on                                # returned on free
    assert off["kept"] > 150, off                             # glibc's default keeps them (what the fix is for)


def test_threshold_from_the_environment(monkeypatch):
    monkeypatch.setenv("TASKSIFT_MMAP_THRESHOLD", "0")
    assert return_freed_memory() == 0
    monkeypatch.delenv("TASKSIFT_MMAP_THRESHOLD")
    assert return_freed_memory() == DEFAULT_MMAP_THRESHOLD == return_freed_memory()   # idempotent


# a 40 MiB block: heap-served inside reuse_freed_memory (64 MiB threshold), mmap-ed before
# and after it (glibc's settled 32 MiB, restored on exit); a 16 MiB block freed inside stays
# in the process until the exit trims it
REUSE = GLIBC + textwrap.dedent("""
    from tasksift.memory import reuse_freed_memory

    def mapped(size):
        h = libc.mallinfo2().hblks
        p = libc.malloc(size)
        n = libc.mallinfo2().hblks - h
        libc.free(p)
        return n

    before = mapped(40 << 20)
    with reuse_freed_memory() as applied:
        inside = mapped(40 << 20)
        pin = libc.malloc(64 << 10)
        p = libc.malloc(16 << 20)
        ctypes.memset(p, 1, 16 << 20)
        libc.free(p)
        kept = libc.mallinfo2().fordblks
    after = mapped(40 << 20)
    print(json.dumps({"applied": applied, "before": before, "inside": inside, "after": after,
                      "kept_inside": kept / 2**20, "kept_after": libc.mallinfo2().fordblks / 2**20}))
""")


def test_reuse_freed_memory_serves_large_blocks_from_the_heap_only_inside():
    out = subprocess.run([sys.executable, "-c", REUSE], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TASKSIFT_MMAP_THRESHOLD": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["applied"] is True
    assert (r["before"], r["inside"], r["after"]) == (1, 0, 1), r
    assert r["kept_inside"] >= 16, r     # the freed 16 MiB block was kept for reuse
    assert r["kept_after"] < 16, r       # and trimmed on exit


def test_reuse_freed_memory_is_off_with_the_environment_switch(monkeypatch):
    from tasksift.memory import reuse_freed_memory

    monkeypatch.setenv("TASKSIFT_MMAP_THRESHOLD", "0")
    with reuse_freed_memory() as applied:
        assert applied is False
