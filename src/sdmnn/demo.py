"""``make demo``: the default cochlea's SDM, exact and (when a model is shipped) from SDMNN."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .io import save_volume
from .sdm import exact_sdm
from .shapes import get_family
from .viz import save_slices


def run_demo(folder: Path, console) -> dict:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fam = get_family("cochlea")
    params = fam.defaults
    exact_sdm(fam.mesh(params), fam.grid)  # compile the kernels once, so the timing below is the work
    t0 = time.perf_counter()
    mesh = fam.mesh(params)
    t1 = time.perf_counter()
    exact = exact_sdm(mesh, fam.grid)
    t2 = time.perf_counter()
    console.print(f"cochlea {params}")
    console.print(f"exact: mesh {1e3 * (t1 - t0):.0f} ms ({len(mesh.faces)} triangles) + SDM {1e3 * (t2 - t1):.0f} ms "
                  f"on {fam.grid.shape} voxels of {fam.grid.spacing[0]} mm")
    save_volume(folder / "cochlea_exact.nii.gz", exact, fam.grid)
    others, result = {}, {"exact_seconds": t2 - t0}
    from .nn import shipped_model_path

    if shipped_model_path("cochlea", "sdmnn") is not None:
        from .nn import load_model

        model = load_model()
        model.predict(params)  # warm-up
        t3 = time.perf_counter()
        pred = model.predict(params)
        t4 = time.perf_counter()
        err = np.abs(pred - exact)
        band = np.abs(exact) <= 1.0
        wrong = np.mean(np.sign(pred) != np.sign(exact))
        console.print(f"SDMNN: {1e3 * (t4 - t3):.1f} ms ({(t2 - t0) / (t4 - t3):.0f}x faster); mean |error| "
                      f"{err.mean():.4f} mm, within 1 mm of the surface {err[band].mean():.4f} mm, max {err.max():.3f} mm, "
                      f"wrong sign {100 * wrong:.2f} % of voxels")
        save_volume(folder / "cochlea_sdmnn.nii.gz", pred, fam.grid)
        others["SDMNN zero contour"] = pred
        result.update(nn_seconds=t4 - t3, mean_abs_error=float(err.mean()))
    save_slices(folder / "cochlea.png", exact, fam.grid, others=others, title="default cochlea: exact SDM")
    console.print(f"wrote {folder}/ (NIfTI volumes and cochlea.png)")
    return result
