"""A third tissue beside the shape (a one-off probe, not a bench section): ``python bench/air_probe.py [FORWARD]``
(default hybrid). A CT-like phantom of the cochlea (0.35 mm, noise 100, blur 0.25; fluid 0, bone 1000) with an air
cell, a ball of -1000 (noise 100) of 3 mm radius whose surface lies 1 mm from the cochlea's bounding box, fitted with its
pose without and with ``window=(-400, 3000)``; printed: the fitted surface's mean and 95th-percentile distance to the
true one, the fitted inside intensity, R^2 and the time."""
from __future__ import annotations

import sys
import time
import warnings

import numpy as np

from sdmnn.fitting import fit
from sdmnn.phantom import make_phantom, surface_distances, truth_mesh


def main(forward: str = "hybrid") -> None:
    warnings.simplefilter("ignore")
    image, grid, truth = make_phantom("cochlea", {"a": 3.4, "alpha": 0.6, "b": 0.12, "phi": 0.2}, kind="ct",
                                      rotate=(15, -25, 35), spacing=(0.35,) * 3, margin=8)
    mesh = truth_mesh(truth)
    centre = np.array([mesh.bounds[1][0] + 4.0, *mesh.vertices[:, 1:].mean(0)])
    air = np.linalg.norm(grid.points().reshape(*grid.shape, 3) - centre, axis=-1) < 3.0
    image[air] = -1000 + 100 * np.random.default_rng(3).standard_normal(air.sum())
    print(f"{forward} fits | surface distance to the truth, mean / 95th percentile (mm) | inside intensity | R^2 | s")
    for window in (None, (-400, 3000)):
        t = time.perf_counter()
        r = fit(image, grid, observed_kind="intensity", forward=forward, pose="rigid", window=window)
        d = surface_distances(r.mesh(), mesh)
        print(f"window {window} | {d.mean():.3f} / {np.quantile(d, 0.95):.3f} | {r.noise['appearance']['inside']:.0f} | "
              f"{r.quality['r2']:.2f} | {time.perf_counter() - t:.1f}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:2])
