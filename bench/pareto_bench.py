"""Time against near-surface accuracy across SDMNN widths: the same training recipe and wall-clock budget for each
channel width (the shipped model's among them), then each one's batch-1 time (float32 and bfloat16, taken in turn with
the exact path) and its errors on held-out shapes. The long-budget points: the shipped model and, where present, the
runs in ``LONG_RUNS`` (hours of fine-tuning in all).

The training (``--minutes`` each, one torch thread) is kept in runs/pareto/ and reused: delete that folder to retrain.
``python bench/pareto_bench.py [--minutes 12]`` trains only (in the background, say); ``python bench/run.py --only
pareto`` trains what is missing and measures (docs/bench/pareto.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import sdmnn
from sdmnn.nn import load_model, shipped_model_path
from sdmnn.nn.evaluate import evaluate, summary
from sdmnn.nn.train import TrainConfig, train

from common import table, timeit_interleaved

WIDTHS = ((16, 16, 12), (24, 24, 16), (32, 32, 24), (48, 48, 32))
RUNS = Path("runs/pareto")
DATA = [Path("data/cochlea-grid5.zarr"), Path("data/cochlea-sobol1024.zarr")]
VAL = Path("data/cochlea-val64.zarr")
#: Long-trained runs, measured where present: the full-width model of `make model`, the widths fine-tuned from it
#: after ``train --init runs/cochlea-v7 --channels ...`` narrowed it, and the shipped model narrowed to the width that
#: runs in 5 ms on a CPU without native bfloat16 (``train --init shipped --channels 32,16,8``; each run's command is in
#: its model.json).
LONG_RUNS = (Path("runs/cochlea-v7"), Path("runs/cochlea-n32-32-16"), Path("runs/cochlea-n24-24-16"),
             Path("runs/cochlea-n32-16-8"))
RECIPE = dict(near_weight=20.0, near_scale=0.15, hard=0.5, threads=1, eval_every=250)


def _name(channels) -> str:
    return "c" + "-".join(map(str, channels))


def trained() -> bool:
    return all((RUNS / _name(c) / "model.json").exists() for c in WIDTHS)


def train_all(minutes: float, progress: bool = False) -> None:
    """Train each width for ``minutes`` (skipped where runs/pareto/<width>/model.json exists)."""
    for channels in WIDTHS:
        out = RUNS / _name(channels)
        if (out / "model.json").exists():
            continue
        command = (f"python bench/pareto_bench.py --minutes {minutes:g}  # channels {','.join(map(str, channels))}")
        train(TrainConfig(family="cochlea", data=[str(p) for p in DATA], val=str(VAL), minutes=minutes, channels=channels,
                          out=str(out), **RECIPE), progress=progress, command=command)


def run(quick: bool = False, minutes: float = 12.0) -> str:
    missing = [p for p in [*DATA, VAL] if not p.exists()]
    if not trained() and (quick or missing):
        print(f"[bench] pareto: skipped, {'make data first' if missing else 'it trains four networks (not with --quick)'}; "
              "the section keeps its last result")
        return None
    train_all(minutes)
    torch.set_num_threads(2)
    fam = sdmnn.get_family("cochlea")
    grid, params = fam.grid, fam.defaults
    models = {_name(c): RUNS / _name(c) for c in WIDTHS}
    models.update({str(path): path for path in LONG_RUNS if (path / "model.json").exists()})
    if shipped_model_path() is not None:
        models["shipped"] = shipped_model_path()
    points = {name: {p: load_model(path, threads=2, precision=p) for p in ("float32", "bfloat16")} for name, path in models.items()}
    if "shipped" in points:  # a long run that is the shipped model is listed once, as that
        sha = points["shipped"]["float32"].meta["weights_sha256"]
        points = {k: v for k, v in points.items() if k == "shipped" or v["float32"].meta["weights_sha256"] != sha}
    fns = {"exact": lambda: sdmnn.exact_sdm(fam.mesh(params), grid)}
    for name, by_precision in points.items():
        for p, model in by_precision.items():
            fns[(name, p)] = (lambda m: lambda: m.predict(params))(model)
    timed = timeit_interleaved(fns, repeat=10 if quick else 60, warmup=5, settle=fns["exact"])  # each after an exact SDM
    t_exact = timed["exact"][0]
    rows, n = [], 20 if quick else 100
    budget = points[_name(WIDTHS[0])]["float32"].meta["training"]["config"]["minutes"]
    for name, by_precision in points.items():
        model = by_precision["bfloat16"]
        e = summary(evaluate(model, n=n, seed=1, progress=False))
        training = model.meta["training"]
        t32, t16 = timed[(name, "float32")][0], timed[(name, "bfloat16")][0]
        widths = "-".join(map(str, model.net.config.channels))
        label = widths if name in (_name(c) for c in WIDTHS) else f"{widths}, {'shipped' if name == 'shipped' else name}"
        init = training["config"].get("init")
        rows.append([label, f"{sum(p.numel() for p in model.net.parameters()):,}",
                     f"{training['seconds'] / 60:.0f}" + (f" (fine-tuned from {init})" if init else ""),
                     training["steps"], f"{1e3 * t32:.1f}", f"{1e3 * t16:.1f}", f"{t_exact / t16:.1f}x",
                     f"{100 * e['wrong_sign_near_fraction']:.2f}", f"{100 * e['worst_case']['wrong_sign_near_fraction']:.2f}",
                     f"{e['mae_near_mm']:.4f}", f"{e['worst_case']['max_error_mm']:.3f}"])
    return "\n".join([
        "## Time against accuracy across widths",
        "",
        f"SDMNN with the channel widths below (coarse volume, then each stage), each trained from scratch for {budget:g} "
        f"minutes of wall clock (steps: how far each got on this machine) on one thread with one recipe (grid:5 + sobol:1024, `--near-weight {RECIPE['near_weight']:g} --near-scale "
        f"{RECIPE['near_scale']:g} --hard {RECIPE['hard']:g}`), against long-trained models: the shipped one and, where "
        "present, the runs of `make model` and narrower widths fine-tuned from them (`sdmnn train --init runs/cochlea-v7 "
        "--channels ...`, which keeps the wider model's most useful channels; train min: that last run only, each "
        "run's command is in its model.json). "
        f"Times: batch 1 on 2 threads, median of {10 if quick else 60} calls taken in turn with params -> mesh -> exact SDM "
        f"({1e3 * t_exact:.0f} ms here). Accuracy (bfloat16): `evaluate` on 100 held-out shapes (seed 1); wrong sign near: "
        "voxels within one voxel of the surface.",
        "",
        table(["widths", "weights", "train min", "steps", "ms float32", "ms bfloat16", "exact / bfloat16",
               "wrong sign near % (mean)", "(worst case)", "MAE within 1 mm (mm)", "max error (mm, worst case)"], rows),
        "",
        "Reproduce: `python bench/run.py --only pareto` (reuses runs/pareto/; delete it to retrain).",
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    args = parser.parse_args()
    train_all(args.minutes, progress=False)
    print("measure with `python bench/run.py --only pareto` (it writes the section with its date and machine)")
