"""Shared helpers of the benchmarks: timing and markdown tables."""
from __future__ import annotations

import statistics
import time


def timeit(fn, repeat: int = 3, warmup: int = 1, settle=None):
    """(median seconds, last result) of ``fn()`` over ``repeat`` runs after ``warmup`` runs (``settle``: as
    ``timeit_interleaved``'s)."""
    return timeit_interleaved({"fn": fn}, repeat, warmup, settle)["fn"]


def timeit_interleaved(fns: dict, repeat: int = 7, warmup: int = 1, settle=None) -> dict:
    """name -> (median seconds, last result) for each function, their runs taken in turn (a, b, a, b,
    ...) so that every one sees the same state of a machine whose speed drifts. ``settle``, if given, runs untimed
    before every timed run, so that each starts after the same work, not after whichever function precedes it (a
    prediction right after another ran faster than one right after an exact SDM: docs/discussion.md)."""
    results = {name: None for name in fns}
    for _ in range(warmup):
        for name, fn in fns.items():
            results[name] = fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            if settle is not None:
                settle()
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {name: (statistics.median(times[name]), results[name]) for name in fns}


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def twice_as_fine(grid):
    """A grid of half ``grid``'s spacing over the same extent (its voxels and the points halfway between them)."""
    from sdmnn import Grid

    return Grid(tuple(2 * n - 1 for n in grid.shape), tuple(s / 2 for s in grid.spacing), grid.origin, grid.direction)
