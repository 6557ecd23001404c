"""Latency samples of a callable: warm-up runs excluded, then runs until a time budget is spent, and their percentiles."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

PERCENTILES = (50, 90, 99)


def latency_samples(run: Callable[[], object], seconds: float, min_runs: int = 3, warmup: int = 1,
                    max_runs: int = 10_000, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Wall seconds of each call of `run` after `warmup` untimed calls, calling it until `seconds` have passed and at
    least `min_runs` times (at most `max_runs`)."""
    for _ in range(warmup):
        run()
    samples: list[float] = []
    began = clock()
    while len(samples) < max_runs and (len(samples) < min_runs or clock() - began < seconds):
        start = clock()
        run()
        samples.append(clock() - start)
    return samples


def latency_summary(samples: list[float]) -> dict:
    """p50/p90/p99 (linear interpolation between samples), mean and the number of samples, seconds."""
    values = np.asarray(samples, dtype=np.float64)
    summary = {f"p{q}_s": float(np.percentile(values, q)) for q in PERCENTILES}
    summary.update(mean_s=float(values.mean()), runs=int(values.size))
    return summary
