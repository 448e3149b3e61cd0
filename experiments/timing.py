"""Timing helper shared by the benchmarks."""

from __future__ import annotations

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
