"""How the bench times one peer: a warm-up call, then up to `repeat` calls within a time budget
(slow peers get fewer, never below 2); the report takes their median."""

from __future__ import annotations

import time
from typing import Any, Callable

__all__ = ["run_count", "runs", "time_calls"]


def time_calls(fn: Callable[[], Any], repeat: int,
               budget_s: float) -> tuple[Any, float, list[float]]:
    """(warm-up result, warm-up seconds, timed seconds) with fewer runs when a call is slow."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = runs(fn, 1)  # the run count follows a warm call, not the first (builds, measuring)
    return out, first, times + runs(fn, run_count(times[0], repeat, budget_s) - 1)


def run_count(first: float, repeat: int, budget_s: float) -> int:
    """Calls to time after one of `first` seconds: `repeat`, cut to fit `budget_s`, at least 2."""
    return max(2, min(repeat, int(budget_s / max(first, 1e-6))))


def runs(fn: Callable[[], Any], count: int) -> list[float]:
    """Seconds of each of `count` calls of fn."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times
