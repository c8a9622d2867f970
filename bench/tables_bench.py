"""The poster's Table 1 (time for one SDM, time for a shape fit) for every method in one run, the accuracy
of each fast method against the exact SDM, and how the exact methods scale with grid size and triangles."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import sdmnn
from sdmnn.dataset import design_points
from sdmnn.nn import shipped_model_path
from sdmnn.nn.metrics import sdm_errors

from common import table, timeit
from fit_bench import LABELS, RESULTS
from sdm_bench import cube_grid, peers

SCALING = Path("docs/scaling.png")
POSTER = {"exact": ("10.7 s", "12 h 15"), "SDMNN": ("0.2 s", "1 h 05"), "DeepSDF": ("28.1 s", "failed")}


def run(quick: bool = False) -> str:
    fam = sdmnn.get_family("cochlea")
    grid = fam.grid
    params = fam.defaults
    others = peers()
    methods = {"exact (sdmnn: mesh + exact SDM)": lambda p: sdmnn.exact_sdm(fam.mesh(p), grid)}
    for name, fn in others.items():
        methods[f"{name}: mesh + SDM"] = lambda p, fn=fn: fn(fam.mesh(p), grid)
    for arch, label in (("sdmnn", "SDMNN"), ("deepsdf", "DeepSDF-style")):
        if shipped_model_path("cochlea", arch):
            model = sdmnn.load_model(family="cochlea", arch=arch, threads=2)  # as the text says; not the load average's choice
            methods[f"{label} (batch 1)"] = model.predict
    n = 5 if quick else 20
    cases = design_points(f"random:{n}", fam, seed=21)
    exact = [sdmnn.exact_sdm(fam.mesh(p), grid) for p in cases]
    fits, counts = _fit_times()
    fit_counts = ", ".join(f"{k} {fw}" for fw, k in counts.items()) or "none found"
    deepsdf_note = ""
    if shipped_model_path("cochlea", "deepsdf") and not quick:
        from fit_bench import cases as fit_cases
        from sdmnn.fitting import fit, synthetic_target

        truth = fit_cases(1)[0]
        labels, _ = synthetic_target("cochlea", truth, "labels", tau=0.05, seed=0)
        r = fit(labels, grid, observed_kind="labels", forward="deepsdf", seed=0)
        err = np.abs(np.array([r.params[k] for k in fam.names]) - truth) / (fam.space.high - fam.space.low)
        fits["DeepSDF-style"] = f"{r.seconds:.1f} s (case 0 only)"
        deepsdf_note = (f"The DeepSDF-style fit (case 0 of the study, labels) took {r.seconds:.0f} s with {r.evaluations['deepsdf']} decoder volume "
                        f"evaluations; its MAP is off the truth by {', '.join(f'{100 * e:.2f} %' for e in err)} of the ranges of "
                        f"{', '.join(fam.names)}.")
    rows, acc_rows = [], []
    for name, fn in methods.items():
        t, _ = timeit(lambda: fn(params), repeat=3 if quick else 5)
        poster = next((v for k, v in POSTER.items() if name.startswith(k) or (k == "DeepSDF" and name.startswith("DeepSDF"))), ("-", "-"))
        rows.append([name, f"{1e3 * t:.1f} ms", fits.get(name.split(" ")[0], "-"), poster[0], poster[1]])
        if not name.startswith("exact"):
            errs = [sdm_errors(fn(p), e) for p, e in zip(cases, exact)]
            acc_rows.append([name] + [f"{np.mean([e[k] for e in errs]) * s:.4f}" for k, s in
                                      (("mae", 1), ("band_mae", 1), ("max_error", 1), ("wrong_sign", 100))])
    if "hybrid" in fits:
        rows.append(["hybrid fit (SDMNN search, exact polish)", "-", fits["hybrid"], "-", "-"])
    _scaling_plot(fam, others, quick)
    return "\n".join([
        "## The poster's tables, measured here",
        "",
        "### Table 1: time for one SDM and for one shape fit",
        "",
        "One SDM of the default cochlea on the family grid (64x56x32 voxels of 0.2 mm), median of repeats after warm-up, all",
        "methods in this run, 2 threads. Shape fit: the median time of the fit study's label-map fits (`fit_bench`, read from",
        f"{RESULTS}, which the fit section writes; the pose fitted too, `pose=\"rigid\"`; fits: {fit_counts}).",
        "The poster's figures (their cochlea model, grid and machine; the fit there is MCMC) stand beside ours, labelled.",
        "",
        table(["method", "one SDM (ours)", "one shape fit (ours)", "one SDM (poster)", "one shape fit (poster)"], rows),
        "",
        deepsdf_note,
        "",
        f"### Accuracy of each fast method against the exact SDM ({n} random cochleae, seed 21; mean over cases)",
        "",
        table(["method", "mean abs error (mm)", "within 1 mm of the surface (mm)", "max abs error (mm)", "wrong sign (% voxels)"], acc_rows),
        "",
        "The DeepSDF-style decoder predicts a distance clamped to +-2 mm (as DeepSDF does), so its error away from the surface",
        "is large by construction; compare it within 1 mm of the surface.",
        "",
        f"### Scaling of the exact methods: `{SCALING}`",
        "",
        f"![scaling]({SCALING.name})",
    ])


def _fit_times() -> tuple[dict, dict]:
    """The fit study's median label-map fit time per forward model ({table key: text}) and the number of fits
    ({forward: n})."""
    if not RESULTS.exists():
        return {}, {}
    records = json.loads(RESULTS.read_text())
    out, counts = {}, {}
    for fw, key in (("exact", "exact"), ("sdmnn", "SDMNN"), ("hybrid", "hybrid")):
        secs = [r["seconds"] for r in records if r["forward"] == fw and r["target"] == LABELS]
        if secs:
            out[key], counts[fw] = f"{np.median(secs):.1f} s ({fw})", len(secs)
    return out, counts


def _scaling_plot(fam, others, quick):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fns = {"sdmnn exact": sdmnn.exact_sdm, **{k: v for k, v in others.items() if not k.startswith("point")}}
    mesh = fam.mesh(fam.defaults)
    sizes = [32, 64] if quick else [32, 48, 64, 96, 128]
    resolutions = [(100, 16), (400, 32)] if quick else [(100, 16), (200, 24), (400, 32), (800, 48), (1600, 64)]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, fn in fns.items():
        ts = [timeit(lambda: fn(mesh, cube_grid(mesh, n)), repeat=1)[0] for n in sizes]
        a1.loglog([n**3 for n in sizes], ts, "o-", label=name)
        tris, ts2 = [], []
        for res in resolutions:
            m = fam.mesh(fam.defaults, resolution=res)
            tris.append(len(m.faces))
            ts2.append(timeit(lambda: fn(m, cube_grid(m, 64)), repeat=1)[0])
        a2.loglog(tris, ts2, "o-", label=name)
    a1.set_xlabel("voxels (32^3 ... 128^3), default cochlea")
    a2.set_xlabel("triangles (cochlea mesh resolutions), 64^3 grid")
    for a in (a1, a2):
        a.set_ylabel("seconds")
        a.grid(True, which="both", alpha=0.3)
        a.legend()
    fig.savefig(SCALING, dpi=90)
    plt.close(fig)
