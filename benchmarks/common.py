"""Timing helpers shared by the benchmarks: warm-up, several runs, median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch


def median_seconds(run: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``run()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pearson_per_image(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Pearson correlation of each image's map in ``a`` with the same image's map in ``b``."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
    """Median wall time of each run, timing them in turn (a, b, c, a, b, c, ...) after one warm-up
    each, so that drifts of a shared machine hit every contender alike."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
