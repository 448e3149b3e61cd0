"""Timing and host-memory helpers shared by the benchmarks."""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable


def timeit(fn: Callable[[], object], iters: int, warmup: int = 2) -> float:
    """Median wall time in seconds of `fn()` over `iters` runs, after `warmup` runs. `fn` must
    block until its work is done (`block_until_ready`, `torch.cuda.synchronize`)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def cpu_memory_reset() -> int | None:
    """The resident bytes now, after giving freed heap back to the OS and resetting the peak
    (VmHWM) counter, so that `cpu_memory_peak` sees the reference's own growth; None where
    Linux's /proc/self/clear_refs cannot be written."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS") * 1024
    except (OSError, StopIteration):
        return None


def cpu_memory_peak(base: int | None) -> float:
    return float("nan") if base is None else _status_kib("VmHWM") * 1024 - base


def peak_rss_bytes() -> int:
    """The process's peak resident set (VmHWM) since it started or since `cpu_memory_reset`."""
    return _status_kib("VmHWM") * 1024
