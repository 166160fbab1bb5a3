"""The one timing rule of the benchmarks: median wall-clock ms after warm-up calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times; the median duration in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cuda_median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """As :func:`median_ms`, timed with CUDA events (GPU work is asynchronous to the host clock)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
