"""Accuracy of predicted SDMs against exact ones, as training, evaluation and the benchmarks report it."""
from __future__ import annotations

import numpy as np


def sdm_errors(pred: np.ndarray, exact: np.ndarray, band: float = 1.0) -> dict:
    """Accuracy of predicted SDMs against exact ones: mean |error| over the volume and within
    ``band`` mm of the surface, max |error|, and the share of voxels with the wrong sign."""
    pred, exact = np.asarray(pred, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    err = np.abs(pred - exact)
    near = np.abs(exact) <= band
    return {
        "mae": float(err.mean()),
        "band_mae": float(err[near].mean()) if near.any() else float("nan"),
        "max_error": float(err.max()),
        "wrong_sign": float(np.mean((pred < 0) != (exact < 0))),
    }
