"""How many CPU threads torch uses for LM work (fewer when other processes keep the cores busy)."""
from __future__ import annotations

import os
import time


def _parallel_op_latency(reps: int = 20, budget_s: float = 0.05) -> float:
    """Seconds per small parallel torch op at the current thread count (stops early once
    ``budget_s`` is spent). Microseconds on an idle machine; a scheduler time slice (ms) when
    other processes keep every core busy and each parallel region waits for its threads."""
    import time

    import torch

    x = torch.ones(1 << 16)
    y = torch.empty_like(x)
    torch.add(x, 1, out=y)
    t = time.perf_counter()
    done = 0
    for done in range(1, reps + 1):
        torch.add(x, 1, out=y)
        if time.perf_counter() - t > budget_s:
            break
    return (time.perf_counter() - t) / done


def set_cpu_threads(threads: int | None = None) -> int:
    """Choose torch's CPU thread count and return it.

    ``threads`` or ``$TASKSIFT_NUM_THREADS`` / ``$OMP_NUM_THREADS`` win; otherwise all cores
    this process may use, unless a quick probe shows the cores are busy with other processes
    (a parallel op then costs milliseconds of thread wake-up, which on a 135M model makes a
    forward pass ~10x slower than one thread). Also keeps the tokenizers library from
    spawning threads of its own.
    """
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads is None:
        for var in ("TASKSIFT_NUM_THREADS", "OMP_NUM_THREADS"):
            v = os.environ.get(var, "")
            if v.isdigit() and int(v) > 0:
                threads = int(v)
                break
    if threads is None:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            n = os.cpu_count() or 1
        threads = n
        if n > 1:
            torch.set_num_threads(n)
            if _parallel_op_latency() > 5e-4:
                threads = 1
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def threads_fixed() -> bool:
    """Whether ``$TASKSIFT_NUM_THREADS`` or ``$OMP_NUM_THREADS`` fixes the thread count."""
    return any(os.environ.get(v, "").isdigit() and int(os.environ[v]) > 0
               for v in ("TASKSIFT_NUM_THREADS", "OMP_NUM_THREADS"))


class ThreadRetuner:
    """Calls :func:`set_cpu_threads` again at most every ``period`` seconds during long CPU
    work (other processes may have started or stopped since the last choice: a choice of one
    thread made while a short job kept the cores busy would otherwise hold for a whole
    fine-tune). Does nothing off the CPU or when the environment fixes the thread count."""

    def __init__(self, period: float = 30.0, *, cpu: bool = True) -> None:
        self.period = float(period)
        self.active = bool(cpu) and not threads_fixed()
        self.last = time.perf_counter()
        self.calls = 0

    def __call__(self) -> None:
        if self.active and time.perf_counter() - self.last > self.period:
            set_cpu_threads()
            self.calls += 1
            self.last = time.perf_counter()
