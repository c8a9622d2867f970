"""Accuracy and speed of a trained forward model against the exact SDM on held-out parameters."""
from __future__ import annotations

import time

import numpy as np

from ..dataset import design_points
from ..sdm import exact_sdm
from .metrics import sdm_errors


def evaluate(model, n: int = 200, seed: int = 1, progress: bool = True) -> dict:
    """Compare ``model`` with ``exact_sdm`` on ``n`` uniform random held-out parameter vectors.

    Returns the mean over cases of each metric of ``sdm_errors`` (mm; wrong_sign as a fraction of
    voxels, wrong_sign_near of those within one voxel of the surface), their worst case, the per-case rows, and the median time per SDM of both methods
    (exact: mesh + SDM; model: batch 1).
    """
    from tqdm.auto import tqdm

    family, grid = model.family, model.grid
    points = design_points(f"random:{n}", family, seed=seed)
    model.predict(points[0])  # warm-up of both, so that neither's first call (compilation, caches) is timed
    exact_sdm(family.mesh(points[0]), grid)
    rows, t_exact, t_model = [], [], []
    for vector in tqdm(points, disable=not progress, desc="evaluate", unit="case"):
        t0 = time.perf_counter()
        exact = exact_sdm(family.mesh(vector), grid)
        t1 = time.perf_counter()
        pred = model.predict(vector)
        t2 = time.perf_counter()
        t_exact.append(t1 - t0)
        t_model.append(t2 - t1)
        rows.append({**family.space.as_dict(vector), **sdm_errors(pred, exact, voxel=max(grid.spacing))})
    keys = ("mae", "band_mae", "max_error", "wrong_sign", "wrong_sign_near")
    return {
        "n": n, "seed": seed, "family": family.name, "grid": grid.to_dict(),
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys},
        "worst": {k: float(np.max([r[k] for r in rows])) for k in keys},
        "exact_seconds": float(np.median(t_exact)), "model_seconds": float(np.median(t_model)),
        "cases": rows,
    }


#: The names of ``sdm_errors``'s figures in what ``sdmnn evaluate`` prints and writes (--json, -o).
NAMES = {"mae": "mae_mm", "band_mae": "mae_near_mm", "max_error": "max_error_mm", "wrong_sign": "wrong_sign_fraction",
         "wrong_sign_near": "wrong_sign_near_fraction"}


def summary(result: dict, cases: bool = False) -> dict:
    """The headline figures of an ``evaluate`` result under explicit names (``NAMES``; ``sdmnn evaluate --json``):
    each the mean over the cases, as the table's first column; ``worst_case`` holds each one's largest value over the
    cases, each perhaps from another case. With ``cases``, also every case's parameters and figures under the same
    names (``sdmnn evaluate -o``). A figure with nothing to count (no voxel near the surface) is None, so that the JSON
    stays strict."""
    def named(figures: dict) -> dict:
        return {NAMES.get(k, k): (v if not isinstance(v, float) or np.isfinite(v) else None) for k, v in figures.items()}

    out = {
        "family": result["family"], "n": result["n"], "seed": result["seed"], **named(result["mean"]),
        "worst_case": named(result["worst"]),
        "ms_per_sdm": 1e3 * result["model_seconds"], "exact_ms_per_sdm": 1e3 * result["exact_seconds"],
    }
    if cases:
        out.update(grid=result["grid"], cases=[named(row) for row in result["cases"]])
    return out
