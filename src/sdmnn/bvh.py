"""The BVH method of the exact distance: for every voxel its nearest triangle, from a bounding-volume
hierarchy. Voxels are visited along scanlines and each query starts from the previous voxel's nearest
triangle, so only BVH nodes closer than that are opened. It needs no topology (any triangle soup),
but far from a fine mesh many triangles are almost equidistant and each query tests many of them,
which is why the scan (``sdmnn.scan``) is the default on clean meshes.

Written with numba because libigl's AABB tree starts every query from scratch.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .grid import Grid

LEAF_SIZE = 4


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


def build(T):
    """A BVH over triangles T: (T reordered so that leaves hold contiguous ranges, nodes, order)."""
    lo, hi, left, right, start, count, order = _build_bvh(T, LEAF_SIZE)
    return np.ascontiguousarray(T[order]), (lo, hi, left, right, start, count), order


def at_points(P, T, FN, EN, VN, signed):
    """Exact (signed) distance at points P by nearest-triangle queries."""
    T, nodes, order = build(T)
    return _points_kernel(np.ascontiguousarray(P), T, *nodes, FN[order], EN[order], VN[order], signed)


def on_grid(V, F, grid: Grid, pseudonormals, signed: bool) -> np.ndarray:
    """Exact (signed) distance on ``grid`` by nearest-triangle queries."""
    T, nodes, order = build(np.ascontiguousarray(V[F]))
    if signed:
        FN, EN, VN = (n[order] for n in pseudonormals)
    else:
        FN, EN, VN = np.zeros((1, 3)), np.zeros((1, 3, 3)), np.zeros((1, 3, 3))
    return _distance_kernel(np.array(grid.origin, float), np.array(grid.spacing, float), grid.shape, T,
                            *nodes, FN, EN, VN, signed)
