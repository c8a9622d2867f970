"""Accuracy of predicted SDMs against exact ones, as training, evaluation and the benchmarks report it."""
from __future__ import annotations

import numpy as np


def sdm_errors(pred: np.ndarray, exact: np.ndarray, band: float = 1.0, voxel: float | None = None) -> dict:
    """Accuracy of predicted SDMs against exact ones: mean |error| over the volume and within
    ``band`` mm of the surface, max |error|, and the share of voxels with the wrong sign, over the
    volume and (``wrong_sign_near``, when ``voxel`` is given) within one voxel of the surface, where
    the sign decides the shape and far voxels cannot hide it."""
    pred, exact = np.asarray(pred, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    err = np.abs(pred - exact)
    near = np.abs(exact) <= band
    wrong = (pred < 0) != (exact < 0)
    extra = {}
    if voxel is not None:
        close = np.abs(exact) <= voxel
        extra["wrong_sign_near"] = float(wrong[close].mean()) if close.any() else float("nan")
    return {**extra,
        "mae": float(err.mean()),
        "band_mae": float(err[near].mean()) if near.any() else float("nan"),
        "max_error": float(err.max()),
        "wrong_sign": float(wrong.mean()),
    }
