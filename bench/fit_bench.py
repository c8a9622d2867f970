"""The 9-case shape-fit study: fits with the nn, hybrid and exact forward models (the poster's Tables 1 and 2)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import sdmnn
from sdmnn.dataset import design_points
from sdmnn.fit import fit, synthetic_target
from sdmnn.nn import shipped_model_path

from common import table

RESULTS = Path("docs/fit_study.json")


def cases(n):
    """n ground-truth vectors spread over the inner 80 % of the box (scrambled Sobol, seed 3)."""
    fam = sdmnn.get_family("cochlea")
    pts = design_points("sobol:16", fam, seed=3)[:n]
    centre = (fam.space.low + fam.space.high) / 2
    return centre + 0.8 * (pts - centre)


def run(quick: bool = False) -> str:
    if shipped_model_path() is None:
        return "## Shape fits\n\nNo shipped model."
    fam = sdmnn.get_family("cochlea")
    span = fam.space.high - fam.space.low
    model = sdmnn.load_model()
    n = 3 if quick else 9
    truths = cases(n)
    forwards = ["sdmnn", "hybrid"] if quick else ["sdmnn", "hybrid", "exact"]
    records = []
    for i, truth in enumerate(truths):
        sdm, grid = synthetic_target("cochlea", truth, "sdm", sigma=0.0)
        labels, _ = synthetic_target("cochlea", truth, "labels", tau=0.05, seed=i)
        for fw in forwards:
            r = fit(sdm, grid, observed_kind="sdm", forward=fw, model=model, seed=0, **({"n_screen": 32} if fw == "exact" else {}))
            records.append({"case": i, "target": "sdm, noise-free", "forward": fw, "truth": truth.tolist(),
                            "map": [r.params[k] for k in fam.names], "interval": [list(r.interval(0.9)[k]) for k in fam.names],
                            "seconds": r.seconds, "evaluations": r.evaluations})
            print(f"[fit] case {i} sdm {fw}: {r.seconds:.1f} s, rel. error {np.abs(np.array(records[-1]['map']) - truth) / span}", flush=True)
        for fw in ["sdmnn", "hybrid"]:
            r = fit(labels, grid, observed_kind="labels", forward=fw, model=model, seed=0)
            records.append({"case": i, "target": "labels, boundary noise tau=0.05 mm", "forward": fw, "truth": truth.tolist(),
                            "map": [r.params[k] for k in fam.names], "interval": [list(r.interval(0.9)[k]) for k in fam.names],
                            "seconds": r.seconds, "evaluations": r.evaluations})
            print(f"[fit] case {i} labels {fw}: {r.seconds:.1f} s", flush=True)
    RESULTS.write_text(json.dumps(records, indent=1))
    return summarise(records, fam, quick)


def summarise(records, fam, quick):
    span = fam.space.high - fam.space.low
    names = fam.names
    rows_time, rows_err, rows_cov = [], [], []
    for target in dict.fromkeys(r["target"] for r in records):
        for fw in dict.fromkeys(r["forward"] for r in records if r["target"] == target):
            rs = [r for r in records if r["target"] == target and r["forward"] == fw]
            secs = [r["seconds"] for r in rs]
            ev = {k: int(np.median([r["evaluations"][k] for r in rs])) for k in ("sdmnn", "exact")}
            rows_time.append([target, fw, len(rs), f"{np.median(secs):.1f}", f"{max(secs):.1f}", ev["sdmnn"], ev["exact"]])
            err = np.array([np.abs(np.array(r["map"]) - r["truth"]) / span for r in rs])  # (cases, d)
            rows_err.append([target, fw, *[f"{100 * err[:, j].mean():.3f} / {100 * err[:, j].max():.3f}" for j in range(len(names))]])
            inside = np.array([[lo <= t <= hi for t, (lo, hi) in zip(r["truth"], r["interval"])] for r in rs])  # (cases, d)
            rows_cov.append([target, fw, f"{inside.sum()} / {inside.size}", f"{inside.all(1).sum()} / {len(rs)}"])
    agree = []
    sdm_target = "sdm, noise-free"
    by = {(r["case"], r["forward"]): r for r in records if r["target"] == sdm_target}
    for fw in ("sdmnn", "hybrid"):
        if all((c, "exact") in by for c, f in by if f == fw):
            d = np.array([np.abs(np.array(by[(c, fw)]["map"]) - by[(c, "exact")]["map"]) for c, f in by if f == fw])
            agree.append([fw, *[f"{d[:, j].mean():.2e} / {d[:, j].max():.2e}" for j in range(len(names))]])
    out = [
        "## Shape fits: the 9-case study (issue: fitting; the poster's Tables 1 and 2)",
        "",
        f"{len(set(r['case'] for r in records))} ground-truth cochleae spread over the inner 80 % of the box (`bench/fit_bench.py`). Targets: the exact SDM",
        "(noise-free), and label maps drawn from the logistic model around it (boundary noise, tau = 0.05 mm). Uniform priors",
        "over the family's ranges; tau / sigma estimated. Every fit starts from the same Sobol screen (seed 0). Results per fit: "
        f"`{RESULTS}`.",
        "",
        "### Time per fit (Table 1 analogue: poster, SDMNN 1 h 05, mesh-based 12 h 15 on their model and machine)",
        "",
        table(["target", "forward model", "fits", "median s", "max s", "median NN evaluations", "median exact evaluations"], rows_time),
        "",
        "### Error of the MAP against the truth, % of each parameter's range (mean / max over cases)",
        "",
        table(["target", "forward model", *names], rows_err),
    ]
    if agree:
        out += ["", "### Agreement with the exact (mesh-based) fit, |theta - theta_exact| in parameter units (mean / max; Table 2 analogue)", "",
                table(["forward model", *names], agree)]
    out += ["", "### Coverage of the truth by the 90 % posterior intervals", "",
            "Per parameter (expected: 90 % of the intervals) and per case (all four at once: about 0.9^4 = 66 % of the cases",
            "if the posterior were exact and the parameters independent).", "",
            table(["target", "forward model", "parameter intervals covering the truth", "cases with all four covered"], rows_cov)]
    return "\n".join(out)
