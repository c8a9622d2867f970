"""The ``sdmnn`` command line: each command parses, calls one library function, reports."""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import SdmnnError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Signed distance maps (SDMs) of parametric 3-D shapes: exact, and fast with SDMNN.")
console = Console()
err = Console(stderr=True)

ParamOpt = typer.Option(None, "--param", "-p", help="A parameter as NAME=VALUE (repeat); missing ones take the family default.")


def parse_params(family, items: list[str] | None) -> dict:
    """``["a=3.5", ...]`` -> a full parameter mapping (defaults fill the gaps)."""
    params = dict(family.defaults)
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SdmnnError(f"parameters are given as NAME=VALUE, got {item!r}")
        if name.strip() not in family.names:
            raise SdmnnError(f"unknown parameter {name.strip()!r}; the {family.name} parameters are {', '.join(family.names)}")
        try:
            params[name.strip()] = float(value)
        except ValueError:
            raise SdmnnError(f"{name.strip()} must be a number, got {value!r}") from None
    family.space.vector(params)  # range and NaN checks, with the family's own message
    return params


@app.command()
def families():
    """List the shape families, their parameters, units, ranges, defaults and grids."""
    from .shapes import families as all_families

    for fam in all_families():
        g = fam.grid
        table = Table(title=f"{fam.name}: {fam.description}", title_justify="left")
        for col in ("parameter", "unit", "range", "default", "meaning"):
            table.add_column(col)
        for p in fam.space.parameters:
            table.add_row(p.name, p.unit, f"[{p.low:.4g}, {p.high:.4g}]", f"{p.default:.4g}", p.description)
        console.print(table)
        console.print(f"  grid {g.shape[0]}x{g.shape[1]}x{g.shape[2]} voxels of {g.spacing[0]:g} mm, "
                      f"origin {tuple(round(o, 3) for o in g.origin)} mm; mesh resolution {fam.resolution}\n")


@app.command()
def mesh(family: str = typer.Argument(..., help="Family name (see `sdmnn families`)."),
         param: Optional[list[str]] = ParamOpt,
         output: Path = typer.Option(..., "-o", "--output", help="Mesh file: .stl, .ply, .obj, .off or .glb."),
         resolution: Optional[str] = typer.Option(None, help="SECTIONSxPOINTS, e.g. 400x32 (default: the family's).")):
    """Write the surface mesh of one shape."""
    from .io import save_mesh
    from .shapes import get_family

    fam = get_family(family)
    params = parse_params(fam, param)
    m = fam.mesh(params, _resolution(resolution))
    save_mesh(output, m)
    console.print(f"wrote {output}: {len(m.faces)} triangles, volume {m.volume:.3f} mm^3")


def _resolution(text):
    if text is None:
        return None
    try:
        s, p = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SdmnnError(f"resolution is SECTIONSxPOINTS, e.g. 400x32, got {text!r}") from None
    if s < 3 or p < 3:
        raise SdmnnError(f"resolution must be at least 3x3, got {text}")
    return (s, p)


@app.command()
def sdm(family: Optional[str] = typer.Argument(None, help="Family name; or give --mesh instead."),
        param: Optional[list[str]] = ParamOpt,
        mesh_file: Optional[Path] = typer.Option(None, "--mesh", help="Any closed triangle mesh (STL, PLY, OBJ...)."),
        output: Path = typer.Option(..., "-o", "--output", help="Volume file: .nii.gz, .nii or .npy."),
        png: Optional[Path] = typer.Option(None, help="Also write three orthogonal slices as PNG."),
        method: str = typer.Option("exact", help="exact (mesh -> exact SDM) or nn (the SDMNN model)."),
        model: Optional[Path] = typer.Option(None, help="Model folder for --method nn (default: the shipped one)."),
        spacing: float = typer.Option(0.2, help="Voxel size in mm, for --mesh."),
        margin: float = typer.Option(2.0, help="Margin around the mesh's bounding box in mm, for --mesh.")):
    """Compute a signed distance map (mm, negative inside) on the family grid, or around any mesh."""
    from .grid import Grid
    from .io import load_mesh, save_volume
    from .sdm import exact_sdm
    from .shapes import get_family

    t0 = time.perf_counter()
    if mesh_file is not None:
        if family is not None:
            raise SdmnnError("give either a family or --mesh, not both")
        m = load_mesh(mesh_file)
        from .sdm import check_mesh

        check_mesh(m)
        grid = Grid.covering(m.bounds, spacing, margin)
        volume = exact_sdm(m, grid)
        what = f"{mesh_file.name} ({len(m.faces)} triangles)"
    else:
        if family is None:
            raise SdmnnError("give a family name (see `sdmnn families`) or --mesh FILE")
        fam = get_family(family)
        params = parse_params(fam, param)
        if method == "exact":
            grid = fam.grid
            volume = exact_sdm(fam.mesh(params), grid)
        elif method in ("nn", "deepsdf"):
            from .nn import load_model

            net = load_model(model) if model else load_model(family=fam.name, arch=method)
            if net.family.name != fam.name:
                raise SdmnnError(f"the model is for the {net.family.name} family, not {fam.name}")
            grid = net.grid
            volume = net.predict(params)
        else:
            raise SdmnnError(f"method must be exact, nn or deepsdf, got {method!r}")
        what = f"{fam.name} {params}"
    seconds = time.perf_counter() - t0
    save_volume(output, volume, grid)
    if png:
        from .viz import save_slices

        save_slices(png, volume, grid, title=what)
    console.print(f"wrote {output}: {grid.shape[0]}x{grid.shape[1]}x{grid.shape[2]} voxels of {grid.spacing[0]:g} mm, "
                  f"SDM in [{volume.min():.3f}, {volume.max():.3f}] mm, {seconds:.3f} s ({method})")


@app.command()
def show(volume: Path = typer.Argument(..., help="An SDM volume (.nii.gz, .nii, .npy)."),
         output: Path = typer.Option(..., "-o", "--output", help="PNG to write.")):
    """Write three orthogonal slices of an SDM with its zero contour as PNG."""
    from .io import load_volume
    from .viz import save_slices

    v, grid = load_volume(volume)
    save_slices(output, v.astype("float32"), grid, title=volume.name)
    console.print(f"wrote {output}")


@app.command()
def demo(output: Path = typer.Option(Path("out"), "-o", "--output", help="Folder for the results.")):
    """The default cochlea: exact SDM (and the shipped SDMNN model's, when there is one), timed, written to a folder."""
    from .demo import run_demo

    run_demo(output, console)


def main():
    """Entry point: bad input -> one sentence on stderr and exit status 2, never a traceback."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda msg, cat, *a, **k: err.print(f"[yellow]warning:[/] {msg}")
        try:
            app()
        except SdmnnError as e:
            err.print(f"[red]error:[/] {e}", highlight=False)
            sys.exit(2)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)


if __name__ == "__main__":
    main()
