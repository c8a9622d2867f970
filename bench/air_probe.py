"""A third tissue beside the shape (a one-off probe, not a bench section): ``python bench/air_probe.py [FORWARD]``
(default hybrid). A CT-like phantom of the cochlea (0.35 mm, noise 100, blur 0.25; fluid 0, bone 1000) with air
(-1000, noise 100) beside it: a cell, a ball of 3 mm radius whose surface lies 1 mm from the cochlea's bounding box,
or a cavity, all beyond a plane 0.5 mm from the cochlea's farthest point along x (as the middle ear lies beside the
cochlea). Each is fitted with its pose with every voxel (``window=None``), with the default window (``"auto"``: the air
found) and with ``window=(-400, 3000)``; printed: the fitted surface's mean and 95th-percentile distance to the true
one, the fitted inside intensity, R^2, the voxels left out and the time.

``python bench/air_probe.py FORWARD N``: then N random cases fitted with the default window: a cochlea of random shape
(within the middle 80 % of each range) turned at random, on voxels of 0.3, 0.4 x 0.4 x 0.5 or 0.25 x 0.25 x 0.6 mm,
bone 1000-2000 and noise 50-150 (fluid 0), and air of either kind 0.3-1.5 mm from its farthest point along a random
direction; printed per case and in sum: the surface distances, the voxels left out and the shape's 90 % intervals
that hold the truth."""
from __future__ import annotations

import sys
import time
import warnings

import numpy as np

from sdmnn.fitting import fit
from sdmnn.phantom import make_phantom, surface_distances, truth_mesh


def main(forward: str = "hybrid") -> None:
    warnings.simplefilter("ignore")
    clear, grid, truth = make_phantom("cochlea", {"a": 3.4, "alpha": 0.6, "b": 0.12, "phi": 0.2}, kind="ct",
                                      rotate=(15, -25, 35), spacing=(0.35,) * 3, margin=8)
    mesh = truth_mesh(truth)
    points = grid.points().reshape(*grid.shape, 3)
    centre = np.array([mesh.bounds[1][0] + 4.0, *mesh.vertices[:, 1:].mean(0)])
    airs = {"a cell": np.linalg.norm(points - centre, axis=-1) < 3.0,
            "a cavity": points[..., 0] > mesh.vertices[:, 0].max() + 0.5}
    print(f"air | {forward} fit's window | surface distance to the truth, mean / 95th percentile (mm) | inside intensity "
          "| R^2 | voxels left out | s")
    for name, air in airs.items():
        image = clear.copy()
        image[air] = -1000 + 100 * np.random.default_rng(3).standard_normal(air.sum())
        for window in (None, "auto", (-400, 3000)):
            t = time.perf_counter()
            r = fit(image, grid, observed_kind="intensity", forward=forward, pose="rigid", window=window)
            d = surface_distances(r.mesh(), mesh)
            print(f"{name} | {window} | {d.mean():.3f} / {np.quantile(d, 0.95):.3f} | "
                  f"{r.noise['appearance']['inside']:.0f} | {r.quality['r2']:.2f} | "
                  f"{r.window['left_out_voxels'] if r.window else 0} | {time.perf_counter() - t:.1f}", flush=True)


def random_cases(forward: str, n: int) -> None:
    import sdmnn

    warnings.simplefilter("ignore")
    fam = sdmnn.get_family("cochlea")
    rng = np.random.default_rng(7)
    spacings = ((0.3, 0.3, 0.3), (0.4, 0.4, 0.5), (0.25, 0.25, 0.6))
    print(f"case | air | gap (mm) | voxels (mm) | {forward} fit: surface distance mean / 95th percentile (mm) | "
          "voxels left out | shape intervals holding the truth | residuals' correlation volume (voxels) | s")
    means, held = [], 0
    for case in range(n):
        params = dict(zip(fam.names, fam.space.low + (0.1 + 0.8 * rng.random(len(fam.names))) * (fam.space.high - fam.space.low)))
        spacing = spacings[case % 3]
        image, grid, truth = make_phantom("cochlea", params, kind="ct", rotate=rng.uniform(-180, 180, 3),
                                          spacing=spacing, margin=5, intensities=(0.0, rng.uniform(1000, 2000)),
                                          noise=rng.uniform(50, 150), seed=case)
        mesh = truth_mesh(truth)
        points = grid.points().reshape(*grid.shape, 3)
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)
        far, gap = (mesh.vertices @ u).max(), rng.uniform(0.3, 1.5)
        if case % 2:
            kind, radius = "cell", rng.uniform(1.5, 3.0)
            air = np.linalg.norm(points - (mesh.vertices.mean(0) + (far - mesh.vertices.mean(0) @ u + gap + radius) * u), axis=-1) < radius
        else:
            kind, air = "cavity", points @ u > far + gap
        image[air] = -1000 + 100 * rng.standard_normal(air.sum())
        t = time.perf_counter()
        r = fit(image, grid, observed_kind="intensity", forward=forward, pose="rigid")
        d = surface_distances(r.mesh(), mesh)
        iv = r.interval(0.9)
        hits = sum(iv[k][0] <= params[k] <= iv[k][1] for k in fam.names)
        means.append(d.mean())
        held += hits
        print(f"{case} | {kind} | {gap:.2f} | {' x '.join(f'{v:g}' for v in spacing)} | {d.mean():.3f} / "
              f"{np.quantile(d, 0.95):.3f} | {r.window['left_out_voxels'] if r.window else 0} | {hits} / 4 | "
              f"{r.noise['correlation_volume']:.1f} | {time.perf_counter() - t:.1f}", flush=True)
    print(f"{n} cases: surface distance mean of means {np.mean(means):.3f} mm, largest {np.max(means):.3f}; "
          f"{held} / {4 * n} intervals hold the truth")


if __name__ == "__main__":
    main(*sys.argv[1:2])
    if len(sys.argv) > 2:
        random_cases(sys.argv[1], int(sys.argv[2]))
