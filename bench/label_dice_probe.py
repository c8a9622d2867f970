"""What Dice a perfect fit of a label map gets (a one-off probe, not a bench section): ``python bench/label_dice_probe.py
[N]``. N study shapes (``fit_bench.cases``, default 12), each turned up to 40 degrees at random, as phantom label maps of
several voxel sizes (partial volume of a 4x finer mesh); each compared with the labels of the model's own mesh at the
true parameters and pose, read two ways: voxels whose centre lies inside (what the fit's quality read before), and
voxels more than half inside (``sdm.inside_fraction``, what it reads now). Printed: the Dice of each, min and median,
over the maps that label any voxel (make_phantom and the fit refuse an empty one; how many were empty is printed too)."""
from __future__ import annotations

import sys

import numpy as np

import sdmnn
from sdmnn.phantom import make_phantom
from sdmnn.sdm import inside_fraction

from fit_bench import cases

SPACINGS = ((0.3, 0.3, 0.3), (0.4, 0.4, 0.4), (0.3, 0.3, 0.6), (0.3, 0.3, 1.0), (0.5, 0.5, 1.5))


def dice(a, b) -> float:
    return float(2 * np.sum(a & b) / max(a.sum() + b.sum(), 1))


def main(n: int = 12) -> None:
    fam = sdmnn.get_family("cochlea")
    rng = np.random.default_rng(5)
    print(f"{n} shapes each | Dice of the true shape's labels against the phantom's: voxel centres inside (min, median) | "
          "voxels more than half inside (min, median)")
    for spacing in SPACINGS:
        centre, half, empty = [], [], 0
        for truth in cases(n):
            turn = rng.uniform(-40, 40, 3)
            try:
                image, grid, info = make_phantom("cochlea", truth, spacing=spacing, rotate=turn)
            except sdmnn.SdmnnError:  # no voxel half inside: make_phantom refuses an empty label map
                empty += 1
                continue
            mesh = fam.mesh(truth).apply_transform(np.array(info["pose"]))
            observed = image > 0
            centre.append(dice(sdmnn.exact_sdm(mesh, grid) < 0, observed))
            half.append(dice(inside_fraction(mesh, grid) >= 0.5, observed))
        print(f"{'x'.join(f'{s:g}' for s in spacing)} mm | {min(centre):.2f}, {np.median(centre):.2f} | "
              f"{min(half):.2f}, {np.median(half):.2f}" + (f" ({empty} of {n} maps empty)" if empty else ""), flush=True)


if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:2]])
