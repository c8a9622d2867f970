"""``check_family``: are the family's shapes closed, outward, free of self-intersections and inside its grid?

Run by ``sdmnn families check``, and before a dataset or a training run of any family that is not built
in: a family that fails is refused with the report.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FamilyError, SdmnnError
from .family import Family, corners, short
from .registry import BUILT_IN

#: Random parameter vectors checked besides the corners of the box and the defaults.
SAMPLES = 32


@dataclass(frozen=True)
class FamilyCheck:
    """What ``check_family`` found: how many shapes it built, and each failing one with why."""

    family: str
    checked: int
    problems: tuple[tuple[dict, str], ...]
    #: why the family's grid cannot be computed ('' when it can)
    grid_problem: str = ""
    #: why the family's grid does not fit the memory budget here ('' when it does): a property of this machine, so
    #: it fails ``families check`` but not ``require_valid`` (a dataset or a run on another grid may fit)
    budget_problem: str = ""

    @property
    def usable(self) -> bool:
        """Every shape is fine and the grid can be computed."""
        return not self.problems and not self.grid_problem

    @property
    def ok(self) -> bool:
        return self.usable and not self.budget_problem

    def report(self, limit: int = 10) -> str:
        if self.ok:
            return f"the {self.family} family passed: {self.checked} shapes are closed, outward, free of self-intersections and inside its grid"
        lines = [f"the {self.family} family's grid: {why}" for why in (self.grid_problem, self.budget_problem) if why]
        if not self.problems:
            return "\n".join(lines)
        lines.append(f"{len(self.problems)} of {self.checked} shapes of the {self.family} family fail:")
        for params, problem in self.problems[:limit]:
            lines.append(f"  {short(params)}: {problem}")
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


def check_points(family: Family, samples: int = SAMPLES, seed: int = 0) -> np.ndarray:
    """The parameter vectors ``check_family`` builds: the defaults, the corners of the box, ``samples`` random."""
    space = family.space
    rng = np.random.default_rng(seed)
    unit = np.concatenate([corners(len(space), rng), rng.random((samples, len(space)))])
    return np.concatenate([[space.vector(space.defaults)], space.low + unit * (space.high - space.low)])


def check_shape(family: Family, vector: np.ndarray, in_grid: bool = True) -> str:
    """Why the shape at ``vector`` is unusable ('' when it is fine); ``in_grid``: whether to check that it lies inside
    the family's grid (False where that grid cannot be computed)."""
    from ..bodies import crossing
    from ..io import check_mesh
    from ..sdm import mesh_is_clean

    try:
        mesh = family.mesh(vector)
        check_mesh(mesh)  # empty, non-finite vertices, faces indexing missing vertices
    except SdmnnError as e:
        return str(e)
    clean, why = mesh_is_clean(mesh)
    if not clean:
        return why
    if mesh.volume <= 0:
        return f"the mesh is inverted (its normals point inward; volume {mesh.volume:.4g} mm^3)"
    if not in_grid:
        return crossing(mesh.vertices, mesh.faces)
    return leaves_grid(mesh, family.grid) or crossing(mesh.vertices, mesh.faces)


def leaves_grid(mesh, grid) -> str:
    """Why ``mesh`` (mm) does not lie within ``grid``'s voxel centres ('' when it does)."""
    lo, hi = grid.bounds
    outside = (mesh.vertices < lo) | (mesh.vertices > hi)
    if not outside.any():
        return ""
    v = mesh.vertices[np.argmax(outside.any(axis=1))]
    return (f"the shape leaves the grid (a vertex at ({v[0]:.4g}, {v[1]:.4g}, {v[2]:.4g}) mm; the grid's voxel centres "
            f"span {lo.round(3).tolist()} to {hi.round(3).tolist()} mm)")


def check_family(family, samples: int = SAMPLES, seed: int = 0, progress=None) -> FamilyCheck:
    """Build the family's shapes at the defaults, the corners of the box and ``samples`` random points, and
    report every one that is not watertight, is inverted, intersects itself or leaves the grid, and a grid that
    cannot be computed or exceeds the memory budget."""
    from .registry import get_family

    family = get_family(family)
    grid_problem = budget_problem = ""
    try:  # an automatic grid is computed from the shapes, so a failing shape may fail it too
        grid = family.grid
    except SdmnnError as e:
        grid_problem = str(e)
    else:
        try:
            grid.check_memory()
        except SdmnnError as e:
            budget_problem = str(e)
    points = check_points(family, samples, seed)
    problems = []
    for i, vector in enumerate(points):
        problem = check_shape(family, vector, in_grid=not grid_problem)
        if problem:
            problems.append((family.space.as_dict(vector), problem))
        if progress is not None:
            progress(i + 1, len(points))
    return FamilyCheck(family.name, len(points), tuple(problems), grid_problem, budget_problem)


_PASSED: set[int] = set()


def require_valid(family: Family) -> None:
    """Refuse (FamilyError, with the report) a family that is not built in and fails ``check_family`` (its grid's
    memory aside: the work that follows checks that on the grid it uses); checked once per process."""
    if family.name in BUILT_IN and family.source is None or id(family) in _PASSED:
        return
    result = check_family(family)
    if not result.usable:
        raise FamilyError(f"{family.ref} fails `sdmnn families check`: " + result.report(limit=3))
    _PASSED.add(id(family))
