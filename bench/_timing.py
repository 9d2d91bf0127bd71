"""The interleaved timing loop every bench script shares: variants compared in one run.

Timings on a shared machine drift; running one call of each variant per round, rounds
after each other, exposes all of them to the same drift, and medians drop the outliers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_ms(runners: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each runner over ``repeats`` rounds, one call of each per round."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) * 1e3 for name, s in samples.items()}
