"""``make demo``: the default cochlea's SDM, exact and (when a model is shipped) from SDMNN."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .io import make_folder, save_volume
from .sdm import exact_sdm
from .shapes import get_family
from .viz import save_slices


def run_demo(folder: Path, console) -> dict:
    folder = make_folder(folder)
    fam = get_family("cochlea")
    params = fam.defaults
    exact_sdm(fam.mesh(params), fam.grid)  # compile the kernels once, so the timings below are the work
    t_mesh, mesh = _median_time(lambda: fam.mesh(params), 3)
    t_sdm, exact = _median_time(lambda: exact_sdm(mesh, fam.grid), 3)
    console.print(f"cochlea {params}")
    console.print(f"exact: mesh {1e3 * t_mesh:.0f} ms ({len(mesh.faces)} triangles) + SDM {1e3 * t_sdm:.0f} ms "
                  f"on {fam.grid.shape} voxels of {fam.grid.spacing[0]} mm (median of 3)")
    save_volume(folder / "cochlea_exact.nii.gz", exact, fam.grid)
    t_exact = t_mesh + t_sdm
    others, result = {}, {"exact_seconds": t_exact}
    from .nn.checkpoint import load_model, shipped_model_path

    if shipped_model_path("cochlea", "sdmnn") is not None:
        model = load_model()
        model.predict(params)  # warm-up
        t_nn, pred = _median_time(lambda: model.predict(params), 20)
        err = np.abs(pred - exact)
        band = np.abs(exact) <= 1.0
        wrong = np.mean(np.sign(pred) != np.sign(exact))
        console.print(f"SDMNN: {1e3 * t_nn:.1f} ms (median of 20; {speed_ratio(t_exact, t_nn)} than the exact SDM); mean |error| "
                      f"{err.mean():.4f} mm, within 1 mm of the surface {err[band].mean():.4f} mm, max {err.max():.3f} mm, "
                      f"wrong sign {100 * wrong:.2f} % of voxels")
        save_volume(folder / "cochlea_sdmnn.nii.gz", pred, fam.grid)
        others["SDMNN zero contour"] = pred
        result.update(nn_seconds=t_nn, mean_abs_error=float(err.mean()))
    save_slices(folder / "cochlea.png", exact, fam.grid, others=others, title="default cochlea: exact SDM")
    console.print(f"wrote {folder}/ (NIfTI volumes and cochlea.png)")
    return result


def speed_ratio(reference_seconds: float, seconds: float) -> str:
    """How much faster or slower ``seconds`` is than ``reference_seconds``, in words: "3.2x faster",
    "1.6x slower", "as fast" (within 5 %)."""
    ratio = reference_seconds / seconds
    if abs(ratio - 1) < 0.05:
        return "as fast"
    return f"{ratio:.1f}x faster" if ratio > 1 else f"{1 / ratio:.1f}x slower"


def _median_time(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out
