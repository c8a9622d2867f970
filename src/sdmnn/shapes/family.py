"""What a parametric shape family is, how one is defined (``define_family``), the grid that covers all
its shapes, and the swept-tube mesher the built-in families share.

A family is a box of named parameters, a mesher ``mesh(params: dict) -> closed trimesh.Trimesh`` in mm,
and a grid on which its SDMs live. The built-in families (cochlea, torus) are defined with
``define_family`` like any user family.
"""
from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..checks import is_number
from ..errors import FamilyError, GridError, MeshError, ParameterError, SdmnnError
from ..grid import Grid
from .params import Parameter, ParameterSpace

if TYPE_CHECKING:  # imported when a mesh is built: listing the families needs no mesh library
    import trimesh

#: Voxels on the longest side of an automatic grid when no spacing is given (margins included).
AUTO_VOXELS = 48
#: Margin of an automatic grid around the union of the sampled shapes, in voxels.
AUTO_MARGIN = 4
#: Quasi-random samples (besides the corners and the defaults) behind an automatic grid.
AUTO_SAMPLES = 64
#: At most this many corners of the box are meshed for an automatic grid and checked by ``check_family`` (all of
#: them up to 6 parameters).
AUTO_CORNERS = 64


@dataclass(frozen=True, eq=False)
class Family:
    """A parametric shape family: parameter space, mesher, grid (given, or computed on first use).

    Make one with ``define_family``. ``mesh(params, **options)`` calls the mesher; options the mesher
    accepts (the built-in tube families take ``refine`` and ``resolution``) are passed on.
    """

    name: str
    description: str
    space: ParameterSpace
    mesher: Callable = field(repr=False)
    #: The grid given at definition; None: computed from the shapes by ``auto_grid`` when first asked.
    given_grid: Grid | None = field(default=None, repr=False)
    #: Voxel size of the computed grid (mm); None: about AUTO_VOXELS voxels on the longest side.
    spacing: float | None = None
    #: The exact SDF of the family, ``sdf(params: dict, grid) -> (nx, ny, nz) ndarray``, when one is known.
    sdf: Callable | None = field(default=None, repr=False)
    #: How another process finds this family again ("path/file.py:NAME", "package.module:NAME", an
    #: entry point's name); None for the built-in families and for families defined in the running code.
    source: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self.space.names

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        return self.space.ranges

    @property
    def defaults(self) -> dict[str, float]:
        return self.space.defaults

    @property
    def ref(self) -> str:
        """What ``get_family`` needs to find this family again: its source, or its name."""
        return self.source or self.name

    @property
    def grid(self) -> Grid:
        """The family's grid: the one given, or one covering every shape of the box (``auto_grid``)."""
        grid, error = self._grid_or_error
        if error is not None:
            raise error
        return grid

    @cached_property
    def _grid_or_error(self) -> tuple[Grid | None, Exception | None]:
        """The grid, or why it cannot be computed: computed once, a failure too (it builds dozens of meshes)."""
        if self.given_grid is not None:
            return self.given_grid, None
        try:
            return auto_grid(self, self.spacing), None
        except SdmnnError as e:
            return None, e

    @cached_property
    def mesh_options(self) -> frozenset[str] | None:
        """The keyword options the mesher accepts (``refine``, ``resolution``...); None when it takes any (``**``)."""
        try:
            parameters = list(inspect.signature(self.mesher).parameters.values())[1:]
        except (TypeError, ValueError):
            return frozenset()
        if any(p.kind == p.VAR_KEYWORD for p in parameters):
            return None
        return frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    def takes(self, option: str) -> bool:
        """Whether the mesher takes the keyword option ``option``."""
        return self.mesh_options is None or option in self.mesh_options

    def mesh(self, params, **options) -> trimesh.Trimesh:
        """The shape's surface for ``params`` (a mapping or a vector): a closed ``trimesh.Trimesh`` in mm.

        Raises ParameterError for parameters outside the box and MeshError (naming the family and the
        parameters) when the mesher raises or returns something that is not a triangle mesh.
        """
        vector = self.space.vector(params)
        unknown = sorted(o for o in options if not self.takes(o))
        if unknown:
            raise FamilyError(f"the {self.name} family's mesher takes no option {unknown[0]!r}"
                              + (f"; it takes {', '.join(sorted(self.mesh_options))}" if self.mesh_options else ""))
        values = self.space.as_dict(vector)
        try:
            result = self.mesher(values, **options)
        except (ParameterError, FamilyError, MeshError):
            raise
        except Exception as e:
            raise MeshError(f"the {self.ref} family's mesher raised {type(e).__name__}: {e} (at {short(values)})") from None
        return _as_trimesh(result, self, values)

    def analytic_sdf(self, params, grid: Grid) -> np.ndarray:
        """The exact SDF of the smooth shape on ``grid`` (mm, negative inside), for families that know it."""
        if self.sdf is None:
            raise FamilyError(f"the {self.name} family has no analytic SDF")
        return self.sdf(self.space.as_dict(self.space.vector(params)), grid)


def define_family(name: str, ranges: Mapping[str, tuple[float, float]], mesh: Callable, *, defaults=None,
                  grid: Grid | None = None, spacing: float | None = None, units=None, description: str = "",
                  descriptions=None, sdf: Callable | None = None, _built_in: bool = False) -> Family:
    """A shape family from a parameter box and a mesher, registered under ``name`` in this process.

    Parameters
    ----------
    name : str
        A short name (letters, digits, ``-``, ``_``).
    ranges : {parameter: (low, high)}
        The box of the parameters, in their units, in the order the network and the files use.
    mesh : callable
        ``mesh(params: dict) -> trimesh.Trimesh`` (or ``(V, F)`` arrays): a closed, outward-oriented
        surface in mm. Keyword options it takes (e.g. ``refine`` for a finer mesh) are passed on by
        ``Family.mesh``; phantoms ask for ``refine=4`` when the mesher takes it.
    defaults : {parameter: value}, optional
        Default values; the middle of each range otherwise.
    grid : Grid, optional
        The grid of the family's SDMs. When None, ``auto_grid`` computes one covering every shape of the
        box at ``spacing`` mm (on first use, then kept).
    units, descriptions : {parameter: str}, optional
        Unit and meaning of each parameter, for listings and the viewer.
    sdf : callable, optional
        ``sdf(params: dict, grid) -> ndarray``, the exact SDF where one is known (tests, benchmarks).
    """
    from .registry import register

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", name):
        raise FamilyError(f"a family name is letters, digits, '-' and '_', starting with a letter; got {name!r}")
    if not isinstance(ranges, Mapping) or not ranges:
        raise FamilyError(f"the {name} family needs ranges as {{parameter: (low, high)}}, got {ranges!r}")
    if not callable(mesh):
        raise FamilyError(f"the {name} family's mesh must be a function params -> trimesh.Trimesh, got {type(mesh).__name__}")
    if grid is not None and not isinstance(grid, Grid):
        raise FamilyError(f"the {name} family's grid must be an sdmnn.Grid, got {type(grid).__name__}")
    if spacing is not None and not (is_number(spacing) and math.isfinite(spacing) and spacing > 0):
        raise FamilyError(f"the {name} family's spacing must be a number > 0 (mm), got {spacing!r}")
    for option, value in (("defaults", defaults), ("units", units), ("descriptions", descriptions)):
        if value is not None and not isinstance(value, Mapping):
            raise FamilyError(f"the {name} family's {option} map parameter names to values, got {type(value).__name__}")
        extra = sorted(set(value or {}) - set(ranges))
        if extra:
            raise FamilyError(f"the {name} family's {option} name {extra[0]!r}, which is not one of its parameters ({', '.join(ranges)})")
    parameters = []
    for pname, box in ranges.items():
        if not isinstance(pname, str) or not pname.isidentifier():
            raise FamilyError(f"the {name} family's parameter names must be identifiers, got {pname!r}")
        try:
            low, high = (float(v) for v in box)
        except (TypeError, ValueError):
            raise FamilyError(f"the {name} family's range of {pname} must be (low, high), got {box!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise FamilyError(f"the {name} family's range of {pname} must be finite with low < high, got ({low:g}, {high:g})")
        default = (defaults or {}).get(pname, (low + high) / 2)
        try:
            default = float(default)
        except (TypeError, ValueError):
            raise FamilyError(f"the {name} family's default of {pname} must be a number, got {default!r}") from None
        if not low <= default <= high:
            raise FamilyError(f"the {name} family's default of {pname} must lie in [{low:g}, {high:g}], got {default:.10g}")
        parameters.append(Parameter(pname, str((units or {}).get(pname, "")), low, high, default, str((descriptions or {}).get(pname, ""))))
    family = Family(name, description, ParameterSpace(tuple(parameters)), mesh, grid, spacing, sdf)
    register(family, built_in=_built_in)
    return family


def auto_grid(family: Family, spacing: float | None = None, samples: int = AUTO_SAMPLES, seed: int = 0) -> Grid:
    """A grid covering every shape of the family's box: the union of the bounds of the meshes at the
    corners of the box (all of them up to 6 parameters, a random 64 beyond), the defaults and ``samples``
    quasi-random points, plus AUTO_MARGIN voxels. Each side is rounded up to a multiple of 8 voxels (the
    network halves it three times). ``spacing`` defaults to about AUTO_VOXELS voxels on the longest side.
    """
    from scipy.stats import qmc

    space = family.space
    unit = np.concatenate([corners(len(space), np.random.default_rng(seed)), qmc.Sobol(len(space), seed=seed).random(samples)])
    points = np.concatenate([[space.vector(space.defaults)], space.low + unit * (space.high - space.low)])
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for vector in points:
        mesh = family.mesh(vector)
        if len(mesh.faces) == 0 or not np.all(np.isfinite(mesh.vertices)):
            raise FamilyError(f"the {family.ref} family's mesher gives an empty mesh or non-finite vertices at "
                              f"{short(space.as_dict(vector))}, so no grid can be computed (`sdmnn families check` lists such shapes)")
        lo, hi = np.minimum(lo, mesh.bounds[0]), np.maximum(hi, mesh.bounds[1])
    extent = float((hi - lo).max())
    if spacing is None:
        spacing = float(f"{extent / (AUTO_VOXELS - 2 * AUTO_MARGIN):.2g}")
    if not extent > 0:
        raise GridError(f"the {family.name} family's shapes have no extent; give it a grid")
    shape = np.ceil((hi - lo) / spacing).astype(int) + 1 + 2 * AUTO_MARGIN
    shape = 8 * np.ceil(shape / 8).astype(int)
    origin = (lo + hi) / 2 - (shape - 1) * spacing / 2
    return Grid(tuple(int(n) for n in shape), (spacing,) * 3, tuple(float(f"{o:.6f}") for o in origin))


def corners(d: int, rng, limit: int = AUTO_CORNERS) -> np.ndarray:
    """Corners of the unit box in d dimensions, as 0/1 rows: all of them when there are at most ``limit``, else
    ``limit`` random ones."""
    if 2**d <= limit:
        return (np.arange(2**d)[:, None] >> np.arange(d) & 1).astype(float)
    return rng.integers(0, 2, (limit, d)).astype(float)


def short(values: dict) -> str:
    """``a=3.5, b=0.12``: parameter values for messages."""
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())


def _as_trimesh(result, family: Family, values: dict) -> trimesh.Trimesh:
    import trimesh

    if isinstance(result, trimesh.Trimesh):
        return result
    if isinstance(result, tuple) and len(result) == 2:
        V, F = (np.asarray(a) for a in result)
        if V.ndim == 2 and V.shape[1] == 3 and F.ndim == 2 and F.shape[1] == 3 and np.issubdtype(F.dtype, np.integer):
            return trimesh.Trimesh(V.astype(np.float64), F.astype(np.int64), process=False)
    raise MeshError(f"the {family.ref} family's mesher must return a trimesh.Trimesh or (V (n, 3), F (m, 3) integers), "
                    f"got {type(result).__name__} (at {short(values)})")


def tube_mesh(rings: np.ndarray, closed: bool) -> trimesh.Trimesh:
    """Triangulate cross-section rings (S, P, 3) into a watertight tube.

    Each ring must run counter-clockwise about the direction in which the rings advance, so that
    quads (s, p), (s, p+1), (s+1, p) face outward. Open tubes get fan caps on the centroid of the
    end rings; closed tubes join the last ring to the first.
    """
    S, P, _ = rings.shape
    idx = np.arange(S * P).reshape(S, P)
    nxt = np.roll(idx, -1, axis=1)  # (s, p+1)
    a, b = idx[:-1], nxt[:-1]
    c, d = idx[1:], nxt[1:]
    if closed:
        a, b = idx, nxt
        c, d = np.roll(idx, -1, axis=0), np.roll(nxt, -1, axis=0)
    side = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    vertices = rings.reshape(-1, 3)
    faces = [side]
    if not closed:
        first, last = S * P, S * P + 1
        vertices = np.concatenate([vertices, rings[0].mean(0)[None], rings[-1].mean(0)[None]])
        faces.append(np.stack([np.full(P, first), nxt[0], idx[0]], -1))
        faces.append(np.stack([np.full(P, last), idx[-1], nxt[-1]], -1))
    import trimesh

    return trimesh.Trimesh(vertices, np.concatenate(faces), process=False)


def tube_resolution(default: tuple[int, int], refine: int = 1, resolution: tuple[int, int] | None = None) -> tuple[int, int]:
    """(sections, points) of a tube mesh: ``resolution`` when given, else ``default`` times ``refine``."""
    if resolution is None:
        if not (isinstance(refine, (int, np.integer)) and refine >= 1):
            raise MeshError(f"refine must be an integer >= 1, got {refine!r}")
        return default[0] * int(refine), default[1] * int(refine)
    sections, points = (int(v) for v in resolution)
    if sections < 3 or points < 3:
        raise MeshError(f"mesh resolution must be at least (3, 3), got {(sections, points)}")
    return sections, points
