"""A cochlea-like spiral tube with the four parameters of the SDMNN poster (see DESIGN.md).

Centreline, t in [0, 5*pi] (2.5 turns): r(t) = a*exp(-b*t), C(t) = (r cos t, r sin t, alpha*t/(2*pi)).
Cross-section: an ellipse normal to the tangent, in the frame n1 = radial direction made orthogonal
to the tangent, n2 = tangent x n1, rotated by phi. Semi-axes taper linearly from base to apex
(u0: 1.0 -> 0.5 mm, v0: 0.75 -> 0.4 mm) and are both scaled by k(t) = min(1, 0.4*g(t)/u0(t)), where
g(t) = r(t)*(1 - exp(-2*pi*b)) is the radial gap between successive turns, so turns never overlap.
"""
from __future__ import annotations

import math

import numpy as np

from ..grid import Grid
from .family import Family
from .params import Parameter, ParameterSpace

TURNS = 2.5


class Cochlea(Family):
    def _rings(self, vector, sections, points):
        a, alpha, b, phi = vector
        t = np.linspace(0.0, 2 * math.pi * TURNS, sections)
        r = a * np.exp(-b * t)
        cos_t, sin_t = np.cos(t), np.sin(t)
        centre = np.stack([r * cos_t, r * sin_t, alpha * t / (2 * math.pi)], -1)  # (S, 3)
        tangent = np.stack([-b * r * cos_t - r * sin_t, -b * r * sin_t + r * cos_t, np.full_like(t, alpha / (2 * math.pi))], -1)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        radial = np.stack([cos_t, sin_t, np.zeros_like(t)], -1)
        n1 = radial - np.sum(radial * tangent, 1, keepdims=True) * tangent
        n1 /= np.linalg.norm(n1, axis=1, keepdims=True)
        n2 = np.cross(tangent, n1)
        e1 = math.cos(phi) * n1 + math.sin(phi) * n2  # section axes, rotated by phi about the tangent
        e2 = -math.sin(phi) * n1 + math.cos(phi) * n2
        s = t / t[-1]
        u0, v0 = 1.0 - 0.5 * s, 0.75 - 0.35 * s
        gap = r * (1 - math.exp(-2 * math.pi * b))
        k = np.minimum(1.0, 0.4 * gap / u0)
        theta = np.linspace(0, 2 * math.pi, points, endpoint=False)
        u = (k * u0)[:, None, None] * np.cos(theta)[None, :, None] * e1[:, None, :]
        v = (k * v0)[:, None, None] * np.sin(theta)[None, :, None] * e2[:, None, :]
        return centre[:, None, :] + u + v  # (S, P, 3), counter-clockwise about the tangent


COCHLEA = Cochlea(
    name="cochlea",
    description="cochlea-like spiral tube (2.5 turns, tapering elliptic section)",
    space=ParameterSpace((
        Parameter("a", "mm", 2.0, 5.0, 3.5, "basal radius of the centreline spiral"),
        Parameter("alpha", "mm", 0.0, 1.2, 0.6, "rise of the centreline per turn"),
        Parameter("b", "1/rad", 0.05, 0.25, 0.12, "exponential decay of the spiral radius per radian"),
        Parameter("phi", "rad", -math.pi / 4, math.pi / 4, 0.2, "tilt of the cross-section about the tangent"),
    )),
    # 64 x 56 x 32 voxels of 0.2 mm, centred on the union of all shapes of the box
    # (x in [-4.7, 5.9], y in [-4.4, 5.1], z in [-0.9, 3.3] mm), leaving >= 4 voxels of margin.
    grid=Grid((64, 56, 32), (0.2, 0.2, 0.2), (-5.7, -5.15, -1.9)),
    resolution=(400, 32),
)
