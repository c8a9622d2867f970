"""What a parametric shape family is, and the swept-tube mesher the built-in families share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..grid import Grid
from .params import ParameterSpace

if TYPE_CHECKING:  # imported when a mesh is built: listing the families needs no mesh library
    import trimesh


@dataclass(frozen=True)
class Family:
    """A parametric shape family: parameter space, its own grid, and a mesher.

    Subclasses implement ``_rings(vector, resolution)`` returning the cross-section rings of a
    swept tube; ``mesh`` turns them into a watertight, outward-oriented ``trimesh.Trimesh``.
    """

    name: str
    description: str
    space: ParameterSpace
    grid: Grid
    #: Default mesh resolution (sections along the tube, points around a section).
    resolution: tuple[int, int]
    #: True when the tube closes on itself (a ring), False when it has two end caps.
    closed: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return self.space.names

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        return self.space.ranges

    @property
    def defaults(self) -> dict[str, float]:
        return self.space.defaults

    def mesh(self, params, resolution: tuple[int, int] | None = None) -> trimesh.Trimesh:
        """The shape's surface for ``params`` (a mapping or a vector): watertight, outward normals, mm."""
        vector = self.space.vector(params)
        sections, points = resolution or self.resolution
        if sections < 3 or points < 3:
            raise ValueError(f"mesh resolution must be at least (3, 3), got {(sections, points)}")
        return tube_mesh(self._rings(vector, sections, points), closed=self.closed)

    def _rings(self, vector: np.ndarray, sections: int, points: int) -> np.ndarray:
        raise NotImplementedError

    def analytic_sdf(self, params, grid: Grid) -> np.ndarray:
        raise NotImplementedError(f"the {self.name} family has no analytic SDF")

    def describe(self) -> dict:
        return {
            "family": self.name,
            "description": self.description,
            "parameters": self.space.to_dict(),
            "grid": self.grid.to_dict(),
            "mesh_resolution": list(self.resolution),
        }


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
