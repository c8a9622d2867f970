"""Label maps of thick slices (a one-off probe, not a bench section): ``python bench/thick_slices_probe.py [SPACING
[POSE [N [FORWARD]]]]`` (default 0.3,0.3,1.0 rigid 6 exact). N study shapes (``fit_bench.cases``), each (pose rigid) at a random
orientation 10-40 degrees from the model's and shifted up to 1 mm, or (pose none) at the model's pose, as a label map
of that spacing (partial volume of a 4x finer mesh), fitted with the FORWARD model; printed per case: the MAP's error and half the 90 % interval,
% of each range, whether the interval covers the truth, and the rotation error. The label likelihood reads the SDM at
each voxel's centre, corrected for the surface's curvature across the voxel (``_VoxelTerms``): on slices several
times thicker than wide, across tubes a few tenths of a millimetre thick, that expansion no longer holds."""
from __future__ import annotations

import sys
import warnings

import numpy as np

import sdmnn
from sdmnn.fitting import fit
from sdmnn.phantom import make_phantom

from fit_bench import cases, pose_error


def main(spacing, pose: str = "rigid", n: int = 6, forward: str = "exact"):
    warnings.simplefilter("ignore")
    fam = sdmnn.get_family("cochlea")
    span = fam.space.high - fam.space.low
    rng = np.random.default_rng(5)
    print(f"label maps of {spacing} mm, pose {pose}, {forward} fits | MAP minus truth, % of the ranges of {', '.join(fam.names)} | half "
          "the 90 % interval, % | interval covers the truth | rotation error (deg)")
    errors, covered = [], []
    for i, truth in enumerate(cases(n)):
        rot = rng.normal(size=3)
        rot = rot / np.linalg.norm(rot) * rng.uniform(10, 40)
        move = {"rotate": rot, "translate": rng.uniform(-1, 1, 3)} if pose == "rigid" else {}
        image, grid, info = make_phantom("cochlea", truth, spacing=spacing, **move)
        r = fit(image, grid, forward=forward, pose=pose, observed_kind="labels", seed=0)
        iv = r.interval(0.9)
        err = (np.array([r.params[k] for k in fam.names]) - truth) / span * 100
        half = np.array([(iv[k][1] - iv[k][0]) / 2 for k in fam.names]) / span * 100
        covers = [bool(iv[k][0] <= t <= iv[k][1]) for k, t in zip(fam.names, truth)]
        errors.append(np.abs(err))
        covered.append(covers)
        turn = f"{np.degrees(np.linalg.norm(pose_error(r, info)[0])):.1f}" if pose == "rigid" else "-"
        print(f"{i} | " + ", ".join(f"{x:+.1f}" for x in err) + " | " + ", ".join(f"{x:.1f}" for x in half)
              + " | " + ", ".join("yes" if c else "NO" for c in covers) + f" | {turn}", flush=True)
    print(f"mean |error| % | {', '.join(f'{x:.1f}' for x in np.mean(errors, 0))} | intervals covering the truth | "
          f"{', '.join(f'{c}/{n}' for c in np.sum(covered, 0))}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(tuple(float(x) for x in (args[0] if args else "0.3,0.3,1.0").split(",")), *(args[1:2] or ["rigid"]),
         *[int(a) for a in args[2:3]], *args[3:4])
