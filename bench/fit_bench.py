"""The fit study on images the fit's own forward model did not make: phantoms from a 4x finer mesh, at random
poses, with partial volume (label maps at 0.3 mm) or partial volume, blur and noise (CT-like images at
0.25 x 0.25 x 0.5 mm), fitted with pose by each forward model. Reports the surface distance to the true (fine)
surface, parameter and pose errors, time, and the coverage of the 90 % intervals with a binomial confidence interval."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import sdmnn
from sdmnn.dataset import design_points
from sdmnn.fitting import SEARCH_SHIFT_MM, ExactVolumes, fit
from sdmnn.nn import shipped_model_path
from sdmnn.phantom import make_phantom, surface_distances, truth_mesh

from common import table

RESULTS = Path("docs/fit_study.json")
LABELS, CT = "labels, 0.3 mm", "CT, 0.25 x 0.25 x 0.5 mm"
FAR = "CT, the cochlea 10-20 mm off-centre"
KNOWN = "labels, 0.3 mm, pose known"


def cases(n):
    """n ground-truth vectors spread over the inner 80 % of the box (scrambled Sobol, seed 3)."""
    fam = sdmnn.get_family("cochlea")
    pts = design_points("sobol:64", fam, seed=3)[:n]
    centre = (fam.space.low + fam.space.high) / 2
    return centre + 0.8 * (pts - centre)


def _random_rotation(rng, max_degrees=None):
    """A rotation vector in degrees: uniform over all rotations, or of a uniform angle up to ``max_degrees``."""
    from scipy.spatial.transform import Rotation

    if max_degrees is None:
        return np.degrees(Rotation.random(random_state=rng).as_rotvec())
    axis = rng.normal(size=3)
    return axis / np.linalg.norm(axis) * rng.uniform(0, max_degrees)


def phantoms(n_labels, n_ct, only=None):
    """(case, target, truth vector, image, grid, truth) for each study case (or for the cases in ``only``: the same
    images, the others' random draws made and not rendered)."""
    rng = np.random.default_rng(11)
    truths = cases(n_labels + n_ct)
    flipped = np.diag([-1.0, -1.0, 1.0])  # a RAS-style direction, every other case
    for i, truth in enumerate(truths):
        direction = flipped if i % 2 else None
        if i < n_labels:  # any orientation, within 1 mm of the labels' centre
            target, args = LABELS, dict(rotate=_random_rotation(rng), translate=rng.uniform(-1, 1, 3), spacing=(0.3, 0.3, 0.3),
                                        direction=direction)
        else:  # within 30 degrees and 4 mm of the image's centre
            target, args = CT, dict(kind="ct", rotate=_random_rotation(rng, 30.0), translate=rng.uniform(-4, 4, 3),
                                    spacing=(0.25, 0.25, 0.5), direction=direction, noise=100.0, blur=0.25, seed=i)
        if only is None or i in only:
            yield (i, target, truth, *make_phantom("cochlea", truth, **args))


def far_phantoms(n, first):
    """(case, target, truth vector, image, grid, truth) for n CT-like images as in ``phantoms``, but with the cochlea
    shifted 10-20 mm from the image's centre, in a random direction (the image covers it, centred where it was):
    beyond the search about the centre, so that the fit must first find where it is in the whole image."""
    rng = np.random.default_rng(13)
    truths = cases(first + n)[first:]
    for i, truth in enumerate(truths):
        way = rng.normal(size=3)
        shift = way / np.linalg.norm(way) * rng.uniform(10, 20)
        yield (first + i, FAR, truth, *make_phantom("cochlea", truth, kind="ct", rotate=_random_rotation(rng, 30.0),
                                                    translate=shift, spacing=(0.25, 0.25, 0.5), noise=100.0, blur=0.25,
                                                    direction=np.diag([-1.0, -1.0, 1.0]) if i % 2 else None, seed=first + i))


def known_phantoms(n, first, only=None):
    """(case, target, truth vector, image, grid, truth) for label maps of the first n study shapes at the model's own
    pose (0.3 mm, partial volume), fitted with the pose known (``pose="none"``): no pose search or pose error, so the
    forward models' MAPs differ by their own shape bias and the optimiser's stopping alone (or for the cases in
    ``only``)."""
    for i, truth in enumerate(cases(n)):
        if only is None or first + i in only:
            yield (first + i, KNOWN, truth, *make_phantom("cochlea", truth, spacing=(0.3, 0.3, 0.3)))


def fitted_as(target) -> dict:
    """What the study tells ``fit`` of an image of ``target``: observed_kind and pose."""
    return {"observed_kind": "intensity" if target in (CT, FAR) else "labels", "pose": "none" if target == KNOWN else "rigid"}


def _off(a, b, span) -> float:
    """The largest difference between two parameter vectors, as a fraction of each parameter's range."""
    return float((np.abs(np.asarray(a) - np.asarray(b)) / span).max())


def pose_error(result, info):
    """(rotation vector (rad), shift (mm)) from the fitted pose to the true one, in the fit's coordinates: a
    rotation about the world axes through the model centre's fitted position, then a shift of that position."""
    from scipy.spatial.transform import Rotation

    M, T = result.pose, np.array(info["pose"])
    c = np.append(result.pose_centre, 1.0)
    omega = Rotation.from_matrix(T[:3, :3] @ M[:3, :3].T).as_rotvec()
    return omega, (T @ c - M @ c)[:3]


def run(quick: bool = False) -> str:
    if shipped_model_path() is None:
        return "## Shape fits\n\nNo shipped model."
    fam = sdmnn.get_family("cochlea")
    model = sdmnn.load_model()
    n_labels, n_ct = (2, 2) if quick else (15, 15)
    forwards = ["hybrid", "sdmnn"] if quick else ["hybrid", "sdmnn", "exact"]
    records = []
    n_far = 2 if quick else 6
    far, known = far_phantoms(n_far, n_labels + n_ct), known_phantoms(n_labels, n_labels + n_ct + n_far)
    for case, target, truth, image, grid, info in [*phantoms(n_labels, n_ct), *far, *known]:
        true_mesh = truth_mesh(info)
        for fw in forwards if target != FAR else ["hybrid"]:
            r = fit(image, grid, forward=fw, model=model, seed=0, **fitted_as(target))
            d = surface_distances(r.mesh(), true_mesh)
            omega, shift = pose_error(r, info)
            iv = r.interval(0.9)
            pose_truth = np.concatenate([omega, shift]) if target != KNOWN else np.zeros(0)  # in the posterior's pose coordinates
            records.append({
                "case": case, "target": target, "forward": fw, "truth": list(map(float, truth)),
                "map": [r.params[k] for k in fam.names], "interval": [list(iv[k]) for k in r.names],
                "pose_truth": pose_truth.tolist(), "mssd_mm": float(d.mean()), "p95_mm": float(np.percentile(d, 95)),
                "rotation_error_deg": float(np.degrees(np.linalg.norm(omega))), "shift_error_mm": float(np.linalg.norm(shift)),
                "seconds": r.seconds, "evaluations": r.evaluations, "quality": r.quality, "noise": r.noise,
                "grid": grid.to_dict(), "rotate_degrees": info["rotate_degrees"], "translate_mm": info["translate_mm"],
                "off_centre_mm": float(np.linalg.norm(true_mesh.vertices.mean(0) - grid.to_world((np.array(grid.shape) - 1) / 2))),
                "image_shape": list(grid.shape),
            })
            print(f"[fit] case {case} {target} {fw}: {r.seconds:.1f} s, MSSD {d.mean():.4f} mm, "
                  f"rotation {records[-1]['rotation_error_deg']:.2f} deg, shift {records[-1]['shift_error_mm']:.3f} mm", flush=True)
    RESULTS.write_text(json.dumps(records, indent=1))  # kept should the check below fail
    records += lookup_check(records, fam, model, n_labels, n_ct, n_far)
    RESULTS.write_text(json.dumps(records, indent=1))
    return summarise(records, fam)


class ExactOnGrid(ExactVolumes):
    """The exact SDM on the network's grid in the network's place in a network-only fit: the same lookup
    (``sample_sdm`` of a volume on the model grid), without the network's error; the model's other attributes
    (its accuracy for the fit's error model, its family) are the network's."""

    arch = "sdmnn"  # in the network's place

    def __init__(self, model):
        super().__init__(model.family, model.grid)
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)


def lookup_check(records, fam, model, n_labels, n_ct, n_far):
    """Where the network-only MAP is over 1 % of a range from the hybrid's, the same fit with the exact SDM on the
    network's grid in the network's place: what the lookup alone moves (records with forward "exact-on-grid")."""
    span = fam.space.high - fam.space.low
    maps = {(r["case"], r["forward"]): np.array(r["map"]) for r in records}
    off = {c for (c, fw), m in maps.items() if fw == "sdmnn" and (c, "hybrid") in maps and _off(m, maps[(c, "hybrid")], span) > 0.01}
    out = []
    known = known_phantoms(n_labels, n_labels + n_ct + n_far, only=off)
    for case, target, truth, image, grid, info in [*phantoms(n_labels, n_ct, only=off), *known]:
        r = fit(image, grid, forward="sdmnn", model=ExactOnGrid(model), seed=0, **fitted_as(target))
        out.append({"case": case, "target": target, "forward": "exact-on-grid", "truth": list(map(float, truth)),
                    "map": [r.params[k] for k in fam.names], "seconds": r.seconds})
        print(f"[fit] case {case} {target} exact-on-grid: {r.seconds:.1f} s", flush=True)
    return out


def _binomial(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return f"{k} / {n} = {100 * k / n:.0f} % (95 % CI {100 * ci.low:.0f}-{100 * ci.high:.0f} %)"


def summarise(records, fam):
    span = fam.space.high - fam.space.low
    names = list(fam.names)
    lookup = {r["case"]: r for r in records if r["forward"] == "exact-on-grid"}
    records = [r for r in records if r["forward"] != "exact-on-grid"]
    rows_surface, rows_err, rows_cov = [], [], []
    for target in (LABELS, CT, FAR, KNOWN):
        for fw in dict.fromkeys(r["forward"] for r in records if r["target"] == target):
            rs = [r for r in records if r["target"] == target and r["forward"] == fw]
            m = np.array([r["mssd_mm"] for r in rs])
            p = np.array([r["p95_mm"] for r in rs])
            secs = np.array([r["seconds"] for r in rs])
            rows_surface.append([target, fw, len(rs), f"{m.mean():.4f} / {m.max():.4f}", f"{p.mean():.4f} / {p.max():.4f}",
                                 *([f"{np.median([r['rotation_error_deg'] for r in rs]):.2f} / {max(r['rotation_error_deg'] for r in rs):.2f}",
                                    f"{np.median([r['shift_error_mm'] for r in rs]):.3f} / {max(r['shift_error_mm'] for r in rs):.3f}"]
                                   if target != KNOWN else ["-", "-"]),
                                 f"{np.median(secs):.1f} / {secs.max():.1f}"])
            err = np.array([np.abs(np.array(r["map"]) - r["truth"]) / span for r in rs])
            rows_err.append([target, fw, *[f"{100 * err[:, j].mean():.2f} / {100 * err[:, j].max():.2f}" for j in range(len(names))]])
            shape_in = np.array([[lo <= t <= hi for t, (lo, hi) in zip(r["truth"], r["interval"][:len(names)])] for r in rs])
            pose_in = np.array([[lo <= t <= hi for t, (lo, hi) in zip(r["pose_truth"], r["interval"][len(names):])] for r in rs])
            rows_cov.append([target, fw, _binomial(int(shape_in.sum()), shape_in.size),
                             _binomial(int(pose_in.sum()), pose_in.size) if pose_in.size else "-",
                             " ".join(f"{n} {int(shape_in[:, j].sum())}/{len(rs)}" for j, n in enumerate(names))])
    # the network's own bias: its MAP against the hybrid's (whose fixed point is the exact optimum) on the same image
    rows_bias = []
    pairs = {(r["case"], r["forward"]): r for r in records}  # case numbers run on across the two kinds of image
    for target in (LABELS, CT, KNOWN):
        # the exact fit against the hybrid: both end on the exact likelihood (each on a crop around its own result, from
        # its own start), so their difference is what that likelihood and the optimiser's stopping leave open, the
        # yardstick for the network's
        for fw, what in (("sdmnn", "network-only"), ("exact", "exact (reference)")):
            diff = np.array([np.abs(np.array(r["map"]) - pairs[(c, "hybrid")]["map"]) / span
                             for (c, f), r in pairs.items() if f == fw and r["target"] == target and (c, "hybrid") in pairs])
            if len(diff):
                rows_bias.append([target, what, len(diff), *[f"{100 * diff[:, j].mean():.2f} / {100 * diff[:, j].max():.2f}" for j in range(len(names))],
                                  f"{int((diff.max(1) <= 0.01).sum())} / {len(diff)}"])
        width = np.array([[(hi - lo) / 2 for lo, hi in r["interval"][:len(names)]] for r in records
                          if r["target"] == target and r["forward"] == "hybrid"]) / span
        if len(width):
            rows_bias.append([target, "half the hybrid's 90 % interval (median / max)", len(width),
                              *[f"{100 * np.median(width[:, j]):.2f} / {100 * width[:, j].max():.2f}" for j in range(len(names))], "-"])
    rows_lookup = [[case, {LABELS: "labels", CT: "CT", KNOWN: "labels, pose known"}[r["target"]], *[
        f"{100 * (pairs[(case, 'sdmnn')]['map'][j] - pairs[(case, 'hybrid')]['map'][j]) / span[j]:+.2f} / "
        f"{100 * (r['map'][j] - pairs[(case, 'hybrid')]['map'][j]) / span[j]:+.2f}" for j in range(len(names))]]
        for case, r in sorted(lookup.items())]
    lookup_off = sum(_off(r["map"], pairs[(c, "hybrid")]["map"], span) > 0.01 for c, r in lookup.items())
    every = [r for r in records]
    far = [r for r in records if r["target"] == FAR]
    known = {r["case"] for r in records if r["target"] == KNOWN}
    far_text = (f"**{FAR}**: as the CT images, but the cochlea shifted 10-20 mm in a random direction (its centre "
                f"{min(r['off_centre_mm'] for r in far):.1f}-{max(r['off_centre_mm'] for r in far):.1f} mm from the image's centre; "
                f"images of up to {max(int(np.prod(r['image_shape'])) for r in far) / 1e6:.1f} million voxels), beyond the "
                f"{SEARCH_SHIFT_MM:g} mm shift search about the image's centre: there only the coarse search of the whole "
                "image for where the shape is (which every intensity fit without a hint runs first) finds it; the "
                "hybrid alone.") if far else ""
    shape_all = sum(sum(lo <= t <= hi for t, (lo, hi) in zip(r["truth"], r["interval"][:len(names)])) for r in every)
    return "\n".join([
        "## Shape and pose fits to phantoms",
        "",
        "Images the fit's forward model did not make (`bench/fit_bench.py`, `sdmnn.phantom`): the cochlea's mesh at 4x its",
        "resolution (1600 x 128 sections), at a random pose, sampled with partial volume (sub-voxels of at most 0.1 mm).",
        f"**{LABELS}**: voxels more than half inside; any orientation (uniformly random), shifted up to 1 mm. **{CT}**:",
        "two tissues (inside 0, outside 1000) blended by the inside fraction blurred by a 0.25 mm Gaussian, noise of",
        "standard deviation 100; rotated up to 30 degrees and shifted up to 4 mm from the image's centre. Every other",
        "image has a RAS-style direction diag(-1, -1, 1). Each is fitted with `pose=\"rigid\"`, no hint, seed 0; tau, the",
        "intensities and the noise are estimated. Shapes: a scrambled Sobol set over the inner 80 % of the box. Every",
        f"image is fitted with each forward model of the run (fits: how many). Results per fit: `{RESULTS}`.",
        "",
        far_text,
        "",
        f"**{KNOWN}**: the first {len(known)} label maps' shapes at the model's own pose, fitted with `pose=\"none\"` (no pose",
        "search or pose error): the forward models' MAPs differ by their shape bias and the optimiser's stopping alone.",
        "",
        "### Surface, pose and time (mean / max over cases; rotation, shift and seconds: median / max)",
        "",
        "Surface distance: between the fitted surface and the true fine surface, 20,000 points sampled on each, both ways.",
        "",
        table(["image", "forward model", "fits", "mean surface distance (mm)", "95th percentile (mm)", "rotation error (deg)",
               "shift error (mm)", "seconds"], rows_surface),
        "",
        "### Error of the MAP shape, % of each parameter's range (mean / max over cases)",
        "",
        table(["image", "forward model", *names], rows_err),
        "",
        "The network's own share of that error: the network-only MAP against the hybrid's (whose fixed point is the exact",
        "optimum) on the same image, % of each range (mean / max over cases; issue 19's goal: within 1 % of each range).",
        "The exact fit, which maximises the exact likelihood too (on a crop around its own result, from the screen's best",
        "pick alone), shows how closely that likelihood and the optimiser's stopping pin the MAP down; beside them, the",
        "posterior's own width.",
        "",
        table(["image", "MAP against the hybrid's", "fits", *names, "fits within 1 % on every parameter"], rows_bias),
        "",
        "Where the network-only MAP is over 1 % of a range from the hybrid's: the same fit with the exact SDM on the",
        "network's grid in the network's place (`ExactOnGrid`: the same lookup, `sample_sdm` of a 0.2 mm volume, without",
        "the network's error). Network-only / exact-on-grid MAP minus the hybrid's, % of each range:",
        "",
        table(["case", "image", *names], rows_lookup) if rows_lookup else "(none)",
        "",
        (f"The exact SDM on the grid is itself over 1 % of a range from the hybrid in {lookup_off} of these {len(lookup)} "
         "fits; in those, even an error-free network on this grid, sampled this way, would not be within 1 %." if lookup else ""),
        "",
        "### Coverage of the truth by the 90 % posterior intervals",
        "",
        "Shape: the four parameters; pose: the true rotation and shift relative to the fitted pose, in the posterior's",
        "coordinates (rotation vector about the world axes, shift of the model's centre). Exact binomial 95 % intervals.",
        "",
        table(["image", "forward model", "shape intervals covering the truth", "pose intervals covering the truth",
               "per shape parameter"], rows_cov),
        "",
        f"Over every fit of the study: {_binomial(int(shape_all), len(names) * len(every))} of the shape intervals cover the truth.",
    ])
