"""Timing helper shared by the benchmarks."""
import time

import jax
import numpy as np


def median_time(fn, repeats: int) -> float:
    """Median wall time in seconds of `fn()` over `repeats` calls, blocking on its result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))
