"""Exact signed distance map of a closed triangle mesh on a regular grid.

Two exact methods, chosen by measuring (docs/benchmarks.md):

* **"scan"** (the default on closed, consistently oriented, manifold meshes): characteristic scan
  conversion (sdmnn.csc). Every mesh feature (face, convex edge, vertex) scatters its exact distance
  into the voxels of its characteristic region, the region where it can hold the closest point; the
  minimum is the exact distance: each voxel keeps the squared distance to its nearest feature (the
  face's plane, the edge's line or the vertex, float64) and that feature, whose side gives the sign.
  It agrees with the BVH method to float32 rounding.
* **"bvh"** (any mesh): for every voxel the nearest triangle, found with a bounding-volume hierarchy.
  Voxels are visited along scanlines and each query starts from the previous voxel's nearest triangle,
  so only BVH nodes closer than that are opened. Slower far from the surface (~190 triangle tests per
  voxel there), but it needs no topology.

Both are written with numba because no maintained library offers them on both cores: libigl's AABB
tree starts every query from scratch and pysdf checks only the faces around the nearest vertex (not
exact).

* **Sign** (negative inside): on a watertight, consistently oriented, manifold mesh without degenerate
  faces, the sign of (p - c) . n where c is the closest point and n the angle-weighted pseudonormal of
  the closest feature (face, edge or vertex; Baerentzen & Aanaes 2005), which is exact there (the scan
  reads it off the winning feature: csc.regions and csc.distances). Any other
  mesh (open, non-manifold, inconsistently oriented, degenerate faces) gets a warning and the robust
  sign of the generalised winding number (libigl's fast winding number): |w| > 1/2 is inside, so a few
  missing, flipped or duplicated faces do not flip signs. An inverted closed mesh is flipped first.

Threads: numba's work-queue threads, kept one per core while they use every core (``pin_workers``).

Memory: the scan holds an int64 key per voxel (its squared distance and feature), then also the
float32 output (12 bytes a voxel); the BVH method generates voxel centres on the fly; winding numbers
are evaluated in chunks.
"""
from __future__ import annotations

import math
import os
import threading
import warnings

import numba
import numpy as np
import trimesh
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import csc
from .errors import MeshError
from .grid import Grid

# numba's OpenMP layer keeps its threads spinning after a parallel loop, which starves torch's own
# threads in the same process (measured: SDMNN inference 30 ms -> 290 ms after an exact SDM).
# Its work-queue layer does not spin and ran the SDM kernel as fast. A user's own choice wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

LEAF_SIZE = 4
WINDING_CHUNK = 1 << 18  # voxels per fast-winding-number call
METHODS = ("auto", "scan", "bvh")


class MeshWarning(UserWarning):
    """A mesh that is open, inconsistently oriented or inverted: the SDM uses the robust sign."""


# ---------------------------------------------------------------------------------------------
# point-triangle distance
# ---------------------------------------------------------------------------------------------
# Features: 0 face interior, 1/2/3 vertex a/b/c, 4/5/6 edge ab/bc/ca.

@njit(cache=True, inline="always")
def _closest_on_triangle(px, py, pz, T, t):
    """Squared distance from p to triangle t of T (F, 3, 3), its closest point and feature code."""
    ax, ay, az = T[t, 0, 0], T[t, 0, 1], T[t, 0, 2]
    bx, by, bz = T[t, 1, 0], T[t, 1, 1], T[t, 1, 2]
    cx, cy, cz = T[t, 2, 0], T[t, 2, 1], T[t, 2, 2]
    abx, aby, abz = bx - ax, by - ay, bz - az
    acx, acy, acz = cx - ax, cy - ay, cz - az
    apx, apy, apz = px - ax, py - ay, pz - az
    d1 = abx * apx + aby * apy + abz * apz
    d2 = acx * apx + acy * apy + acz * apz
    if d1 <= 0.0 and d2 <= 0.0:
        qx, qy, qz, f = ax, ay, az, 1
    else:
        bpx, bpy, bpz = px - bx, py - by, pz - bz
        d3 = abx * bpx + aby * bpy + abz * bpz
        d4 = acx * bpx + acy * bpy + acz * bpz
        if d3 >= 0.0 and d4 <= d3:
            qx, qy, qz, f = bx, by, bz, 2
        else:
            vc = d1 * d4 - d3 * d2
            if vc <= 0.0 and d1 >= 0.0 and d3 <= 0.0 and d1 - d3 > 0.0:
                v = d1 / (d1 - d3)
                qx, qy, qz, f = ax + v * abx, ay + v * aby, az + v * abz, 4
            else:
                cpx, cpy, cpz = px - cx, py - cy, pz - cz
                d5 = abx * cpx + aby * cpy + abz * cpz
                d6 = acx * cpx + acy * cpy + acz * cpz
                if d6 >= 0.0 and d5 <= d6:
                    qx, qy, qz, f = cx, cy, cz, 3
                else:
                    vb = d5 * d2 - d1 * d6
                    if vb <= 0.0 and d2 >= 0.0 and d6 <= 0.0 and d2 - d6 > 0.0:
                        w = d2 / (d2 - d6)
                        qx, qy, qz, f = ax + w * acx, ay + w * acy, az + w * acz, 6
                    else:
                        va = d3 * d6 - d5 * d4
                        e1, e2 = d4 - d3, d5 - d6
                        if va <= 0.0 and e1 >= 0.0 and e2 >= 0.0 and e1 + e2 > 0.0:
                            w = e1 / (e1 + e2)
                            qx, qy, qz, f = bx + w * (cx - bx), by + w * (cy - by), bz + w * (cz - bz), 5
                        elif va + vb + vc > 0.0:
                            s = 1.0 / (va + vb + vc)
                            v, w = vb * s, vc * s
                            qx, qy, qz, f = ax + abx * v + acx * w, ay + aby * v + acy * w, az + abz * v + acz * w, 0
                        else:  # degenerate (zero-area) triangle: its nearest vertex
                            da = apx * apx + apy * apy + apz * apz
                            db = bpx * bpx + bpy * bpy + bpz * bpz
                            dc = cpx * cpx + cpy * cpy + cpz * cpz
                            if da <= db and da <= dc:
                                qx, qy, qz, f = ax, ay, az, 1
                            elif db <= dc:
                                qx, qy, qz, f = bx, by, bz, 2
                            else:
                                qx, qy, qz, f = cx, cy, cz, 3
    dx, dy, dz = px - qx, py - qy, pz - qz
    return dx * dx + dy * dy + dz * dz, qx, qy, qz, f


# ---------------------------------------------------------------------------------------------
# BVH
# ---------------------------------------------------------------------------------------------

@njit(cache=True)
def _build_bvh(T, leaf_size):
    """Median-split BVH over triangles T (F, 3, 3). Returns node boxes, children, ranges and the
    triangle order (leaves hold contiguous ranges of it)."""
    n = T.shape[0]
    tlo = np.empty((n, 3))
    thi = np.empty((n, 3))
    cen = np.empty((n, 3))
    for t in range(n):
        for a in range(3):
            lo = min(T[t, 0, a], T[t, 1, a], T[t, 2, a])
            hi = max(T[t, 0, a], T[t, 1, a], T[t, 2, a])
            tlo[t, a], thi[t, a], cen[t, a] = lo, hi, 0.5 * (lo + hi)
    order = np.arange(n)
    cap = 2 * n + 1
    lo_n = np.empty((cap, 3))
    hi_n = np.empty((cap, 3))
    left = np.full(cap, -1, np.int64)
    right = np.full(cap, -1, np.int64)
    start = np.zeros(cap, np.int64)
    count = np.zeros(cap, np.int64)
    stack = np.empty((128, 3), np.int64)
    stack[0, 0], stack[0, 1], stack[0, 2] = 0, 0, n
    sp, nodes = 1, 1
    while sp > 0:
        sp -= 1
        node, s, e = stack[sp, 0], stack[sp, 1], stack[sp, 2]
        clo = np.full(3, np.inf)
        chi = np.full(3, -np.inf)
        for a in range(3):
            lo_n[node, a], hi_n[node, a] = np.inf, -np.inf
        for q in range(s, e):
            t = order[q]
            for a in range(3):
                lo_n[node, a] = min(lo_n[node, a], tlo[t, a])
                hi_n[node, a] = max(hi_n[node, a], thi[t, a])
                clo[a] = min(clo[a], cen[t, a])
                chi[a] = max(chi[a], cen[t, a])
        ext = chi - clo
        axis = np.argmax(ext)
        if e - s <= leaf_size or ext[axis] <= 0.0:
            start[node], count[node] = s, e - s
            continue
        seg = order[s:e].copy()
        keys = np.empty(e - s)
        for q in range(e - s):
            keys[q] = cen[seg[q], axis]
        order[s:e] = seg[np.argsort(keys)]
        mid = (s + e) // 2
        left[node], right[node] = nodes, nodes + 1
        stack[sp, 0], stack[sp, 1], stack[sp, 2] = nodes, s, mid
        stack[sp + 1, 0], stack[sp + 1, 1], stack[sp + 1, 2] = nodes + 1, mid, e
        sp += 2
        nodes += 2
    return lo_n[:nodes], hi_n[:nodes], left[:nodes], right[:nodes], start[:nodes], count[:nodes], order


@njit(cache=True, inline="always")
def _box_d2(px, py, pz, lo, hi, node):
    dx = max(lo[node, 0] - px, 0.0, px - hi[node, 0])
    dy = max(lo[node, 1] - py, 0.0, py - hi[node, 1])
    dz = max(lo[node, 2] - pz, 0.0, pz - hi[node, 2])
    return dx * dx + dy * dy + dz * dz


@njit(cache=True)
def _nearest(px, py, pz, hint, T, lo, hi, left, right, start, count, stack_n, stack_d):
    """Nearest triangle to p: (squared distance, index). ``hint`` (or -1) seeds the upper bound."""
    best, best_t = np.inf, -1
    if hint >= 0:
        best, _, _, _, _ = _closest_on_triangle(px, py, pz, T, hint)
        best_t = hint
    stack_n[0], stack_d[0] = 0, _box_d2(px, py, pz, lo, hi, 0)
    sp = 1
    while sp > 0:
        sp -= 1
        node = stack_n[sp]
        if stack_d[sp] >= best:
            continue
        if left[node] < 0:
            for t in range(start[node], start[node] + count[node]):
                d2, _, _, _, _ = _closest_on_triangle(px, py, pz, T, t)
                if d2 < best:
                    best, best_t = d2, t
            continue
        l, r = left[node], right[node]
        dl = _box_d2(px, py, pz, lo, hi, l)
        dr = _box_d2(px, py, pz, lo, hi, r)
        if dl > dr:  # push the farther child first so the nearer one is opened first
            l, r, dl, dr = r, l, dr, dl
        if dr < best:
            stack_n[sp], stack_d[sp] = r, dr
            sp += 1
        if dl < best:
            stack_n[sp], stack_d[sp] = l, dl
            sp += 1
    return best, best_t


@njit(cache=True, inline="always")
def _value(px, py, pz, T, t, FN, EN, VN, signed):
    """Distance from p to triangle t, negative when signed and p is behind the pseudonormal of the
    closest feature. FN (F, 3), EN (F, 3, 3), VN (F, 3, 3): face, edge and corner pseudonormals."""
    d2, qx, qy, qz, f = _closest_on_triangle(px, py, pz, T, t)
    d = math.sqrt(d2)
    if signed:
        if f == 0:
            nxv, nyv, nzv = FN[t, 0], FN[t, 1], FN[t, 2]
        elif f <= 3:
            nxv, nyv, nzv = VN[t, f - 1, 0], VN[t, f - 1, 1], VN[t, f - 1, 2]
        else:
            nxv, nyv, nzv = EN[t, f - 4, 0], EN[t, f - 4, 1], EN[t, f - 4, 2]
        if (px - qx) * nxv + (py - qy) * nyv + (pz - qz) * nzv < 0.0:
            d = -d
    return d


@njit(cache=True, parallel=True)
def _distance_kernel(origin, spacing, shape, T, lo, hi, left, right, start, count, FN, EN, VN, signed):
    """Exact (signed) distance on the grid by nearest-triangle queries. Scanlines run along z; each
    query starts from the previous voxel's nearest triangle."""
    nx, ny, nz = shape
    out = np.empty((nx, ny, nz), np.float32)
    for row in prange(nx * ny):
        i, j = row // ny, row % ny
        px = origin[0] + i * spacing[0]
        py = origin[1] + j * spacing[1]
        stack_n = np.empty(256, np.int64)
        stack_d = np.empty(256)
        hint = -1
        for k in range(nz):
            pz = origin[2] + k * spacing[2]
            _, t = _nearest(px, py, pz, hint, T, lo, hi, left, right, start, count, stack_n, stack_d)
            hint = t
            out[i, j, k] = _value(px, py, pz, T, t, FN, EN, VN, signed)
    return out


@njit(cache=True, parallel=True)
def _points_kernel(P, T, lo, hi, left, right, start, count, FN, EN, VN, signed):
    """Exact (signed) distance at arbitrary points by nearest-triangle queries."""
    out = np.empty(len(P), np.float32)
    for n in prange(len(P)):
        stack_n = np.empty(256, np.int64)
        stack_d = np.empty(256)
        _, t = _nearest(P[n, 0], P[n, 1], P[n, 2], -1, T, lo, hi, left, right, start, count, stack_n, stack_d)
        out[n] = _value(P[n, 0], P[n, 1], P[n, 2], T, t, FN, EN, VN, signed)
    return out


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------

def check_mesh(mesh: trimesh.Trimesh) -> None:
    """Refuse a mesh that is empty or has non-finite vertices (MeshError)."""
    if not isinstance(mesh, trimesh.Trimesh):
        raise MeshError(f"expected a trimesh.Trimesh triangle mesh, got {type(mesh).__name__}")
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise MeshError("the mesh is empty: it has no triangles")
    if not np.all(np.isfinite(mesh.vertices)):
        raise MeshError("the mesh has NaN or infinite vertex coordinates")
    if mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices):
        raise MeshError("the mesh has faces that index missing vertices")


def mesh_is_clean(mesh: trimesh.Trimesh) -> tuple[bool, str]:
    """Whether the pseudonormal sign is exact on this mesh, and if not, why."""
    if not mesh.is_watertight:
        return False, "the mesh is not watertight (open or non-manifold)"
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
            self._pseudo = csc.pseudonormals(self.F, self.twin, self.FN, self.VNv)
        return self._pseudo

    @classmethod
    def of(cls, V: np.ndarray, F: np.ndarray) -> "_Topology | None":
        twin = csc.half_edge_twins(F, len(V))
        if twin is None:
            return None
        fans = csc.normals_and_fans(V, F, twin)
        return None if fans is None else cls(V, F, twin, fans)

    def scan(self, grid: Grid, signed: bool) -> np.ndarray:
        """Exact (signed) distance on ``grid`` by characteristic scan conversion."""
        if self._regions is None:
            self._regions = csc.regions(self.V, self.F, self.twin, self.FN, self.VNv, *self._fans)
        kind, outside, base, cons_a, cons_b, cptr, rays, rptr = self._regions
        origin, spacing = np.array(grid.origin, float), np.array(grid.spacing, float)
        tol = 1e-9 * (max(float(np.abs(self.V).max()), float(np.abs(grid.bounds).max())) + 1.0)
        pieces = csc.build_pieces(origin, spacing, grid.shape, kind, base, rays, rptr, tol)
        key = csc.scatter(origin, spacing, grid.shape, kind, base, cons_a, cons_b, cptr, rays, rptr,
                          *pieces, tol, numba.get_num_threads())
        out = csc.distances(origin, spacing, key, kind, outside, base, rays, rptr, signed)
        gaps = np.isnan(out)
        if gaps.any():  # a safety net: redo any voxel no region reached with nearest-triangle queries
            T = np.ascontiguousarray(self.V[self.F])
            out[gaps] = _points(grid.points()[gaps.ravel()], T, self.FN, self.EN, self.VN, signed)
        return out


def _bvh_of(T):
    """A BVH over triangles T: (T reordered so that leaves hold contiguous ranges, nodes, order)."""
    lo, hi, left, right, start, count, order = _build_bvh(T, LEAF_SIZE)
    return np.ascontiguousarray(T[order]), (lo, hi, left, right, start, count), order


def _points(P, T, FN, EN, VN, signed):
    """Exact (signed) distance at points P by nearest-triangle queries."""
    T, nodes, order = _bvh_of(T)
    return _points_kernel(np.ascontiguousarray(P), T, *nodes, FN[order], EN[order], VN[order], signed)


def _bvh(V, F, grid: Grid, topo: "_Topology | None", signed: bool) -> np.ndarray:
    """Exact (signed) distance on ``grid`` by nearest-triangle queries."""
    T, nodes, order = _bvh_of(np.ascontiguousarray(V[F]))
    if signed:
        FN, EN, VN = topo.FN[order], topo.EN[order], topo.VN[order]
    else:
        FN, EN, VN = np.zeros((1, 3)), np.zeros((1, 3, 3)), np.zeros((1, 3, 3))
    return _distance_kernel(np.array(grid.origin, float), np.array(grid.spacing, float), grid.shape, T,
                            *nodes, FN, EN, VN, signed)


def _choose(method: str, topo: "_Topology | None") -> str:
    """The method to run: the scan when asked or (auto) when the mesh allows it. Its peak, 12 bytes a
    voxel (the int64 key and the float32 output), is within grid.BYTES_PER_VOXEL, which the callers
    check first."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if method == "scan" and topo is None:
        raise MeshError("the scan method needs a closed, consistently oriented, manifold mesh without degenerate "
                        "faces; use method='bvh' for this one")
    if method == "auto":
        method = "scan" if topo is not None else "bvh"
    return method


def unsigned_distance(mesh: trimesh.Trimesh, grid: Grid, method: str = "auto") -> np.ndarray:
    """Exact distance (mm, >= 0) from every voxel centre of ``grid`` to ``mesh``, float32.
    ``method``: "scan", "bvh" or "auto" (the scan when the mesh allows it; see the module notes)."""
    check_mesh(mesh)
    grid.check_memory()
    pin_workers()
    V = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    F = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    topo = _Topology.of(V, F)
    if _choose(method, topo) == "scan":
        return topo.scan(grid, signed=False)
    return _bvh(V, F, grid, None, signed=False)


def winding_number(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Generalised winding number of ``mesh`` at ``points`` (libigl's fast winding number), chunked."""
    V = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    F = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    import igl

    out = np.empty(len(points))
    for s in range(0, len(points), WINDING_CHUNK):
        out[s : s + WINDING_CHUNK] = igl.fast_winding_number(V, F, np.ascontiguousarray(points[s : s + WINDING_CHUNK]))
    return out


def exact_sdm(mesh: trimesh.Trimesh, grid: Grid, sign: str = "auto", method: str = "auto") -> np.ndarray:
    """Exact signed distance map of a closed triangle mesh, sampled at the voxel centres of ``grid``.

    Parameters
    ----------
    mesh : trimesh.Trimesh
        A closed triangle mesh in mm. Open, inconsistently oriented, non-manifold or inverted meshes
        are accepted with a ``MeshWarning`` and get the robust (winding-number) sign.
    grid : Grid
        Where to sample.
    sign : {"auto", "pseudonormal", "winding"}
        "auto" uses the exact pseudonormal sign on clean meshes and the winding number otherwise.
    method : {"auto", "scan", "bvh"}
        How distances are found (both exact, see the module notes); "auto" uses the scan on clean
        meshes and the BVH on any other.

    Returns
    -------
    numpy.ndarray
        float32 array of ``grid.shape``, millimetres, negative inside, indexed [i, j, k] = [x, y, z].
    """
    check_mesh(mesh)
    grid.check_memory()
    if sign not in ("auto", "pseudonormal", "winding"):
        raise ValueError(f"sign must be 'auto', 'pseudonormal' or 'winding', got {sign!r}")
    pin_workers()
    V = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    F = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    # closed, consistently oriented, manifold, no degenerate face: the topology checks all of it. The
    # volume's sign is checked first (it means something only on a closed mesh, and flipping every face
    # changes none of those properties), so that an inverted mesh's topology is built once, flipped.
    inverted = _signed_volume(V, F) < 0
    topo = _Topology.of(V, np.ascontiguousarray(F[:, ::-1]) if inverted else F)
    clean, why = topo is not None, ""
    if clean and inverted:
        warnings.warn("the mesh is inverted (inward normals); it was flipped", MeshWarning, stacklevel=2)
        F = topo.F
    if not clean:  # the reason, in words
        why = mesh_is_clean(mesh)[1] or "the mesh has a non-manifold vertex"
    if sign == "auto":
        sign = "pseudonormal" if clean else "winding"
        if not clean:
            warnings.warn(f"{why}; using the robust winding-number sign", MeshWarning, stacklevel=2)
    elif sign == "pseudonormal" and not clean:
        raise MeshError(f"the pseudonormal sign is exact only on clean meshes and {why}; use sign='winding'")
    signed = sign == "pseudonormal"
    out = topo.scan(grid, signed) if _choose(method, topo) == "scan" else _bvh(V, F, grid, topo, signed)
    if signed:
        return out
    w = winding_number(mesh, grid.points()).reshape(grid.shape)
    return np.where(np.abs(w) > 0.5, -out, out).astype(np.float32)


@njit(cache=True, parallel=True)
def _signed_volume(V: np.ndarray, F: np.ndarray) -> float:
    """Volume enclosed by a closed mesh, negative when its faces point inward."""
    total = 0.0
    for f in prange(F.shape[0]):
        a, b, c = V[F[f, 0]], V[F[f, 1]], V[F[f, 2]]
        total += a[0] * (b[1] * c[2] - b[2] * c[1]) + a[1] * (b[2] * c[0] - b[0] * c[2]) + a[2] * (b[0] * c[1] - b[1] * c[0])
    return total / 6.0


def keep_freed_memory() -> bool:
    """Let glibc's malloc serve blocks up to 64 MiB from its heap and keep up to 512 MiB of freed memory
    there (mallopt), so that repeated SDMs reuse pages instead of faulting in fresh ones. Measured on
    this project's machine: 9,800-18,300 page faults per exact SDM at 64^3-128^3 without it, none with
    it, and 9-28 % less time. Process-wide, so the command line, the dataset workers and the benchmarks
    call it rather than the library on import. Returns whether it applied (False off glibc)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 512 << 20))
    except (OSError, AttributeError):
        return False


def set_threads(n: int | None) -> None:
    """Use ``n`` threads for the SDM kernels (default: all cores)."""
    numba.set_num_threads(n or numba.config.NUMBA_NUM_THREADS)


# ---------------------------------------------------------------------------------------------
# worker threads, one per core
# ---------------------------------------------------------------------------------------------
#: Whether the SDM functions keep numba's worker threads each on its own core (see pin_workers).
#: ``SDMNN_PIN_THREADS=0`` in the environment turns it off.
PIN_THREADS = os.environ.get("SDMNN_PIN_THREADS", "1") != "0"
_pinned: dict = {"state": None, "tids": ()}


def _gettid_address() -> int:
    """The address of glibc's gettid (0 where there is none), registered with LLVM so that the
    compiled (and cached) worker-id kernel can call it."""
    try:
        import ctypes

        import llvmlite.binding as llvm

        address = ctypes.cast(ctypes.CDLL(None).gettid, ctypes.c_void_p).value or 0
    except (OSError, AttributeError):
        return 0
    if address:
        llvm.add_symbol("sdmnn_gettid", address)
    return address


_GETTID = _gettid_address() if hasattr(os, "sched_setaffinity") else 0


@intrinsic
def _gettid(typingctx):
    """The calling thread's kernel id (gettid(2)); only called where _GETTID is set."""

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sdmnn_gettid")
        return builder.sext(builder.call(fn, []), ir.IntType(64))

    return types.int64(), codegen


@njit(cache=True, parallel=True)
def _worker_tids(out):
    """out[i] = the kernel thread id of numba's worker i, for i < len(out) = the threads in use (a
    parallel loop of that many iterations gives each worker one)."""
    for i in prange(len(out)):
        out[numba.get_thread_id()] = _gettid()


def pin_workers() -> bool:
    """Keep numba's worker threads each on its own core while the kernels use two or more threads, one
    per core the process may run on; release them otherwise (fewer threads than cores, one thread, or
    PIN_THREADS off). Pinning only when every core gets one worker means that several processes doing
    the same (dataset workers, say) still share the cores evenly. The SDM functions call it, so a change
    of set_threads takes effect at the next SDM; it does nothing when nothing changed since the last call.

    Why: on this project's 2-core machine, Linux often wakes both workers on the same core after the
    process ran single-threaded work (a Python loop, pysdf, a torch forward pass), and moves one away
    only some milliseconds later; every parallel loop then runs at one core's speed for a while.
    Measured on the default cochlea at 64^3, run in turn with pysdf (median of 15, 4-5 runs): 47-52 ms
    with the workers free, 35-43 ms pinned; bench/sdm_bench.py measures both. Only numba's own workers
    are pinned, never the caller's thread. Returns whether they are pinned now."""
    if not _GETTID:
        return False
    n = numba.get_num_threads()
    allowed = sorted(os.sched_getaffinity(0))
    want = PIN_THREADS and 2 <= n == len(allowed)
    state = (os.getpid(), want, n, tuple(allowed))
    if _pinned["state"] == state:
        return want
    tids = _pinned["tids"] if _pinned["state"] and _pinned["state"][0] == os.getpid() else ()
    for tid in tids:  # release the last pinning first
        _set_affinity(tid, allowed)
    _pinned["tids"] = ()
    if want:
        out = np.zeros(n, np.int64)
        _worker_tids(out)
        # one distinct worker per thread, none of them the caller (as under the OpenMP layer, where the
        # caller's thread is worker 0)
        if np.all(out > 0) and len(set(out.tolist())) == n and threading.get_native_id() not in out:
            _pinned["tids"] = tuple(int(t) for t in out)
            for tid, cpu in zip(_pinned["tids"], allowed):
                _set_affinity(tid, [cpu])
        else:
            want = False
    _pinned["state"] = state
    return want


def _set_affinity(tid: int, cpus) -> None:
    """Best effort: a worker that is gone or may not be moved is left as it is."""
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError:
        pass
