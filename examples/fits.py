"""Fit phantoms of a family with a trained network: label maps (a 4x finer mesh, partial volume) and the exact
SDM of that finer mesh, each with the hybrid forward model; prints the error as % of each range, whether the
truth lies in the 90 % interval, Dice and time. docs/own_family.md's fit tables come from it:

    python examples/fits.py examples/aneurysm.py:ARTERY runs/ex/artery
"""
import sys

import numpy as np

import sdmnn
from sdmnn.phantom import make_phantom, truth_mesh

CASES = {
    "artery": [dict(radius=1.3, taper=0.8, bend=0.7, bulge=0.5), dict(radius=1.15, taper=0.9, bend=1.2, bulge=0.3),
               dict(radius=1.45, taper=0.7, bend=0.3, bulge=0.8)],
    "aneurysm": [dict(radius=1.3, taper=0.8, bend=0.9, bulge=0.6, bulge_at=0.45, bulge_length=3.5),
                 dict(radius=1.15, taper=0.9, bend=0.4, bulge=0.8, bulge_at=0.6, bulge_length=2.5),
                 dict(radius=1.45, taper=0.7, bend=1.2, bulge=0.3, bulge_at=0.35, bulge_length=4.5)],
}


def main(spec: str, model_folder: str, spacing: float = 0.25):
    fam = sdmnn.get_family(spec)
    model = sdmnn.load_model(model_folder)
    span = fam.space.high - fam.space.low
    for truth in CASES[fam.name]:
        image, grid, info = make_phantom(fam, truth, spacing=spacing)
        targets = {"labels": (image, grid), "sdm": (sdmnn.exact_sdm(truth_mesh(info), fam.grid), fam.grid)}
        for kind, (observed, g) in targets.items():
            r = sdmnn.fit(observed, g, family=fam, observed_kind=kind, forward="hybrid", model=model)
            error = 100 * np.abs(np.array([r.params[n] - truth[n] for n in fam.names])) / span
            inside = [lo <= truth[n] <= hi for n, (lo, hi) in r.interval(0.9).items() if n in truth]
            print(f"{kind:6s} {truth}: error % of range {np.round(error, 2).tolist()}, in the 90 % interval "
                  f"{sum(inside)}/{len(inside)}, Dice {r.quality.get('dice', float('nan')):.3f}, {r.seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
