"""The ``sdmnn`` command line: each command parses, calls one library function, reports."""
from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import ImageError, SdmnnError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Signed distance maps (SDMs) of parametric 3-D shapes: exact, and fast with SDMNN.")
# no console markup: paths and messages may hold square brackets, which rich would read as styles
console = Console(markup=False)
err = Console(stderr=True, markup=False)


def _print_version(value: bool):
    if value:
        console.print(f"sdmnn {_version()}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print sdmnn's version and exit.")):
    """The options before a command (the app's help text is its own)."""


ParamOpt = typer.Option(None, "--param", "-p", help="A parameter as NAME=VALUE (repeat); missing ones take the family default.")
DeviceOpt = typer.Option("auto", metavar="[auto|cpu|cuda]", help="Where the network runs: auto (a CUDA GPU when torch sees one, else the CPU), cpu or cuda.")
PrecisionOpt = typer.Option("auto", metavar="[auto|float32|bfloat16]", help="The network's arithmetic: bfloat16 runs its "
                            "convolutions at half width (about 2x faster where the CPU has native bfloat16, which auto uses).")


def parse_params(family, items: list[str] | None) -> dict:
    """``["a=3.5", ...]`` -> a full parameter mapping (defaults fill the gaps)."""
    params, given = dict(family.defaults), set()
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SdmnnError(f"parameters are given as NAME=VALUE, got {item!r}")
        if name.strip() in given:
            raise SdmnnError(f"-p {name.strip()} is given twice")
        given.add(name.strip())
        if name.strip() not in family.names:
            raise SdmnnError(f"unknown parameter {name.strip()!r}; the {family.name} parameters are {', '.join(family.names)}")
        try:
            params[name.strip()] = float(value)
        except ValueError:
            raise SdmnnError(f"{name.strip()} must be a number, got {value!r}") from None
    family.space.vector(params)  # range and NaN checks, with the family's own message
    return params


#: Old spellings of choices, refused with the new one.
RENAMED = {"nn": "sdmnn"}
#: How the exact SDM may be computed (sdmnn.sdm.METHODS, repeated here so that --help needs no numba).
METHODS = ("auto", "scan", "bvh")


def _choice(value: str, option: str, choices) -> str:
    """``value`` if it is one of ``choices``; otherwise one sentence naming the option and the choices."""
    if value in choices:
        return value
    if value in RENAMED and RENAMED[value] in choices:
        raise SdmnnError(f"{option} {value} is called {option} {RENAMED[value]} now")
    raise SdmnnError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


FamilyArg = typer.Argument(..., help="A family: a name (see `sdmnn families`), FILE.py:NAME or package.module:NAME.")

families_app = typer.Typer(invoke_without_command=True,
                           help="List the shape families (built in, installed plug-ins), or `check` one.")
app.add_typer(families_app, name="families")


@families_app.callback()
def families(ctx: typer.Context,
             family: Optional[list[str]] = typer.Option(None, "--family", "-f", help="Also list this family (FILE.py:NAME...; repeat).")):
    """List the shape families, their parameters, units, ranges, defaults and grids."""
    if ctx.invoked_subcommand is not None:
        return
    from .shapes import families as all_families, get_family

    problems = []
    shown = all_families(problems)
    for problem in problems:
        warnings.warn(problem, stacklevel=1)
    shown += [f for f in map(get_family, family or []) if f not in shown]
    for fam in shown:
        g = fam.grid
        table = Table(title=f"{fam.name}: {fam.description}" + (f" ({fam.source})" if fam.source else ""), title_justify="left")
        for col in ("parameter", "unit", "range", "default", "meaning"):
            table.add_column(col)
        for p in fam.space.parameters:
            table.add_row(p.name, p.unit, f"[{p.low:.4g}, {p.high:.4g}]", f"{p.default:.4g}", p.description)
        console.print(table)
        console.print(f"  grid {g.shape[0]}x{g.shape[1]}x{g.shape[2]} voxels of {g.spacing[0]:g} mm, "
                      f"origin {tuple(round(o, 3) for o in g.origin)} mm\n")


@families_app.command("check")
def families_check(family: str = FamilyArg,
                   samples: int = typer.Option(32, help="Random parameter vectors, besides the defaults and the corners of the box (all of them up to 6 parameters, 64 random ones beyond)."),
                   seed: int = typer.Option(0, help="Seed of the random vectors.")):
    """Build the family's shapes at the defaults, the corners and random points of its box; report every one that is
    not watertight, is inverted, intersects itself or leaves the grid, and a grid over the memory budget (exit 1 if
    any)."""
    from .shapes import check_family, get_family

    if samples < 0:
        raise SdmnnError(f"--samples must be at least 0, got {samples}")
    fam = get_family(family)
    try:
        g = fam.grid
        console.print(f"{fam.ref}: grid {g.shape[0]}x{g.shape[1]}x{g.shape[2]} voxels of {g.spacing[0]:g} mm, origin "
                      f"{tuple(round(o, 4) for o in g.origin)} mm" + ("" if fam.given_grid else " (computed: pin it with grid=sdmnn.Grid(...))"))
    except SdmnnError:
        pass  # a grid that cannot be computed is in the check's report
    with err.status(f"checking {fam.name}") as status:
        result = check_family(fam, samples=samples, seed=seed, progress=lambda i, n: status.update(f"checking {fam.name}: shape {i}/{n}"))
    console.print(result.report(limit=50), highlight=False)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def mesh(family: str = FamilyArg,
         param: Optional[list[str]] = ParamOpt,
         output: Path = typer.Option(..., "-o", "--output", help="Mesh file: .stl, .ply, .obj, .off or .glb."),
         refine: int = typer.Option(1, help="A finer mesh: this many times the family's default resolution (families whose mesher takes `refine`).")):
    """Write the surface mesh of one shape."""
    from .io import MESH_SUFFIXES, check_output, save_mesh
    from .shapes import get_family

    fam = get_family(family)
    params = parse_params(fam, param)
    if refine < 1:
        raise SdmnnError(f"--refine must be at least 1, got {refine}")
    check_output(output, MESH_SUFFIXES)
    try:
        m = fam.mesh(params, **({"refine": refine} if refine > 1 else {}))
    except MemoryError:
        raise SdmnnError(f"--refine {refine} makes a mesh larger than this machine's memory; give a smaller --refine") from None
    save_mesh(output, m)
    console.print(f"wrote {output}: {len(m.faces)} triangles, volume {m.volume:.3f} mm^3")


@app.command()
def sdm(family: Optional[str] = typer.Argument(None, help="A family (name, FILE.py:NAME or package.module:NAME); or give --mesh instead."),
        param: Optional[list[str]] = ParamOpt,
        mesh_file: Optional[Path] = typer.Option(None, "--mesh", help="Any closed triangle mesh (STL, PLY, OBJ...)."),
        output: Path = typer.Option(..., "-o", "--output", help="Volume file: .nii.gz, .nii, .nrrd, .mha or .npy."),
        png: Optional[Path] = typer.Option(None, help="Also write three orthogonal slices to this .png file."),
        forward: str = typer.Option("exact", metavar="[exact|sdmnn|deepsdf]",
                                    help="exact (mesh -> exact SDM), sdmnn (the network) or deepsdf (the baseline network)."),
        method: str = typer.Option("auto", metavar="[auto|scan|bvh]",
                                   help="How the exact SDM is computed: scan, bvh, or auto (the scan on clean meshes)."),
        model: Optional[Path] = typer.Option(None, help="Model folder for --forward sdmnn/deepsdf (default: the shipped one)."),
        spacing: Optional[str] = typer.Option(None, help="Voxel size in mm, for --mesh: S, or SX,SY,SZ (default 0.2)."),
        margin: Optional[float] = typer.Option(None, help="Margin around the mesh's bounding box in mm, for --mesh (default 2)."),
        device: str = DeviceOpt, precision: str = PrecisionOpt):
    """Compute a signed distance map (mm, negative inside) on the family grid, or around any mesh."""
    from .grid import Grid
    from .io import IMAGE_SUFFIXES, VOLUME_SUFFIXES, check_output, load_mesh, save_volume
    from .sdm import exact_sdm
    from .shapes import get_family

    forward = _choice(forward, "--forward", ("exact", "sdmnn", "deepsdf"))
    if method in ("exact", "nn", "sdmnn", "deepsdf"):
        raise SdmnnError(f"--method chooses how the exact SDM is computed ({', '.join(METHODS)}); "
                         f"choose the model with --forward, e.g. --forward {RENAMED.get(method, method)}")
    method = _choice(method, "--method", METHODS)
    if mesh_file is not None and family is not None:
        raise SdmnnError("give either a family or --mesh, not both")
    if mesh_file is not None and param:
        raise SdmnnError("-p sets a family's parameters; a --mesh has none")
    if mesh_file is not None and forward != "exact":
        raise SdmnnError(f"--forward {forward} predicts a family's shapes; the SDM of a --mesh is always the exact one")
    if mesh_file is None and (spacing is not None or margin is not None):
        raise SdmnnError("--spacing and --margin set the grid around a --mesh; a family's SDM is on the family's grid")
    if forward == "exact" and (model is not None or precision != "auto"):
        raise SdmnnError("--model and --precision choose the network of --forward sdmnn or deepsdf, not the exact SDM")
    if forward != "exact" and method != "auto":
        raise SdmnnError(f"--method chooses how the exact SDM is computed; --forward {forward} uses the network")
    check_output(output, VOLUME_SUFFIXES)
    if png:
        check_output(png, IMAGE_SUFFIXES)
    if spacing is not None:
        spacing = _positive(spacing, "--spacing")
    if margin is not None and not (math.isfinite(margin) and margin >= 0):
        raise SdmnnError(f"--margin takes a number of mm >= 0, got {margin:g}")
    t0 = time.perf_counter()
    if mesh_file is not None:
        m = load_mesh(mesh_file)
        from .io import check_mesh

        check_mesh(m)
        grid = Grid.covering(m.bounds, 0.2 if spacing is None else spacing, 2.0 if margin is None else margin)
        volume = exact_sdm(m, grid, method=method)
        what = f"{mesh_file.name} ({len(m.faces)} triangles)"
        if not (volume < 0).any():
            from .errors import MeshWarning

            warnings.warn(f"no voxel lies inside {mesh_file.name}: it encloses no volume on this grid (an open surface, "
                          "faces in opposite pairs, or a body thinner than a voxel), so the map is a distance without "
                          "sign", MeshWarning, stacklevel=1)
    else:
        if family is None:
            raise SdmnnError("give a family name (see `sdmnn families`) or --mesh FILE")
        fam = get_family(family)
        params = parse_params(fam, param)
        if forward == "exact":
            grid = fam.grid
            shape = fam.mesh(params)
            volume = exact_sdm(shape, grid, method=method)
        else:
            from .nn.checkpoint import check_trained_for, load_model

            net = (load_model(model, device=device, precision=precision) if model else
                   load_model(family=fam, arch=forward, device=device, precision=precision))
            check_trained_for(net, fam, f"the model {model}" if model else "the shipped model")
            if net.arch != forward:
                raise SdmnnError(f"{model} holds a model of the {net.arch} architecture, not {forward} (--forward {forward})")
            grid = net.grid
            volume = net.predict(params)
        what = f"{fam.name} {params}"
    seconds = time.perf_counter() - t0
    if mesh_file is None:
        from .errors import FamilyWarning
        from .shapes.check import leaves_grid

        outside = leaves_grid(shape if forward == "exact" else fam.mesh(params), grid)
        if outside:
            warnings.warn(f"{outside}: the family's grid does not hold these parameters' shape, so the map holds only "
                          f"part of it (`sdmnn families check {family}` checks the family's whole box)", FamilyWarning,
                          stacklevel=1)
    save_volume(output, volume, grid)
    if png:
        from .viz import save_slices

        save_slices(png, volume, grid, title=what)
    console.print(f"wrote {output}: {grid.shape[0]}x{grid.shape[1]}x{grid.shape[2]} voxels of {_mm(grid.spacing)} mm, "
                  f"SDM in [{volume.min():.3f}, {volume.max():.3f}] mm, {seconds:.3f} s ({forward})")


@app.command()
def show(volume: Path = typer.Argument(..., help="An SDM volume (.nii.gz, .nii, .nrrd, .mha, .npy..., or a DICOM series' folder)."),
         output: Path = typer.Option(..., "-o", "--output", help="PNG to write (.png).")):
    """Write three orthogonal slices of an SDM with its zero contour as PNG."""
    from .io import IMAGE_SUFFIXES, check_output, load_volume
    from .viz import looks_like_sdm, save_slices

    check_output(output, IMAGE_SUFFIXES)
    v, grid = load_volume(volume)
    sdm, why = looks_like_sdm(v, grid)
    save_slices(output, v.astype("float32"), grid, title=volume.name, image_label=None if sdm else "image values")
    console.print(f"wrote {output}" + ("" if sdm else f" ({volume.name} {why}, so it is no SDM: drawn as an image)"))


@app.command()
def demo(output: Path = typer.Option(Path("out"), "-o", "--output", help="Folder for the results.")):
    """The default cochlea: exact SDM (and the shipped SDMNN model's, when there is one), timed, written to a folder."""
    from .demo import run_demo
    from .io import check_output

    check_output(output, what="folder")
    run_demo(output, console)


dataset_app = typer.Typer(no_args_is_help=True, help="Make and inspect datasets of (parameters, SDM) pairs.")
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("make")
def dataset_make(family: str = FamilyArg,
                 design: str = typer.Option(..., help="grid:K (K^d factorial), sobol:N, random:N or csv:PATH."),
                 output: Path = typer.Option(..., "-o", "--output", help="Zarr store to create (or to finish, if it exists)."),
                 seed: int = typer.Option(0, help="Seed of sobol and random designs."),
                 workers: int = typer.Option(1, help="Local worker processes (at least 1)."),
                 scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address (tcp://host:8786): run on that cluster."),
                 exclude: Optional[Path] = typer.Option(None, help="A dataset whose points this design must not repeat (held-out splits)."),
                 within: Optional[str] = typer.Option(None, metavar="NAME=LOW:HIGH,...", help="Restrict a grid, sobol or random "
                                                      "design to these sub-ranges (more samples where a model is weak); "
                                                      "other parameters keep the family's ranges.")):
    """Compute exact SDMs for a design, in parallel; rerun the same command to resume."""
    from .dataset import dataset_info, dataset_params, make_dataset
    from .io import check_output

    if workers < 1:
        raise SdmnnError(f"--workers must be at least 1, got {workers}")
    check_output(output, what="folder")
    if within is not None:
        if design.startswith("csv:"):
            raise SdmnnError("--within restricts grid, sobol and random designs; a csv design lists its points itself")
        if " within " in design:
            raise SdmnnError("give the sub-ranges once: either --within or a design's own ' within ...'")
        design = f"{design} within {within}"
    excluded = None if exclude is None else dataset_params(exclude)
    try:
        s = make_dataset(output, family, design, seed=seed, workers=workers, scheduler=scheduler, exclude=excluded)
    except KeyboardInterrupt:
        try:
            info = dataset_info(output)
            err.print(f"\ninterrupted: {info['complete']}/{info['count']} samples of {output} are written; rerun the "
                      "same command to finish")
        except SdmnnError:  # before the store was made
            err.print(f"\ninterrupted before {output} was made")
        sys.exit(130)
    info = dataset_info(output)
    console.print(f"{output}: {info['complete']}/{info['count']} samples complete; this run wrote {s.written} "
                  f"in {s.seconds:.1f} s ({s.rate:.2f} samples/s), {s.skipped} were already there")
    if s.failed:
        for i, msg in s.failed[:10]:
            err.print(f"sample {i} failed: {msg}")
        raise SdmnnError(f"{len(s.failed)} samples failed; the others are saved, rerun the command to retry")


@dataset_app.command("info")
def dataset_info_cmd(path: Path = typer.Argument(..., help="A dataset store.")):
    """Family, parameter ranges, grid, design, count, completeness and versions of a dataset."""
    from .dataset import dataset_info

    info = dataset_info(path)
    g = info["grid"]
    console.print(Text(str(path), style="bold") + f": {info['family']} family, design {info['design']} (seed {info['seed']})")
    console.print(f"  samples: {info['complete']}/{info['count']} complete" + (f", {info['missing']} missing" if info["missing"] else ""))
    console.print(f"  grid: {'x'.join(map(str, g['shape']))} voxels, spacing {g['spacing']} mm, origin {g['origin']} mm")
    for p in info["parameters"]:
        console.print(f"  {p['name']}: [{p['low']:.4g}, {p['high']:.4g}] {p['unit']} (the family's range)")
    console.print(f"  versions: {info['versions']}")


@dataset_app.command("show")
def dataset_show(path: Path = typer.Argument(..., help="A dataset store."),
                 index: int = typer.Option(0, help="Sample index."),
                 output: Path = typer.Option(..., "-o", "--output", help="PNG to write (.png).")):
    """Write three orthogonal slices of one sample as PNG."""
    from .dataset import open_dataset
    from .io import IMAGE_SUFFIXES, check_output
    from .viz import save_slices

    check_output(output, IMAGE_SUFFIXES)
    ds = open_dataset(path)
    where = (ds.index == index).nonzero()[0]
    if not len(where):
        raise SdmnnError(f"sample {index} is not in {path} (or not computed yet); it has {ds.meta['count']} samples")
    i = int(where[0])
    params = ds.family.space.as_dict(ds.params[i])
    save_slices(output, ds.sdm[i].numpy(), ds.grid, title=f"{path.name} #{index}: " + ", ".join(f"{k}={v:.3g}" for k, v in params.items()))
    console.print(f"wrote {output}")


@app.command()
def train(family: str = typer.Argument("cochlea", help="A family: a name, FILE.py:NAME or package.module:NAME."),
          data: Optional[list[Path]] = typer.Option(None, help="Static dataset store(s) (repeat)."),
          val: Optional[Path] = typer.Option(None, help="Held-out dataset for validation."),
          online: bool = typer.Option(False, help="Also train on fresh random SDMs computed in the background."),
          online_workers: int = typer.Option(1, help="Processes computing online SDMs."),
          minutes: Optional[float] = typer.Option(60.0, help="Training time budget; the learning-rate schedule follows it."),
          steps: Optional[int] = typer.Option(None, help="Or a number of steps (whichever ends first)."),
          batch: int = typer.Option(8, help="Batch size (per process under torchrun)."),
          lr: float = typer.Option(2e-3, help="Peak learning rate (AdamW: warm-up over 100 steps, or a tenth of --steps if fewer, then cosine)."),
          near_weight: float = typer.Option(4.0, help="Loss weight near the surface: 1 + w*exp(-|d|/s), s = --near-scale."),
          near_scale: float = typer.Option(0.5, help="Length (mm) over which the near-surface weight falls off."),
          sign_weight: float = typer.Option(0.0, help="Add this times the (same-weighted) mean |prediction| over voxels with "
                                            "the wrong sign: a push on the zero level set that does not fade with the error."),
          peak_weight: float = typer.Option(0.0, help="Add this times |error| - t at each voxel whose error exceeds "
                                            "t = --peak-tol (normalised like the MSE): a pull on the largest errors only."),
          peak_tol: float = typer.Option(0.05, help="Error (mm) above which --peak-weight's term counts."),
          hard: float = typer.Option(0.0, help="Share (0-1) of each batch drawn from the static sets in proportion to each "
                                     "case's loss when last seen (online hard-example sampling; the rest uniform)."),
          init: Optional[str] = typer.Option(None, help="Start from this model's weights (a model folder, or 'shipped'): "
                                             "fine-tuning, with a fresh optimiser and schedule. Narrower --channels (as many "
                                             "scales, same --hidden) start from its most useful channels."),
          arch: str = typer.Option("sdmnn", metavar="[sdmnn|deepsdf]", help="sdmnn (the network) or deepsdf (the DeepSDF-style baseline)."),
          channels: Optional[str] = typer.Option(None, help="SDMNN decoder channels per scale, coarse to half resolution, "
                                                 "comma-separated, e.g. 32,32,16 (default: the --init model's, else 32,32,24)."),
          hidden: int = typer.Option(256, help="Width of the MLP (SDMNN) or of the decoder layers (DeepSDF)."),
          points: int = typer.Option(4096, help="DeepSDF: SDF samples per shape and step."),
          seed: int = typer.Option(0),
          threads: Optional[int] = typer.Option(None, help="Torch threads (default: all cores)."),
          device: str = DeviceOpt,
          eval_every: int = typer.Option(250, help="Validate and log every N steps."),
          output: Path = typer.Option(Path("runs/cochlea"), "-o", "--output", help="Run folder: model, checkpoints, train.jsonl; rerun to resume.")):
    """Train SDMNN (resumable: a checkpoint every 5 minutes and on Ctrl-C or SIGTERM; rerun the same command); under torchrun, with DDP."""
    from .nn.train import TrainConfig, train as run

    arch = _choice(arch, "--arch", ("sdmnn", "deepsdf"))
    try:
        ch = tuple(int(c) for c in channels.split(",")) if channels is not None else None
    except ValueError:
        raise SdmnnError(f"channels is a comma-separated list of integers, got {channels!r}") from None
    cfg = TrainConfig(family=family, data=[str(p) for p in data or []], val=str(val) if val else None, online=online,
                      online_workers=online_workers, minutes=minutes, steps=steps, batch=batch, lr=lr, near_weight=near_weight,
                      near_scale=near_scale, sign_weight=sign_weight, peak_weight=peak_weight, peak_tol=peak_tol, hard=hard, init=init, arch=arch, channels=ch, hidden=hidden, points=points, seed=seed, threads=threads, device=device,
                      eval_every=eval_every, out=str(output))
    result = run(cfg, command="sdmnn " + " ".join(sys.argv[1:]))
    if result.get("complete"):
        return  # train said so: nothing trained
    console.print(f"trained {result['steps']} steps in {result['seconds'] / 60:.1f} min -> {output}/model.json" +
                  (f"; validation MAE {result['mae']:.4f} mm, within 1 mm {result['band_mae']:.4f} mm, wrong sign {100 * result['wrong_sign']:.2f} %" if "mae" in result else ""))


@app.command()
def evaluate(model: Optional[Path] = typer.Argument(None, help="Model folder (default: the shipped cochlea model)."),
             n: int = typer.Option(200, "--n", help="Number of held-out random parameter vectors."),
             seed: int = typer.Option(1, help="Seed of the held-out design."),
             json_flag: bool = typer.Option(False, "--json", help="Print the headline figures as one JSON object instead of a table: each the mean over the cases; its worst_case holds each one's largest value over the cases, each perhaps from another case."),
             output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also write the figures and every case's, under the names --json uses, as JSON."),
             device: str = DeviceOpt, precision: str = PrecisionOpt):
    """Accuracy of a trained model against the exact SDM on held-out parameters, and the time of both."""
    import json

    from .demo import speed_ratio
    from .io import check_output, write_json
    from .nn.checkpoint import load_model
    from .nn.evaluate import evaluate as run, summary

    if n < 1:
        raise SdmnnError(f"--n must be at least 1, got {n}")
    if output:
        check_output(output, (".json",))
    net = load_model(model, device=device, precision=precision)
    r = run(net, n=n, seed=seed, progress=not json_flag)
    if output:
        write_json(output, summary(r, cases=True))
    if json_flag:
        print(json.dumps(summary(r), indent=2, allow_nan=False))
        return
    table = Table(title=f"{net.family.name} model vs exact SDM on {n} held-out cases (seed {seed})", title_justify="left")
    for col in ("metric", "mean over cases", "worst case"):
        table.add_column(col)
    for key, label, scale, unit in (("mae", "mean |error| over the volume", 1, "mm"), ("band_mae", "mean |error| within 1 mm of the surface", 1, "mm"),
                                    ("max_error", "max |error|", 1, "mm"), ("wrong_sign", "voxels with the wrong sign", 100, "%"),
                                    ("wrong_sign_near", "wrong sign within one voxel of the surface", 100, "%")):
        table.add_row(label, f"{scale * r['mean'][key]:.4f} {unit}", f"{scale * r['worst'][key]:.4f} {unit}")
    console.print(table)
    console.print(f"time per SDM (median): exact {1e3 * r['exact_seconds']:.0f} ms (mesh + SDM), model {1e3 * r['model_seconds']:.1f} ms: "
                  f"the model is {speed_ratio(r['exact_seconds'], r['model_seconds'])}")


@app.command()
def fit(target: Path = typer.Argument(..., help="The image: a label map, an SDM (mm) or a CT-like image (NIfTI, NRRD, MHA, .npy, or the folder of one DICOM series), any geometry."),
        family: Optional[str] = typer.Option(None, help="Family whose parameters are fitted (a name, FILE.py:NAME or package.module:NAME; default: the --model's, else cochlea)."),
        observed: str = typer.Option("labels", metavar="[labels|sdm|intensity]",
                                     help="labels (logistic shape model), sdm (Gaussian) or intensity (two tissues, blur, noise)."),
        forward: str = typer.Option("hybrid", metavar="[hybrid|sdmnn|exact|deepsdf]",
                                    help="hybrid (network search, exact polish), sdmnn (the network), exact, or deepsdf."),
        pose: str = typer.Option("none", metavar="[none|rigid]", help="rigid: fit a rotation and a shift too, at any orientation: anywhere in a label map or an SDM; in an "
                                  "intensity image within 5 mm of --centre, by default of where a coarse search of the "
                                  "whole image puts the shape (near the model's orientation first, then all where that "
                                  "fit's R^2 is below 0.6 and its residuals more than the image's noise, or 2 of its "
                                  "parameters lie at their range's ends). "
                                  "none: the model's frame is the world's."),
        turns: str = typer.Option("auto", metavar="[auto|near|all]",
                                  help="With --observed intensity --pose rigid: the rotations searched: near the model's "
                                       "orientation (within about 30 degrees), all (360 spread over every orientation; "
                                       "slower), or auto: near, then all where that fit's R^2 is below 0.6 and its residuals are "
                                       "more than the image's noise, or 2 of its parameters lie at their range's ends "
                                       "(the better fit is kept)."),
        label: Optional[int] = typer.Option(None, help="The shape's value in a multi-label map (needed where the map holds more than one non-zero value)."),
        centre: Optional[str] = typer.Option(None, help="X,Y,Z: where the shape is about, world mm (LPS); default: the labels' centre (an SDM's inside's); "
                                                  "in an intensity image, where a coarse search of it puts the shape."),
        mask: Optional[Path] = typer.Option(None, help="A volume on the image's grid, non-zero where voxels may be used."),
        radius: Optional[float] = typer.Option(None, help="With --centre: fit only the voxels within this many mm of it (a ball mask; "
                                                     "with --mask, both): keeps the other tissues of a whole head out (e.g. 7)."),
        window: str = typer.Option("auto", help="LOW,HIGH: for an intensity image, a third tissue near the shape, such as air beside the bone of a CT "
                                                "(e.g. --window -400,3000 in HU): the voxels outside these intensities (smoothed by half a voxel) "
                                                "count as outside the shape, and they and those within 1 mm (or a voxel's largest side) of them "
                                                "along each axis are not fitted. auto: air (below -400) in an image holding it as a CT in HU does "
                                                "(some voxels near -1000), else none; none: every voxel is fitted (a shape whose own tissue is air)."),
        model: Optional[Path] = typer.Option(None, help="Model folder for sdmnn/hybrid/deepsdf (default: the shipped one)."),
        seed: int = typer.Option(0),
        tau: Optional[float] = typer.Option(None, help="Label softness or blur length in mm, > 0 (default: estimated)."),
        sigma: Optional[float] = typer.Option(None, help="SDM noise in mm, > 0 (default: estimated)."),
        band: Optional[float] = typer.Option(None, help="For SDM targets: use only voxels within this many mm of the surface (> 0)."),
        threads: Optional[int] = typer.Option(None, help="Threads for the network and the exact SDM (default: all cores)."),
        device: str = DeviceOpt,
        output: Path = typer.Option(Path("fit"), "-o", "--output", help="Folder for result.json, mesh.stl, sdm and labels volumes (in the image's format: sdm.nrrd for an .nrrd image; NIfTI for .npy and a DICOM series), and for a label map or an intensity image overlay.png...")):
    """Posterior over a family's parameters (and pose) given an image; prints MAP, mean, std and 90 % intervals."""
    import numpy as np

    from .fitting import FORWARD_MODELS, OBSERVED_KINDS, POSES, TURNS, fit as run_fit
    from .io import check_output, load_volume, volume_format_of

    observed = _choice(observed, "--observed", OBSERVED_KINDS)
    forward = _choice(forward, "--forward", FORWARD_MODELS)
    if forward == "exact" and model is not None:
        raise SdmnnError("--model chooses the network of --forward hybrid, sdmnn or deepsdf; --forward exact runs none")
    pose = _choice(pose, "--pose", POSES)
    turns = _choice(turns, "--turns", TURNS)
    check_output(output, what="folder")
    where = _numbers(centre, "--centre", 3) if centre is not None else None
    if threads is not None:
        if threads < 1:
            raise SdmnnError(f"--threads must be at least 1, got {threads}")
        import torch

        from .runtime import set_threads

        torch.set_num_threads(threads)
        set_threads(threads)
    volume, grid = load_volume(target)
    mask_volume = None
    if mask is not None:
        mask_volume, mask_grid = load_volume(mask)
        if mask_grid != grid:
            raise SdmnnError(f"the mask {mask} is not on the image's grid (shape {grid.shape})")
    net = None
    if model is not None:
        from .nn.checkpoint import load_model

        net = load_model(model, device=device)
    if family is None:
        family = net.family.ref if net is not None else "cochlea"
    window = {"auto": "auto", "none": None}.get(window.strip().lower(), window)
    if window not in ("auto", None):
        try:
            window = _numbers(window, "--window", 2)
        except SdmnnError:
            raise SdmnnError(f"--window takes LOW,HIGH (two numbers), auto or none, got {window!r}") from None
    shown = net.family.name if net is not None and family == net.family.ref else family
    with err.status(f"fitting the {shown} family to {target.name}") as status:
        try:
            r = run_fit(volume, grid, family=family, observed_kind=observed, forward=forward, pose=pose, seed=seed,
                        model=net, tau=tau, sigma=sigma, band=band, label=label, mask=mask_volume, centre=where,
                        threads=threads, device=device, turns=turns, window=window, radius=radius,
                        progress=lambda text: status.update(f"fitting {target.name}: {text}"))
        except ImageError as e:  # what is wrong with the image itself, named
            raise ImageError(f"{target}: {e}") from None
    table = Table(title=f"{r.family} fit ({forward} forward model, {observed} target, pose {pose})", title_justify="left")
    for col in ("parameter", "MAP", "mean", "std", "90 % interval"):
        table.add_column(col)
    for name, (lo, hi) in r.interval(0.9).items():
        table.add_row(name, f"{r.params.get(name, 0.0):.5g}", f"{r.mean[name]:.5g}", f"{r.std[name]:.3g}", f"[{lo:.5g}, {hi:.5g}]")
    console.print(table)
    quality = ", ".join(f"{k} {v:.4g}" for k, v in r.quality.items() if isinstance(v, float))
    console.print(f"{r.seconds:.1f} s; forward evaluations: " + ", ".join(f"{k} {v}" for k, v in r.evaluations.items() if v)
                  + f"; quality: {quality}")
    if r.window and r.window["left_out_voxels"]:
        low, high = r.window["low"], r.window["high"]
        what = (f"air (below {low:g}, as in HU) and those within 1 mm of it (--window none keeps them)" if r.window["auto"]
                else f"those outside {low:g}..{high:g} and within 1 mm of them" if high is not None
                else f"those below {low:g} and within 1 mm of them")
        console.print(f"left out {r.window['left_out_voxels']} voxels of the part of the image fitted: {what}")
    if pose == "rigid":
        console.print("rx, ry, rz (rad, about the world axes) and tx, ty, tz (mm): the pose's posterior about the fitted "
                      "pose below, where they are 0")
        console.print("pose (model -> world, mm):\n" + np.array2string(r.pose, precision=4, suppress_small=True))
    with err.status(f"writing {output}/ (the fitted surface's SDM on the image's {'x'.join(map(str, grid.shape))} voxels)"):
        written = r.save(output, image=volume if observed != "sdm" else None, target=str(target), volume_format=volume_format_of(target))
    console.print(f"wrote {output}/: {', '.join(written)}")


@app.command()
def phantom(family: str = FamilyArg,
            param: Optional[list[str]] = ParamOpt,
            rotate: str = typer.Option("0,0,0", help="RX,RY,RZ: rotation vector in degrees, about the shape's centre."),
            translate: str = typer.Option("0,0,0", help="TX,TY,TZ: shift in mm (the image stays centred on the unshifted shape)."),
            spacing: str = typer.Option("0.3,0.3,0.3", help="SX,SY,SZ: voxel size in mm (one number for cubic voxels)."),
            kind: str = typer.Option("labels", metavar="[labels|ct]", help="labels (partial-volume label map) or ct (two tissues, blur, noise)."),
            noise: Optional[float] = typer.Option(None, help="ct: Gaussian noise, intensity units (tissues: inside 0, outside 1000; default 100)."),
            blur: Optional[float] = typer.Option(None, help="ct: standard deviation of the point-spread function, mm (default 0.25)."),
            seed: int = typer.Option(0, help="Seed of the noise."),
            output: Path = typer.Option(..., "-o", "--output", help="Image file (.nii.gz, .nrrd, .mha...); the truth goes to NAME.truth.json.")):
    """A test image from a 4x finer mesh, posed, with partial volume (and blur and noise for ct), plus its truth."""
    from .io import VOLUME_SUFFIXES, check_output, save_volume, volume_files, volume_stem, write_json
    from .phantom import KINDS, make_phantom
    from .shapes import get_family

    kind = _choice(kind, "--kind", KINDS)
    if kind != "ct" and (noise is not None or blur is not None):
        raise SdmnnError(f"--noise and --blur make a --kind ct image; a {kind} phantom has neither")
    check_output(output, VOLUME_SUFFIXES)
    truth_path = check_output(output.with_name(volume_stem(output) + ".truth.json"))
    fam = get_family(family)
    params = parse_params(fam, param)
    sp = _positive(spacing, "--spacing")
    for option, value in (("--noise", noise), ("--blur", blur)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise SdmnnError(f"{option} takes a number >= 0, got {value:g}")
    image, grid, truth = make_phantom(fam, params, rotate=_numbers(rotate, "--rotate", 3), translate=_numbers(translate, "--translate", 3),
                                      spacing=sp, kind=kind, seed=seed,
                                      **{k: v for k, v in (("noise", noise), ("blur", blur)) if v is not None})
    save_volume(output, image, grid)
    try:
        write_json(truth_path, truth)
    except BaseException:
        for written in volume_files(output):  # an image without its truth is no phantom
            with contextlib.suppress(OSError):
                written.unlink()
        raise
    console.print(f"wrote {output} ({grid.shape[0]}x{grid.shape[1]}x{grid.shape[2]} voxels of {_mm(sp)} mm) and {truth_path}")


@app.command()
def view(family: Optional[str] = typer.Option(None, help="A family: a name, FILE.py:NAME or package.module:NAME (default: the fit's, else the model's, else cochlea)."),
         model: Optional[Path] = typer.Option(None, help="Model folder (default: the shipped network of the family, if any)."),
         image: Optional[Path] = typer.Option(None, help="An image to show under the shape (NIfTI, NRRD, MHA or a DICOM series' folder), in its own world coordinates."),
         fit_dir: Optional[Path] = typer.Option(None, "--fit", help="A folder written by `sdmnn fit`: its shape, pose and intervals (and its image, if still there)."),
         port: int = typer.Option(8765, help="Port on 127.0.0.1 (0: any free one)."),
         no_browser: bool = typer.Option(False, "--no-browser", help="Do not open a browser.")):
    """An interactive viewer in the browser: parameter sliders, slices with the zero contour, the surface in 3-D."""
    from .view import load_scene, serve

    if not 0 <= port <= 65535:
        raise SdmnnError(f"--port takes a port number 0-65535 (0: any free one), got {port}")
    scene = load_scene(family, model=model, image=image, fit=fit_dir)
    serve(scene, port=port, open_browser=not no_browser,
          on_start=lambda url: console.print(f"sdmnn view: {url} (Ctrl+C stops it)", highlight=False))


def _positive(text: str, option: str) -> tuple:
    """Voxel sizes "S" or "SX,SY,SZ" (mm) -> three numbers > 0, else one sentence naming ``option``."""
    values = _numbers(text, option, 3, allow_one=True)
    if not all(v > 0 for v in values):
        raise SdmnnError(f"{option} takes sizes in mm > 0, got {text}")
    return values


def _mm(spacing) -> str:
    """A voxel size for a message: "0.3" for cubic voxels, "0.3x0.3x1" otherwise."""
    return f"{spacing[0]:g}" if len(set(spacing)) == 1 else "x".join(f"{v:g}" for v in spacing)


def _numbers(text: str, option: str, count: int, allow_one: bool = False) -> tuple:
    """"1,2,3" -> (1.0, 2.0, 3.0), checked: ``count`` finite numbers (or one, repeated, when ``allow_one``)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if allow_one and len(values) == 1:
        values = values * count
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise SdmnnError(f"{option} takes {count} comma-separated numbers" + (" (or one)" if allow_one else "") + f", got {text!r}")
    return values


def main():
    """Entry point: bad input -> one sentence on stderr and exit status 2; a defect in sdmnn (any other
    exception) -> one sentence asking to report it and exit status 3; never a traceback."""
    from .runtime import keep_freed_memory

    keep_freed_memory()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda msg, cat, *a, **k: err.print(Text("warning:", style="yellow") + f" {msg}")
        try:
            app()
        except SdmnnError as e:
            err.print(Text("error:", style="red") + f" {e}", highlight=False)
            sys.exit(2)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
        except Exception as e:  # a defect, not the input: say so in one sentence instead of a traceback
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            err.print(Text("internal error:", style="red") + f" {type(e).__name__}{': ' + first if first else ''}; this is a "
                      f"defect in sdmnn {_version()}, please report it with the command that caused it", highlight=False)
            sys.exit(3)


def _version() -> str:
    from . import __version__

    return __version__


if __name__ == "__main__":
    main()
