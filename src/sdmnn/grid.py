"""The regular voxel grid every SDM and image lives on.

Conventions (shared by the whole package, those of ITK): lengths in millimetres; ``origin`` is the
physical position of the *centre* of voxel (0, 0, 0); ``direction`` is a 3x3 orthonormal matrix whose
columns are the directions of the i, j and k axes; voxel (i, j, k) lies at
``origin + direction @ (i*sx, j*sy, k*sz)``; arrays are indexed ``[i, j, k]``. World coordinates are
LPS (x to the patient's left, y to posterior, z to superior), as in ITK, DICOM and 3D Slicer's model
files; NIfTI stores RAS, converted by ``sdmnn.io``. The model grids of the families are axis-aligned
(identity direction), so there ``[i, j, k]`` = ``[x, y, z]``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .checks import is_integer, is_number
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


#: Two grids whose spacings and origins agree to this many mm are equal: a float32 affine (NIfTI) keeps
#: about 7 digits, so a grid read back from a file equals the one written.
TOLERANCE = 1e-5


@dataclass(frozen=True, eq=False)
class Grid:
    """A frozen regular grid: ``shape`` (nx, ny, nz), ``spacing`` (sx, sy, sz) in mm, ``origin`` in mm.

    ``direction`` (3x3, orthonormal, columns = the voxel axes in world coordinates) defaults to the
    identity. ``==`` compares shapes exactly, spacings and origins to ``TOLERANCE`` mm and directions
    to ``TOLERANCE``.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def __post_init__(self):
        shape = _triple(self.shape, "shape", int)
        spacing = _triple(self.spacing, "spacing", float)
        origin = _triple(self.origin, "origin", float)
        direction = _direction(self.direction)
        if any(n < 1 for n in shape):
            raise GridError(f"grid shape must be three positive integers, got {shape}")
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise GridError(f"grid spacing must be three finite numbers > 0 mm, got {spacing}")
        if not all(math.isfinite(o) for o in origin):
            raise GridError(f"grid origin must be three finite numbers (mm), got {origin}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

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
    def is_axis_aligned(self) -> bool:
        """Whether the voxel axes are the world axes (identity direction)."""
        return self.direction == IDENTITY

    @property
    def affine(self) -> np.ndarray:
        """The 4x4 voxel index -> world (mm, LPS) matrix: ``[[direction @ diag(spacing), origin], [0, 1]]``."""
        a = np.eye(4)
        a[:3, :3] = np.array(self.direction) * np.array(self.spacing)
        a[:3, 3] = self.origin
        return a

    @property
    def bounds(self) -> np.ndarray:
        """``[[xmin, ymin, zmin], [xmax, ymax, zmax]]``: the world box of the voxel centres, in mm (for an
        axis-aligned grid, the first and the last voxel centre)."""
        n = np.array(self.shape) - 1
        corners = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])], float)
        world = self.to_world(corners)
        return np.stack([world.min(0), world.max(0)])

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The voxel-centre coordinates along x, y and z (mm) of an axis-aligned grid."""
        if not self.is_axis_aligned:
            raise GridError("an oblique or flipped grid has no per-axis coordinates; use points() or to_world()")
        return tuple(o + s * np.arange(n) for o, s, n in zip(self.origin, self.spacing, self.shape))

    def points(self, dtype=np.float64) -> np.ndarray:
        """All voxel centres in world mm as an (nx*ny*nz, 3) array in C order of ``[i, j, k]``."""
        self.check_memory(bytes_per_voxel=3 * np.dtype(dtype).itemsize)
        if self.is_axis_aligned:
            x, y, z = (a.astype(dtype) for a in self.axes())
            return np.stack(np.meshgrid(x, y, z, indexing="ij"), axis=-1).reshape(-1, 3)
        i, j, k = np.meshgrid(*(np.arange(n) for n in self.shape), indexing="ij")
        return self.to_world(np.stack([i, j, k], axis=-1).reshape(-1, 3)).astype(dtype)

    def split(self, k) -> "Grid":
        """The grid of this one's voxels each split into k[0] x k[1] x k[2] sub-voxels (the same extent), in C order
        within each voxel as ``block_mean`` reads them."""
        k = np.asarray(k, int)
        return Grid(tuple(int(n) for n in np.array(self.shape) * k), tuple(np.array(self.spacing) / k),
                    tuple(self.to_world(-(k - 1) / (2 * k)).tolist()), self.direction)

    def to_world(self, index: np.ndarray) -> np.ndarray:
        """(..., 3) continuous voxel indices -> (..., 3) world positions in mm."""
        index = np.asarray(index, dtype=float)
        return index @ self.affine[:3, :3].T + np.array(self.origin)

    def to_index(self, world: np.ndarray) -> np.ndarray:
        """(..., 3) world positions in mm -> (..., 3) continuous voxel indices."""
        world = np.asarray(world, dtype=float) - np.array(self.origin)
        return (world @ np.array(self.direction)) / np.array(self.spacing)

    def axis_aligned(self) -> "Grid":
        """The same voxels in the grid's own frame: identity direction, origin 0 (mm along each voxel axis)."""
        return Grid(self.shape, self.spacing, (0.0, 0.0, 0.0))

    def memory_estimate(self, bytes_per_voxel: int = BYTES_PER_VOXEL) -> int:
        """Bytes a computation over this grid needs at ``bytes_per_voxel``."""
        return self.size * bytes_per_voxel

    def check_memory(self, bytes_per_voxel: int = BYTES_PER_VOXEL, budget: int | None = None, what: str | None = None,
                     advice: str = "use a coarser spacing, or raise SDMNN_MAX_BYTES") -> None:
        """Refuse, before allocating, a grid whose computation would exceed the memory budget; ``what`` (ending in
        its verb) and ``advice`` say what needs the memory and what to do, where a caller knows better than the grid."""
        budget = memory_budget() if budget is None else budget
        need = self.memory_estimate(bytes_per_voxel)
        if need > budget:
            what = what or f"a grid of {self.shape[0]}x{self.shape[1]}x{self.shape[2]} voxels needs"
            raise GridError(f"{what} about {_size(need)}, over the budget of {_size(budget)} ({advice})")

    def to_dict(self) -> dict:
        d = {"shape": list(self.shape), "spacing": list(self.spacing), "origin": list(self.origin)}
        if not self.is_axis_aligned:
            d["direction"] = [list(row) for row in self.direction]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        try:
            return cls(tuple(d["shape"]), tuple(d["spacing"]), tuple(d["origin"]), d.get("direction", IDENTITY))
        except (KeyError, TypeError):
            raise GridError(f"a grid is stored as {{shape, spacing, origin[, direction]}}, got {d!r:.200}") from None

    def __eq__(self, other) -> bool:
        if not isinstance(other, Grid):
            return NotImplemented
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, rtol=0, atol=TOLERANCE)
            and np.allclose(self.origin, other.origin, rtol=0, atol=TOLERANCE)
            and np.allclose(self.direction, other.direction, rtol=0, atol=TOLERANCE)
        )

    def __hash__(self) -> int:
        return hash(self.shape)  # equal grids have equal shapes; spacing and origin only agree to a tolerance


IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def block_mean(values: np.ndarray, k) -> np.ndarray:
    """The means of ``values`` (3-D) over blocks of k[0] x k[1] x k[2] voxels (a ``Grid.split`` grid's values per
    voxel of the grid it split); voxels beyond the last whole block dropped."""
    n = np.array(values.shape) // np.asarray(k)
    return values[: n[0] * k[0], : n[1] * k[1], : n[2] * k[2]].reshape(n[0], k[0], n[1], k[1], n[2], k[2]).mean((1, 3, 5))


def _size(n: int) -> str:
    """Bytes in words: 1.50 GiB, 12.0 MiB, 300 KiB, 500 bytes."""
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.0f} KiB" if n >= 2**10 else f"{n} bytes"


def _direction(value) -> tuple:
    """A 3x3 orthonormal matrix as a tuple of rows; rows within 1e-4 of orthonormal are made exactly so
    (file formats store directions to a few digits)."""
    try:
        d = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise GridError(f"grid direction must be a 3x3 matrix, got {value!r}") from None
    if d.shape != (3, 3) or not np.all(np.isfinite(d)):
        raise GridError(f"grid direction must be a 3x3 matrix of finite numbers, got {value!r}")
    if np.abs(d.T @ d - np.eye(3)).max() > 1e-4:
        raise GridError("grid direction must be orthonormal (a rotation, possibly with flips); "
                        f"got {np.round(d, 4).tolist()}")
    if np.array_equal(d, np.eye(3)):
        return IDENTITY
    u, _, vt = np.linalg.svd(d)
    d = u @ vt  # the nearest orthonormal matrix
    d[np.abs(d) < 1e-12] = 0.0
    return tuple(tuple(float(v) for v in row) for row in d)


def _triple(value, name, kind):
    try:
        items = tuple(value)
    except TypeError:
        raise GridError(f"grid {name} must be three numbers, got {value!r}") from None
    if kind is int and not all(is_integer(v) or is_number(v) and math.isfinite(v) and v == int(v) for v in items):
        raise GridError(f"grid {name} must be three positive integers, got {value!r}")  # not 2.7 read as 2, nor True as 1
    try:
        t = tuple(kind(v) for v in items)
    except (TypeError, ValueError):
        raise GridError(f"grid {name} must be three numbers, got {value!r}") from None
    if len(t) != 3:
        raise GridError(f"grid {name} must be three numbers, got {len(t)}")
    return t


def sample_sdm(volumes, index, spacing, corrected: bool = True):
    """SDMs on a grid at any points: trilinear with the second-order correction, clamped to the grid.

    Trilinear interpolation of a function overestimates it by 1/2 sum_i t_i (1 - t_i) h_i^2 f_ii (t_i: the
    point's fraction of its cell along axis i) to leading order. An SDM is convex across a curved surface, so the
    plain interpolant moves the surface inward, the same way all over a thin tube, which a fit then takes for
    a thinner shape. Here the second differences are sampled alongside the values (one 4-channel lookup) and
    that term subtracted: the interpolant stays continuous, exact at the voxels and for quadratics, and close to
    a cubic B-spline near the surface (``bench/resample_bench.py``) for less work (torch's ``grid_sample`` has
    no cubic mode in 3-D; scipy's order-3 ``map_coordinates`` reads 64 voxels a point). Beyond the grid: the
    border value plus the distance to the border, an upper bound of the distance there.

    Parameters
    ----------
    volumes : (B, nx, ny, nz) torch tensor
        SDMs (mm) on a grid of ``spacing``, at least 3 voxels along each axis.
    index : (B, N, 3) or (1, N, 3) torch tensor
        Points in voxel coordinates (i, j, k) of that grid, one set per volume or one for all (read as channels of
        one lookup: the points' cells and weights found once); any values.
    spacing : (3,) mm
    corrected : bool
        False: plain trilinear (one channel instead of four; enough where the bias is alike in all that is compared).

    Returns
    -------
    (B, N) torch tensor of ``index``'s dtype, on its device, mm; differentiable in ``volumes`` and ``index``.
    """
    if not corrected:
        at, _, beyond = _lookup_points(volumes.shape[1:], index, spacing)
        return _read(volumes[:, None], at)[:, 0] + beyond
    return sample_channels(sdm_channels(volumes), index, spacing)


def sdm_channels(volumes):
    """(B, nx, ny, nz) SDMs -> (B, 4, nx, ny, nz): the values and h^2 f_ii along each axis (central differences;
    on the faces, the next voxel's), what ``sample_channels`` reads. Worth keeping where one volume is sampled
    many times (the viewer's slices)."""
    import torch

    second = []
    for axis in (1, 2, 3):
        n = volumes.shape[axis]
        d2 = volumes.narrow(axis, 0, n - 2) - 2 * volumes.narrow(axis, 1, n - 2) + volumes.narrow(axis, 2, n - 2)
        second.append(torch.cat([d2.narrow(axis, 0, 1), d2, d2.narrow(axis, n - 3, 1)], axis))
    return torch.stack([volumes, *second], 1)


def sample_channels(channels, index, spacing):
    """``sample_sdm`` (corrected) from ``sdm_channels(volumes)``, at ``index`` (B or 1, N, 3): (B, N) of its dtype."""
    at, t, beyond = _lookup_points(channels.shape[2:], index, spacing)
    vals = _read(channels, at)
    return vals[:, 0] - 0.5 * (t * (1 - t) * vals[:, 1:].transpose(1, 2)).sum(-1) + beyond


def sample_gradient(volumes, index, spacing):
    """The spatial gradient of SDMs (B, nx, ny, nz) on a grid of ``spacing`` at points ``index`` (B or 1, N, 3, voxel
    coordinates): (B, N, 3) along the grid's axes, mm per mm, of ``index``'s dtype. Central differences (one-sided on
    the faces) read trilinearly: continuous, whatever the spacing of the points. Beyond the grid, the border's gradient
    (not that of ``sample_sdm``'s border value plus the distance to the border)."""
    import torch

    grads = torch.gradient(volumes, spacing=[float(h) for h in spacing], dim=[1, 2, 3])
    at, _, _ = _lookup_points(volumes.shape[1:], index, spacing)
    return _read(torch.stack(grads, 1), at).transpose(1, 2)


def _read(channels, at):
    """``grid_sample`` of volumes' channels (B, C, nx, ny, nz) at ``_lookup_points``' ``at`` (B or 1 sets of points):
    (B, C, N). With one set of points for all volumes, all their channels are read in one lookup (the points' cells
    and weights found once)."""
    import torch.nn.functional as F

    B, C = channels.shape[:2]
    if at.shape[0] == 1:
        channels = channels.reshape(1, B * C, *channels.shape[2:])
    vals = F.grid_sample(channels.to(at.dtype), at, mode="bilinear", padding_mode="border", align_corners=True)
    return vals[:, :, 0, 0].reshape(B, C, -1)


def _lookup_points(shape, index, spacing):
    """Points ``index`` (B, N, 3) clamped to a grid of ``shape``: where ``grid_sample`` reads them ((B, 1, 1, N, 3)
    in [-1, 1] over the voxels, (k, j, i) last), their fractions of their cells (B, N, 3) and their distances (mm)
    to the grid (B, N); B may be 1 for points shared by all volumes."""
    import torch

    top = index.new_tensor(shape) - 1
    inside = torch.minimum(torch.maximum(index, index.new_zeros(3)), top)
    beyond = torch.linalg.vector_norm((index - inside) * torch.as_tensor(spacing, dtype=index.dtype, device=index.device), dim=-1)
    return (2 * inside / top - 1).flip(-1)[:, None, None], inside - inside.floor(), beyond
