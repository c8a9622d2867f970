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
from .family import define_family, tube_mesh, tube_resolution

TURNS = 2.5
#: Sections along the tube and points around a section of the default mesh.
RESOLUTION = (400, 32)


def cochlea_mesh(params: dict, refine: int = 1, resolution: tuple[int, int] | None = None):
    """The cochlea's surface: RESOLUTION times ``refine`` (or ``resolution``) sections x points."""
    sections, points = tube_resolution(RESOLUTION, refine, resolution)
    return tube_mesh(cochlea_rings(params["a"], params["alpha"], params["b"], params["phi"], sections, points), closed=False)


def cochlea_rings(a, alpha, b, phi, sections, points) -> np.ndarray:
    """Cross-section rings (S, P, 3), counter-clockwise about the tangent."""
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
    return centre[:, None, :] + u + v


COCHLEA = define_family(
    "cochlea",
    ranges={"a": (2.0, 5.0), "alpha": (0.0, 1.2), "b": (0.05, 0.25), "phi": (-math.pi / 4, math.pi / 4)},
    mesh=cochlea_mesh,
    defaults={"a": 3.5, "alpha": 0.6, "b": 0.12, "phi": 0.2},
    units={"a": "mm", "alpha": "mm", "b": "1/rad", "phi": "rad"},
    descriptions={"a": "basal radius of the centreline spiral", "alpha": "rise of the centreline per turn",
                  "b": "exponential decay of the spiral radius per radian", "phi": "tilt of the cross-section about the tangent"},
    description="cochlea-like spiral tube (2.5 turns, tapering elliptic section)",
    # Pinned, since the shipped models were trained on it: 64 x 56 x 32 voxels of 0.2 mm centred on the union
    # of all shapes of the box (x in [-4.7, 5.9], y in [-4.4, 5.1], z in [-0.9, 3.3] mm), >= 4 voxels of margin.
    grid=Grid((64, 56, 32), (0.2, 0.2, 0.2), (-5.7, -5.15, -1.9)),
    _built_in=True,
)
