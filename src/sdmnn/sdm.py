"""Exact signed distance map of a closed triangle mesh on a regular grid: the public functions.

Two exact methods, giving the same numbers to float32 rounding:

* **"scan"** (``sdmnn.scan``; the default on closed, consistently oriented, manifold meshes):
  characteristic scan conversion. Every feature (face, convex edge, vertex) writes its exact distance
  into the voxels of its characteristic region; the minimum is the exact distance, and the winning
  feature gives the sign.
* **"bvh"** (``sdmnn.bvh``; any mesh): every voxel's nearest triangle from a bounding-volume hierarchy.

**Sign** (negative inside): on a watertight, consistently oriented, manifold mesh without degenerate
faces, the side of the closest feature's angle-weighted pseudonormal (Baerentzen & Aanaes 2005),
exact there as long as no two sheets of surface cross or touch and no body is nested in another with
the same orientation (``sdmnn.bodies``); where they do, the winding-number sign inside the mesh's
bounding box, with a ``MeshWarning``. A closed mesh whose faces are inconsistently oriented is oriented
first, and an inverted one flipped (each with a warning). Any other mesh gets a ``MeshWarning`` and the
sign of the generalised winding number (libigl's fast winding number; |w| >= 1/2 is inside).

**Fallback**: where the scan cannot sweep a region (``scan.regions``: a vertex cone or an edge wedge that
is not a pointed cone) the BVH method computes the distances instead, with a ``MeshWarning`` naming it.

Memory: the scan holds an int64 key per voxel, then also the float32 output (12 bytes a voxel); the
BVH method generates voxel centres on the fly; winding numbers are evaluated in chunks.
"""
from __future__ import annotations

import warnings

import numpy as np
import trimesh
import numba
from numba import njit, prange

from . import bodies, bvh, runtime, scan
from .errors import GridError, MeshError, MeshWarning, SdmnnError
from .grid import Grid, block_mean
from .io import check_mesh

WINDING_CHUNK = 1 << 18  # voxels per fast-winding-number call
METHODS = ("auto", "scan", "bvh")


def _check_grid(grid) -> None:
    """Refuse anything but a Grid (GridError), and a grid over the memory budget."""
    if not isinstance(grid, Grid):
        raise GridError(f"grid must be an sdmnn.Grid (shape, spacing, origin, direction), got {type(grid).__name__}")
    grid.check_memory()


def mesh_is_clean(mesh: trimesh.Trimesh) -> tuple[bool, str]:
    """Whether the pseudonormal sign is exact on this mesh, and if not, why (for an open or non-manifold
    mesh: how many edges and where)."""
    if not mesh.is_watertight:
        return False, _unpaired_edges(np.asarray(mesh.vertices), np.asarray(mesh.faces))
    if not mesh.is_winding_consistent:
        return False, "the mesh's faces are not consistently oriented"
    scale = max(float(np.ptp(mesh.vertices, axis=0).max()), 1e-300)
    if np.any(mesh.area_faces <= 1e-12 * scale**2):
        return False, "the mesh has degenerate (zero-area) faces"
    return True, ""


class _Topology:
    """A closed, consistently oriented, manifold mesh without degenerate faces: its pseudonormals, and
    (built when a scan first needs them) the characteristic regions of its features. ``of`` returns
    None for any other mesh."""

    def __init__(self, V, F, twin, fans):
        self.V, self.F, self.twin = V, F, twin
        self.FN, self.VNv, *self._fans = fans
        self._regions = None
        self._pseudo = None
        self.overlap = ""  # set by exact_sdm: why the pseudonormal sign does not hold ('' where it does)

    @property
    def EN(self) -> np.ndarray:
        """Edge pseudonormals per face edge (F, 3, 3), for nearest-triangle signs (built when asked)."""
        return self._pseudonormals()[0]

    @property
    def VN(self) -> np.ndarray:
        """Vertex pseudonormals per face corner (F, 3, 3), for nearest-triangle signs."""
        return self._pseudonormals()[1]

    def _pseudonormals(self):
        """(EN, VN), computed once."""
        if self._pseudo is None:
            self._pseudo = scan.pseudonormals(self.F, self.twin, self.FN, self.VNv)
        return self._pseudo

    @classmethod
    def of(cls, V: np.ndarray, F: np.ndarray) -> "_Topology | None":
        twin = scan.half_edge_twins(F, len(V))
        if twin is None:
            return None
        fans = scan.normals_and_fans(V, F, twin)
        return None if fans is None else cls(V, F, twin, fans)

    def why_not_scan(self) -> str:
        """Why the scan cannot handle this mesh ('' when it can): a vertex or an edge whose region is not a
        pointed cone (see ``scan.regions``)."""
        if self._regions is None:
            self._regions = scan.regions(self.V, self.F, self.twin, self.FN, self.VNv, *self._fans)
        v, h = self._regions.bad_vertex, self._regions.bad_edge
        if v >= 0:
            where = ", ".join(f"{x:.4g}" for x in self.V[v])
            return f"the normal cone of the vertex at ({where}) mm is not a pointed cone"
        if h >= 0:
            where = ", ".join(f"{x:.4g}" for x in self.V[self.F[h // 3]].mean(axis=0))
            return f"the faces at an edge near ({where}) mm fold onto each other"
        return ""

    def scan(self, grid: Grid, signed: bool) -> np.ndarray:
        """Exact (signed) distance on ``grid`` by characteristic scan conversion (``why_not_scan`` must be '')."""
        if self.why_not_scan():
            raise RuntimeError(f"the scan cannot handle this mesh: {self.why_not_scan()}")
        origin, spacing = np.array(grid.origin, float), np.array(grid.spacing, float)
        tol = scan.tolerance(self.V, np.asarray(grid.bounds))
        pieces = scan.build_pieces(origin, spacing, grid.shape, self._regions, tol)
        key = scan.scatter(origin, spacing, grid.shape, self._regions, pieces, tol, numba.get_num_threads())
        out = scan.distances(origin, spacing, key, self._regions, signed)
        gaps = np.isnan(out)
        if gaps.any():  # a safety net: redo any voxel no region reached with nearest-triangle queries
            T = np.ascontiguousarray(self.V[self.F])
            out[gaps] = bvh.at_points(grid.points()[gaps.ravel()], T, self.FN, self.EN, self.VN, signed)
        return out


def _choose(method: str, topo: "_Topology | None") -> str:
    """The method to run: the scan when asked or (auto) when the mesh allows it, the BVH method with a
    warning where the scan cannot sweep a region of the mesh. The scan's peak, 12 bytes a voxel (the int64
    key and the float32 output), is within grid.BYTES_PER_VOXEL, which the callers check first."""
    if method not in METHODS:
        raise SdmnnError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if method == "scan" and topo is None:
        raise MeshError("the scan method needs a closed, consistently oriented, manifold mesh without degenerate "
                        "faces; use the BVH method for this one (method 'bvh', --method bvh; or 'auto', which picks it)")
    if method == "auto":
        method = "scan" if topo is not None else "bvh"
    if method == "scan" and topo.why_not_scan():
        warnings.warn(f"{topo.why_not_scan()}; using the BVH method", MeshWarning, stacklevel=3)
        method = "bvh"
    return method


def _closed(V: np.ndarray, F: np.ndarray) -> "tuple[_Topology | None, str]":
    """The topology of a closed mesh, made consistent and outward where that is all it lacks: (topology or
    None for a mesh that is not closed and manifold, what was changed ('' for nothing)). The volume's sign is
    checked first (it means something only on a closed mesh, and flipping every face changes none of the
    other properties), so that an inverted mesh's topology is built once, flipped."""
    inverted = _signed_volume(V, F) < 0
    topo = _Topology.of(V, np.ascontiguousarray(F[:, ::-1]) if inverted else F)
    if topo is not None:
        return topo, "the mesh is inverted (inward normals); it was flipped" if inverted else ""
    if not _edges_paired(F):
        return None, ""  # open or non-manifold: no orientation makes it closed
    oriented, flipped = bodies.orient(F)
    inverted = _signed_volume(V, oriented) < 0
    topo = _Topology.of(V, np.ascontiguousarray(oriented[:, ::-1]) if inverted else oriented)
    if topo is None:
        return None, ""
    n = len(F) - flipped if inverted else flipped
    return topo, f"{n} of the mesh's {len(F)} faces were flipped to orient it consistently"


def _edge_counts(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mesh's edges (E, 2), each as its two vertices in increasing order, and how many faces each joins."""
    e = np.sort(np.stack([F, np.roll(F, -1, axis=1)], axis=2).reshape(-1, 2), axis=1)
    return np.unique(e, axis=0, return_counts=True)


def _edges_paired(F: np.ndarray) -> bool:
    """Whether every edge of the mesh joins exactly two faces, whatever their orientation."""
    return bool(np.all(_edge_counts(F)[1] == 2))


def _unpaired_edges(V: np.ndarray, F: np.ndarray) -> str:
    """What makes a mesh not watertight, in words: how many edges bound a hole (one face) or are shared by
    more than two faces, and where one of them is (mm)."""
    edges, counts = _edge_counts(F)
    parts = []
    for what, bad in (("edges on the boundary of a hole (open)", counts == 1),
                      ("edges shared by more than two faces (non-manifold)", counts > 2)):
        if bad.any():
            where = ", ".join(f"{x:.4g}" for x in V[edges[np.argmax(bad)]].mean(axis=0))
            parts.append(f"{int(bad.sum())} {what}, one at ({where}) mm")
    return "the mesh is not watertight" + (": " + "; ".join(parts) if parts else "")


def in_grid_frame(mesh: trimesh.Trimesh, grid: Grid) -> trimesh.Trimesh:
    """``mesh`` moved into ``grid``'s own frame (``grid.axis_aligned()``: origin at voxel (0, 0, 0), axes
    along the voxel axes, mm), by the rigid map world -> that frame. A flipping direction (det < 0) mirrors
    the mesh, so its faces are reversed to keep their normals outward."""
    V = (np.asarray(mesh.vertices, dtype=np.float64) - np.array(grid.origin)) @ np.array(grid.direction)
    F = np.asarray(mesh.faces)
    if np.linalg.det(np.array(grid.direction)) < 0:
        F = F[:, ::-1]
    return trimesh.Trimesh(V, np.ascontiguousarray(F), process=False)


def unsigned_distance(mesh: trimesh.Trimesh, grid: Grid, method: str = "auto") -> np.ndarray:
    """Exact distance (mm, >= 0) from every voxel centre of ``grid`` to ``mesh``, float32.
    ``method``: "scan", "bvh" or "auto" (the scan when the mesh allows it; see the module notes)."""
    check_mesh(mesh)
    _check_grid(grid)
    if not grid.is_axis_aligned:
        return unsigned_distance(in_grid_frame(mesh, grid), grid.axis_aligned(), method)
    runtime.prepare_threads()
    V = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    F = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    topo = _closed(V, F)[0]
    if _choose(method, topo) == "scan":
        return topo.scan(grid, signed=False)
    return bvh.on_grid(V, F, grid, None, signed=False)


def winding_number(mesh: trimesh.Trimesh, points: np.ndarray, closed: bool = False) -> np.ndarray:
    """Generalised winding number of ``mesh`` at ``points`` (libigl's fast winding number), chunked.
    ``closed``: the mesh is closed, so the winding number is an integer off the surface; the points where
    the fast one is not within 0.1 of an integer are redone with the exact one (libigl's winding_number)."""
    check_mesh(mesh)
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or not np.all(np.isfinite(points)):
        raise SdmnnError(f"points must be an (N, 3) array of finite coordinates, got shape {points.shape}")
    V = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    F = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    import igl

    out = np.empty(len(points))
    for s in range(0, len(points), WINDING_CHUNK):
        out[s : s + WINDING_CHUNK] = igl.fast_winding_number(V, F, np.ascontiguousarray(points[s : s + WINDING_CHUNK]))
    if closed:
        unsure = np.flatnonzero(np.abs(out - np.rint(out)) > 0.1)
        if len(unsure):
            out[unsure] = igl.winding_number(V, F, np.ascontiguousarray(points[unsure]))
    return out


#: Partial volume (``inside_fraction``): sub-voxels at most this large (mm) along each axis, and at most MAX_SUBVOXELS to
#: a voxel's side (on voxels coarser than 1.6 mm, a fraction of a voxel to 1/4096 is still finer than any use of it).
SUBVOXEL, MAX_SUBVOXELS = 0.1, 16


def subvoxels(spacing, most: int = MAX_SUBVOXELS) -> np.ndarray:
    """How many sub-voxels ``inside_fraction`` splits a voxel of ``spacing`` (mm) into along each axis (at most
    ``most``)."""
    return np.minimum(np.ceil(np.asarray(spacing, float) / SUBVOXEL - 1e-9), most).astype(int)


def inside_fraction(mesh: trimesh.Trimesh, grid: Grid, blur: float = 0.0, what: str | None = None,
                    most: int = MAX_SUBVOXELS) -> np.ndarray:
    """The share of each voxel of ``grid`` inside the closed ``mesh`` (partial volume), float32: the exact SDM's sign at
    the centres of its sub-voxels (``subvoxels``, at most ``most`` along an axis), averaged; with ``blur`` (mm), the
    sub-voxels' insides first blurred by a Gaussian of that standard deviation (a scanner's point-spread function).
    ``what``: the memory check's words for what needs the sub-voxels."""
    k = subvoxels(grid.spacing, most)
    sub = grid.split(k)
    # before the SDM's own check, which would name the sub-voxels' grid and advise a coarser spacing
    sub.check_memory(what=what or f"the partial volume of {grid.shape[0]}x{grid.shape[1]}x{grid.shape[2]} voxels from "
                                  f"{k[0]}x{k[1]}x{k[2]} sub-voxels each needs",
                     advice=f"sub-voxels of at most {SUBVOXEL:g} mm: raise SDMNN_MAX_BYTES")
    inside = (exact_sdm(mesh, sub) < 0).astype(np.float32)
    if blur > 0:
        from scipy.ndimage import gaussian_filter

        inside = gaussian_filter(inside, sigma=blur / np.array(sub.spacing), mode="nearest")
    return block_mean(inside, k)


def exact_sdm(mesh: trimesh.Trimesh, grid: Grid, sign: str = "auto", method: str = "auto") -> np.ndarray:
    """Exact signed distance map of a closed triangle mesh, sampled at the voxel centres of ``grid``.

    Parameters
    ----------
    mesh : trimesh.Trimesh
        A closed triangle mesh in mm. A closed one whose faces are inconsistently oriented, or inverted, is
        oriented first; open and non-manifold meshes get the robust (winding-number) sign; each with a
        ``MeshWarning`` saying so.
    grid : Grid
        Where to sample: any grid, oblique or flipped ones included (the mesh is moved into the grid's frame).
    sign : {"auto", "pseudonormal", "winding"}
        "auto" uses the exact pseudonormal sign on clean meshes, except where bodies cross or nest (see the
        module notes), and the winding number on any other mesh; "winding" everywhere (a single body that
        crosses itself needs it).
    method : {"auto", "scan", "bvh"}
        How distances are found (both exact, see the module notes); "auto" uses the scan on clean
        meshes and the BVH on any other. Where the scan cannot sweep a region of the mesh, the BVH method
        is used with a ``MeshWarning``.

    Returns
    -------
    numpy.ndarray
        float32 array of ``grid.shape``, millimetres, negative inside, indexed [i, j, k] = [x, y, z].
    """
    check_mesh(mesh)
    _check_grid(grid)
    if sign not in ("auto", "pseudonormal", "winding"):
        raise SdmnnError(f"sign must be 'auto', 'pseudonormal' or 'winding', got {sign!r}")
    if not grid.is_axis_aligned:  # distances are rigid invariants: compute them in the grid's own frame
        return exact_sdm(in_grid_frame(mesh, grid), grid.axis_aligned(), sign, method)
    runtime.prepare_threads()
    V = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    F = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    # closed, consistently oriented, manifold, no degenerate face: the topology checks all of it
    topo, changed = _closed(V, F)
    method = _choose(method, topo)  # before the sign's warnings: a method this mesh cannot take is an error alone
    clean, why = topo is not None, ""
    if changed:
        warnings.warn(changed, MeshWarning, stacklevel=2)
    if clean:
        F = topo.F
    else:  # the reason, in words
        why = mesh_is_clean(mesh)[1] or "the mesh has a non-manifold vertex"
    if sign == "auto":
        sign = "pseudonormal" if clean else "winding"
        if not clean:
            warnings.warn(f"{why}; using the robust winding-number sign", MeshWarning, stacklevel=2)
        else:
            topo.overlap = bodies.overlap(V, F, topo.twin)
            if topo.overlap:
                warnings.warn(f"{topo.overlap}; using the winding-number sign inside its bounding box", MeshWarning,
                              stacklevel=2)
    elif sign == "pseudonormal" and not clean:
        raise MeshError(f"the pseudonormal sign is exact only on clean meshes and {why}; use sign='winding'")
    signed = sign == "pseudonormal"
    out = topo.scan(grid, signed) if method == "scan" else bvh.on_grid(V, F, grid, (topo.FN, topo.EN, topo.VN) if signed else None, signed)
    if signed and not (topo and topo.overlap):
        return out
    return _winding_sign(np.abs(out), V, F, grid, closed=topo is not None)


def _winding_sign(distance: np.ndarray, V: np.ndarray, F: np.ndarray, grid: Grid, closed: bool) -> np.ndarray:
    """``distance`` (>= 0, float32, on an axis-aligned ``grid``) made negative where the winding number is
    at least 1/2 in magnitude. On a closed mesh it is 0 outside the mesh's bounding box, so only the voxels
    within it are evaluated, with the exact winding number where the fast one is unsure."""
    o, h, n = np.array(grid.origin), np.array(grid.spacing), np.array(grid.shape)
    lo, hi = (V.min(axis=0), V.max(axis=0)) if closed else (o, o + (n - 1) * h)
    start = np.clip(np.ceil((lo - o) / h - 1e-9), 0, n).astype(int)
    stop = np.clip(np.floor((hi - o) / h + 1e-9) + 1, 0, n).astype(int)
    if np.any(stop <= start):
        return distance
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    axes = [x[b] for x, b in zip(grid.axes(), box)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    w = winding_number(trimesh.Trimesh(V, F, process=False), points, closed).reshape(stop - start)
    distance[box] = np.where(np.abs(w) >= 0.5, -distance[box], distance[box])
    return distance


@njit(cache=True, parallel=True)
def _signed_volume(V: np.ndarray, F: np.ndarray) -> float:
    """Volume enclosed by a closed mesh, negative when its faces point inward."""
    total = 0.0
    for f in prange(F.shape[0]):
        a, b, c = V[F[f, 0]], V[F[f, 1]], V[F[f, 2]]
        total += a[0] * (b[1] * c[2] - b[2] * c[1]) + a[1] * (b[2] * c[0] - b[0] * c[2]) + a[2] * (b[0] * c[1] - b[1] * c[0])
    return total / 6.0
