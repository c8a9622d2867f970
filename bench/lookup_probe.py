"""How much of a network-only fit's offset is its lookup's, by the lookup grid's spacing (a one-off probe, not a bench
section): ``python bench/lookup_probe.py [CASE ...]`` (default: 5 7, the fit study's pose-known label maps 41 and 43).
Each pose-known label map of the fit study (0.3 mm, partial volume of a 4x finer mesh) is fitted network-only with the
exact SDM in the network's place, on the model grid (0.2 mm) and on one twice as fine (0.1 mm); printed: the MAP minus
the hybrid's from docs/fit_study.json, % of each range. An error-free network sampled as the fit samples it."""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np

import sdmnn
from sdmnn.fitting import fit

from common import twice_as_fine
from fit_bench import KNOWN, RESULTS, ExactOnGrid, fitted_as, known_phantoms


class ExactOnFinerGrid(ExactOnGrid):
    """ExactOnGrid on a grid of half the model grid's spacing over the same extent."""

    def __init__(self, model):
        super().__init__(model)
        self.grid = twice_as_fine(model.grid)


def main(which):
    warnings.simplefilter("ignore")
    fam, model = sdmnn.get_family("cochlea"), sdmnn.load_model()
    span = fam.space.high - fam.space.low
    records = [r for r in json.loads(RESULTS.read_text()) if r["target"] == KNOWN]
    first = min(r["case"] for r in records)
    hybrid = {r["case"]: np.array(r["map"]) for r in records if r["forward"] == "hybrid"}
    print("case | lookup grid | MAP minus the hybrid's, % of the ranges of " + ", ".join(fam.names))
    for case, _, _, image, grid, _ in known_phantoms(max(which) + 1, first, only={first + i for i in which}):
        for name, stand_in in (("0.2 mm (the model grid)", ExactOnGrid(model)), ("0.1 mm", ExactOnFinerGrid(model))):
            r = fit(image, grid, forward="sdmnn", model=stand_in, seed=0, **fitted_as(KNOWN))
            off = (np.array([r.params[k] for k in fam.names]) - hybrid[case]) / span * 100
            print(f"{case} | {name} | " + ", ".join(f"{x:+.2f}" for x in off), flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [5, 7])
