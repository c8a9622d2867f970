"""How far the number of parameters goes: the same architecture and training budget on cochlea families of 4, 8
and 12 parameters (bench/param_families.py), each trained on a Sobol design, evaluated on held-out shapes (error
over the grid and near the surface, wrong signs within one voxel) and fitted to label-map phantoms (a 4x finer
mesh, partial volume, 0.25 mm voxels) with the hybrid forward model.

Standalone, with another budget: ``python bench/params_bench.py --minutes 15`` (writes docs/bench/params.md).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import sdmnn
from sdmnn.dataset import design_points, make_dataset
from sdmnn.fitting import fit
from sdmnn.nn.evaluate import evaluate, summary
from sdmnn.nn.train import TrainConfig, train
from sdmnn.phantom import make_phantom, surface_distances, truth_mesh

from common import table

FAMILIES = Path(__file__).resolve().parent / "param_families.py"
NAMES = ("COCHLEA4", "COCHLEA8", "COCHLEA12")
RUNS = Path("runs/params")
RESULTS = Path("docs/params_study.json")


def one(name: str, minutes: float, samples: int, n_eval: int, n_fit: int) -> dict:
    spec = f"{FAMILIES}:{name}"
    fam = sdmnn.get_family(spec)
    out = RUNS / fam.name
    t0 = time.perf_counter()
    make_dataset(out / "train.zarr", spec, f"sobol:{samples}", seed=0, workers=2, progress=False)
    make_dataset(out / "val.zarr", spec, "random:32", seed=7, workers=2, progress=False)
    data_seconds = time.perf_counter() - t0
    result = train(TrainConfig(family=spec, data=[str(out / "train.zarr")], val=str(out / "val.zarr"), minutes=minutes,
                               eval_every=250, out=str(out / "model")), progress=False)
    model = sdmnn.load_model(out / "model")
    figures = summary(evaluate(model, n=n_eval, seed=1, progress=False))
    span = fam.space.high - fam.space.low
    fits = []
    centre = (fam.space.low + fam.space.high) / 2
    for i, truth in enumerate(design_points(f"random:{n_fit}", fam, seed=11)):
        truth = centre + 0.8 * (truth - centre)  # the inner 80 % of the box
        image, grid, info = make_phantom(fam, truth, spacing=0.25)
        r = fit(image, grid, family=fam, observed_kind="labels", forward="hybrid", model=model, seed=i)
        error = np.abs(np.array([r.params[n] for n in fam.names]) - truth) / span
        fits.append({"error_percent_of_range": (100 * error).tolist(), "mssd_mm": float(surface_distances(r.mesh(), truth_mesh(info)).mean()),
                     "seconds": r.seconds, "dice": r.quality.get("dice")})
    return {"family": fam.name, "parameters": len(fam.space), "grid": list(fam.grid.shape), "minutes": minutes,
            "samples": samples, "data_seconds": data_seconds, "steps": result["steps"], "train_seconds": result["seconds"],
            "evaluate": figures, "fits": fits}


def report(records: list[dict]) -> str:
    rows = []
    for r in records:
        e, fits = r["evaluate"], r["fits"]
        worst = max(max(f["error_percent_of_range"]) for f in fits)
        median = float(np.median([np.median(f["error_percent_of_range"]) for f in fits]))
        rows.append([r["parameters"], "x".join(map(str, r["grid"])), r["steps"], f"{r['train_seconds'] / 60:.1f}",
                     f"{e['mae_mm']:.4f}", f"{e['mae_near_mm']:.4f}", f"{100 * e['wrong_sign_near_fraction']:.2f}",
                     f"{100 * e['worst_case']['wrong_sign_near_fraction']:.2f}", f"{e['worst_case']['max_error_mm']:.3f}",
                     f"{np.mean([f['mssd_mm'] for f in fits]):.4f}", f"{median:.2f} / {worst:.2f}", f"{e['ms_per_sdm']:.1f}"])
    r0 = records[0]
    return "\n".join([
        "## How far the number of parameters goes", "",
        f"Cochlea families of 4, 8 and 12 parameters (bench/param_families.py; grid spacing 0.2 mm), each trained with the "
        f"same architecture (SDMNN, channels 32,32,24) on sobol:{r0['samples']} exact SDMs for {r0['minutes']:g} minutes on "
        f"this machine, evaluated on {r0['evaluate']['n']} held-out random shapes, and fitted (hybrid forward model, label "
        f"map phantoms from a 4x finer mesh at 0.25 mm voxels, pose known) on {len(r0['fits'])} shapes of the inner 80 % of "
        "the box. Wrong sign near: voxels within one voxel of the surface. Fit error: |MAP - truth| as % of each range, "
        "median over parameters and cases / worst. MSSD: mean symmetric surface distance of the fitted surface to the true one.",
        "",
        table(["params", "grid", "steps", "train min", "MAE mm", "MAE within 1 mm", "wrong sign near % (mean)",
               "(worst case)", "max error mm", "fit MSSD mm", "fit error % of range (median / worst)", "ms per SDM"], rows),
        "", f"Raw figures: {RESULTS}.",
    ])


def run(quick: bool = False, minutes: float | None = None) -> str:
    minutes = minutes or (2.0 if quick else 120.0)
    samples, n_eval, n_fit = (128, 10, 2) if quick else (1024, 50, 5)
    records = [one(name, minutes, samples, n_eval, n_fit) for name in NAMES]
    RESULTS.write_text(json.dumps(records, indent=1) + "\n")
    return report(records)


if __name__ == "__main__":
    import datetime
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from run import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=None, help="training budget per family (default: 120, 2 with --quick)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    t = time.perf_counter()
    text = run(args.quick, args.minutes)
    Path("docs/bench/params.md").write_text(f"{text}\n\n_Section regenerated in {time.perf_counter() - t:.0f} s "
                                            f"(`python bench/params_bench.py{' --quick' if args.quick else ''}{f' --minutes {args.minutes:g}' if args.minutes else ''}`) on {datetime.date.today()}. {machine()}_\n")
