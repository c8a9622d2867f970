"""A torus with an analytic SDF: the independent truth for tests and benchmarks.

Major radius R about the z axis, minor radius r, then tilted by ``tilt`` about the x axis and
shifted by ``dz`` along z. SDF: with q the point in the torus frame, |(|q_xy| - R, q_z)| - r.
"""
from __future__ import annotations

import math

import numpy as np

from ..grid import Grid
from .family import Family
from .params import Parameter, ParameterSpace


def _rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


class Torus(Family):
    def _rings(self, vector, sections, points):
        R, r, tilt, dz = vector
        u = np.linspace(0, 2 * math.pi, sections, endpoint=False)[:, None]
        v = np.linspace(0, 2 * math.pi, points, endpoint=False)[None, :]
        # The section frame (n1 radial, n2 = tangent x n1 = -z) makes v run counter-clockwise about the tangent.
        rho = R + r * np.cos(v)
        local = np.stack([rho * np.cos(u), rho * np.sin(u), -r * np.sin(v) * np.ones_like(u)], -1)
        return local @ _rotation_x(tilt).T + np.array([0.0, 0.0, dz])

    def analytic_sdf(self, params, grid: Grid) -> np.ndarray:
        """The exact SDF of the smooth torus on ``grid`` (float64, mm, negative inside)."""
        R, r, tilt, dz = self.space.vector(params)
        q = (grid.points() - np.array([0.0, 0.0, dz])) @ _rotation_x(tilt)  # rotate back: R^T applied to rows
        d = np.hypot(np.hypot(q[:, 0], q[:, 1]) - R, q[:, 2]) - r
        return d.reshape(grid.shape)


TORUS = Torus(
    name="torus",
    description="torus tilted about x and shifted along z (analytic SDF)",
    space=ParameterSpace((
        Parameter("R", "mm", 2.0, 4.0, 3.0, "major radius"),
        Parameter("r", "mm", 0.5, 1.5, 1.0, "minor (tube) radius"),
        Parameter("tilt", "rad", -math.pi / 4, math.pi / 4, 0.3, "rotation about the x axis"),
        Parameter("dz", "mm", -0.8, 0.8, 0.2, "offset along z"),
    )),
    grid=Grid((64, 64, 64), (0.2, 0.2, 0.2), (-6.3, -6.3, -6.3)),
    resolution=(256, 64),
    closed=True,
)
