"""A torus with an analytic SDF: the independent truth for tests and benchmarks.

Major radius R about the z axis, minor radius r, then tilted by ``tilt`` about the x axis and
shifted by ``dz`` along z. SDF: with q the point in the torus frame, |(|q_xy| - R, q_z)| - r.
"""
from __future__ import annotations

import math

import numpy as np

from ..grid import Grid
from .family import define_family, tube_mesh, tube_resolution

#: Sections around the ring and points around a section of the default mesh.
RESOLUTION = (256, 64)


def _rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def torus_mesh(params: dict, refine: int = 1, resolution: tuple[int, int] | None = None):
    """The torus's surface: RESOLUTION times ``refine`` (or ``resolution``) sections x points."""
    sections, points = tube_resolution(RESOLUTION, refine, resolution)
    R, r = params["R"], params["r"]
    u = np.linspace(0, 2 * math.pi, sections, endpoint=False)[:, None]
    v = np.linspace(0, 2 * math.pi, points, endpoint=False)[None, :]
    # The section frame (n1 radial, n2 = tangent x n1 = -z) makes v run counter-clockwise about the tangent.
    rho = R + r * np.cos(v)
    local = np.stack([rho * np.cos(u), rho * np.sin(u), -r * np.sin(v) * np.ones_like(u)], -1)
    return tube_mesh(local @ _rotation_x(params["tilt"]).T + np.array([0.0, 0.0, params["dz"]]), closed=True)


def torus_sdf(params: dict, grid: Grid) -> np.ndarray:
    """The exact SDF of the smooth torus on ``grid`` (float64, mm, negative inside)."""
    q = (grid.points() - np.array([0.0, 0.0, params["dz"]])) @ _rotation_x(params["tilt"])  # rotate back: R^T applied to rows
    d = np.hypot(np.hypot(q[:, 0], q[:, 1]) - params["R"], q[:, 2]) - params["r"]
    return d.reshape(grid.shape)


TORUS = define_family(
    "torus",
    ranges={"R": (2.0, 4.0), "r": (0.5, 1.5), "tilt": (-math.pi / 4, math.pi / 4), "dz": (-0.8, 0.8)},
    mesh=torus_mesh,
    defaults={"R": 3.0, "r": 1.0, "tilt": 0.3, "dz": 0.2},
    units={"R": "mm", "r": "mm", "tilt": "rad", "dz": "mm"},
    descriptions={"R": "major radius", "r": "minor (tube) radius", "tilt": "rotation about the x axis", "dz": "offset along z"},
    description="torus tilted about x and shifted along z (analytic SDF)",
    grid=Grid((64, 64, 64), (0.2, 0.2, 0.2), (-6.3, -6.3, -6.3)),
    sdf=torus_sdf,
    _built_in=True,
)
