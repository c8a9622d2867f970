"""Accuracy of predicted SDMs against exact ones, as training, evaluation and the benchmarks report it."""
from __future__ import annotations

import numpy as np


def sdm_errors(pred: np.ndarray, exact: np.ndarray, band: float = 1.0, voxel: float | None = None,
               model_error: bool = False) -> dict:
    """Accuracy of predicted SDMs against exact ones: mean |error| over the volume and within
    ``band`` mm of the surface, max |error|, and the share of voxels with the wrong sign, over the
    volume and (``wrong_sign_near``, when ``voxel`` is given) within one voxel of the surface, where
    the sign decides the shape and far voxels cannot hide it. With ``voxel`` and ``model_error``, also what a fit
    needs to know of the error as a model error (the validation stored in model.json): its RMS within one voxel of the
    surface (``near_rms``, mm) and the volume over which it is correlated there (``near_correlation_voxels``: voxels per independent error,
    from its autocorrelation within two voxels of the surface; see ``fitting.correlation_volume``)."""
    pred, exact = np.asarray(pred, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    err = np.abs(pred - exact)
    near = np.abs(exact) <= band
    wrong = (pred < 0) != (exact < 0)
    extra = {}
    if voxel is not None:
        close = np.abs(exact) <= voxel
        extra["wrong_sign_near"] = float(wrong[close].mean()) if close.any() else float("nan")
    if voxel is not None and model_error:
        extra["near_rms"] = float(np.sqrt(np.mean((pred - exact)[close] ** 2))) if close.any() else float("nan")
        extra["near_correlation_voxels"] = _correlation_voxels(pred - exact, np.abs(exact) <= 2 * voxel)
    return {**extra,
        "mae": float(err.mean()),
        "band_mae": float(err[near].mean()) if near.any() else float("nan"),
        "max_error": float(err.max()),
        "wrong_sign": float(wrong.mean()),
    }


def _correlation_voxels(err, band) -> float:
    """Mean over cases of the correlation volume (voxels) of the error within ``band`` (arrays (B, ...) or (...))."""
    from ..fitting import correlation_volume

    err, band = (err, band) if err.ndim == 4 else (err[None], band[None])
    vols = [correlation_volume(np.where(b, e, 0.0).ravel(), e.shape, max_lag=8) for e, b in zip(err, band) if b.sum() >= 10]
    return float(np.mean(vols)) if vols else float("nan")
