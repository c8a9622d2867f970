"""The regular, axis-aligned voxel grid every SDM lives on.

Conventions (shared by the whole package): lengths in millimetres; ``origin`` is the physical
position of the *centre* of voxel (0, 0, 0) (the ITK convention); voxel (i, j, k) lies at
``origin + (i*sx, j*sy, k*sz)``; arrays are indexed ``[i, j, k]`` = ``[x, y, z]``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .errors import GridError

#: Default limit on the memory one grid-sized computation may allocate (bytes).
#: Override with the environment variable ``SDMNN_MAX_BYTES`` or the ``budget`` argument.
DEFAULT_BUDGET = 8 * 2**30
#: Bytes per voxel that an exact SDM needs at its peak (float32 output, float64 work, ids, signs).
BYTES_PER_VOXEL = 24


def memory_budget() -> int:
    """The memory budget in bytes: ``$SDMNN_MAX_BYTES`` if set, else 8 GiB."""
    value = os.environ.get("SDMNN_MAX_BYTES")
    if value is None:
        return DEFAULT_BUDGET
    try:
        return int(float(value))
    except ValueError:
        raise GridError(f"SDMNN_MAX_BYTES must be a number of bytes, got {value!r}") from None


@dataclass(frozen=True)
class Grid:
    """A frozen regular grid: ``shape`` (nx, ny, nz), ``spacing`` (sx, sy, sz) in mm, ``origin`` in mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self):
        shape = _triple(self.shape, "shape", int)
        spacing = _triple(self.spacing, "spacing", float)
        origin = _triple(self.origin, "origin", float)
        if any(n < 1 for n in shape):
            raise GridError(f"grid shape must be three positive integers, got {shape}")
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise GridError(f"grid spacing must be three finite numbers > 0 mm, got {spacing}")
        if not all(math.isfinite(o) for o in origin):
            raise GridError(f"grid origin must be three finite numbers (mm), got {origin}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)

    @classmethod
    def covering(cls, bounds, spacing, margin: float = 0.0) -> "Grid":
        """The smallest grid of the given spacing whose voxel centres cover ``bounds`` plus ``margin`` mm.

        ``bounds`` is ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` in mm; ``spacing`` a number or a triple.
        The grid is centred on the box.
        """
        bounds = np.asarray(bounds, dtype=float)
        if bounds.shape != (2, 3) or not np.all(np.isfinite(bounds)) or np.any(bounds[1] < bounds[0]):
            raise GridError(f"bounds must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with min <= max, got {bounds.tolist()}")
        if not (math.isfinite(margin) and margin >= 0):
            raise GridError(f"margin must be a finite number >= 0 mm, got {margin}")
        spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
        if not np.all(np.isfinite(spacing) & (spacing > 0)):
            raise GridError(f"grid spacing must be finite and > 0 mm, got {spacing.tolist()}")
        lo, hi = bounds[0] - margin, bounds[1] + margin
        shape = np.floor((hi - lo) / spacing + 1e-9).astype(int) + 2
        centre = (lo + hi) / 2
        origin = centre - (shape - 1) * spacing / 2
        return cls(tuple(int(n) for n in shape), tuple(spacing.tolist()), tuple(origin.tolist()))

    @property
    def size(self) -> int:
        """Number of voxels."""
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def affine(self) -> np.ndarray:
        """The 4x4 voxel-index -> physical (mm) matrix, as NIfTI stores it."""
        a = np.diag([*self.spacing, 1.0])
        a[:3, 3] = self.origin
        return a

    @property
    def bounds(self) -> np.ndarray:
        """``[[x, y, z] of the first voxel centre, [x, y, z] of the last]`` in mm."""
        o, s, n = np.array(self.origin), np.array(self.spacing), np.array(self.shape)
        return np.stack([o, o + (n - 1) * s])

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The voxel-centre coordinates along x, y and z (mm)."""
        return tuple(o + s * np.arange(n) for o, s, n in zip(self.origin, self.spacing, self.shape))

    def points(self, dtype=np.float64) -> np.ndarray:
        """All voxel centres as an (nx*ny*nz, 3) array in C order of ``[i, j, k]``."""
        self.check_memory(bytes_per_voxel=3 * np.dtype(dtype).itemsize)
        x, y, z = (a.astype(dtype) for a in self.axes())
        return np.stack(np.meshgrid(x, y, z, indexing="ij"), axis=-1).reshape(-1, 3)

    def memory_estimate(self, bytes_per_voxel: int = BYTES_PER_VOXEL) -> int:
        """Bytes a computation over this grid needs at ``bytes_per_voxel``."""
        return self.size * bytes_per_voxel

    def check_memory(self, bytes_per_voxel: int = BYTES_PER_VOXEL, budget: int | None = None) -> None:
        """Refuse, before allocating, a grid whose computation would exceed the memory budget."""
        budget = memory_budget() if budget is None else budget
        need = self.memory_estimate(bytes_per_voxel)
        if need > budget:
            raise GridError(
                f"a grid of {self.shape[0]}x{self.shape[1]}x{self.shape[2]} voxels needs about "
                f"{need / 2**30:.2f} GiB, over the budget of {budget / 2**30:.2f} GiB "
                "(use a coarser spacing, or raise SDMNN_MAX_BYTES)"
            )

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "spacing": list(self.spacing), "origin": list(self.origin)}

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        return cls(tuple(d["shape"]), tuple(d["spacing"]), tuple(d["origin"]))

    def same_as(self, other: "Grid", tol: float = 1e-6) -> bool:
        """Equal shape, and spacing and origin equal within ``tol`` mm."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
        )


def _triple(value, name, kind):
    try:
        t = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise GridError(f"grid {name} must be three numbers, got {value!r}") from None
    if len(t) != 3:
        raise GridError(f"grid {name} must be three numbers, got {len(t)}")
    return t
