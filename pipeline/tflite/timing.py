"""Invoke timing shared by the LiteRT and TFLite Micro runners."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_invoke_ms(invoke: Callable[[], object], runs: int, warmup: int) -> float:
    """Median wall time of one call, in ms, after `warmup` untimed calls."""
    for _ in range(warmup):
        invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        invoke()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
