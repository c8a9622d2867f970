"""Shared helpers of the benchmarks: timing and markdown tables."""
from __future__ import annotations

import statistics
import time


def timeit(fn, repeat: int = 3, warmup: int = 1):
    """(median seconds, last result) of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
