"""The bodies of a closed mesh, their orientation, and whether the pseudonormal sign holds on them.

On a closed mesh the generalised winding number w is an integer off the surface. The pseudonormal sign (the
side of the nearest feature) is the winding-number sign (inside where |w| >= 1/2) only where every sheet of
surface separates w = 0 from w = 1. Bodies that cross or touch each other or themselves, a body nested in
another with the same orientation, or an inverted body standing alone make w = 2 or w = -1 somewhere, and
the points whose nearest sheet bounds such a region get the wrong sign from it. ``overlap`` finds them on
a mesh of several bodies: triangle pairs that intersect (hashed into a uniform grid of cells, then triangle
tests in double precision) and the winding number just off one face of each body. A mesh of one body is
not searched for places where it crosses itself: that search would cost a sizeable part of the scan's time
on every clean mesh (most pairs of triangles whose boxes meet are neighbours, and telling them apart is the
cost), and ``exact_sdm(..., sign="winding")`` is the way to sign such a mesh.

Written with numba because neither trimesh nor libigl's Python bindings find self-intersections.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

#: Triangle pairs are hashed into cells about this many times the mean triangle size.
CELL = 2.0
#: Cells and (triangle, cell) entries allowed per triangle before the cells are made larger.
MAX_CELLS, MAX_ENTRIES = 8, 16


def components(F: np.ndarray, twin: np.ndarray) -> tuple[np.ndarray, int]:
    """The bodies of a closed mesh, face by face: (label of each face, count), joined across edges."""
    return _components(F.shape[0], twin)


@njit(cache=True)
def _components(nf, twin):
    label = np.full(nf, -1, np.int64)
    stack = np.empty(nf, np.int64)
    count = 0
    for seed in range(nf):
        if label[seed] >= 0:
            continue
        label[seed], stack[0], sp = count, seed, 1
        while sp > 0:
            sp -= 1
            f = stack[sp]
            for c in range(3):
                g = twin[3 * f + c] // 3
                if label[g] < 0:
                    label[g] = count
                    stack[sp] = g
                    sp += 1
        count += 1
    return label, count


def orient(F: np.ndarray) -> tuple[np.ndarray, int]:
    """Faces oriented consistently within each body (libigl's breadth-first orientation), each body keeping
    the orientation most of its faces had, so that a few flipped faces are turned back: (faces, how many
    were flipped)."""
    import igl

    FF, C = igl.bfs_orient(np.ascontiguousarray(F, dtype=np.int64))
    flipped = ~np.all(FF == F, axis=1)
    # a body whose faces were mostly flipped is turned back whole
    back = np.bincount(C, weights=flipped) * 2 > np.bincount(C)
    FF[back[C]] = FF[back[C]][:, ::-1]
    flipped = ~np.all(FF == F, axis=1)
    return np.ascontiguousarray(FF), int(flipped.sum())


def overlap(V: np.ndarray, F: np.ndarray, twin: np.ndarray) -> str:
    """Why the pseudonormal sign does not hold on this closed, consistently oriented mesh of several
    bodies ('' when it does, and for a mesh of one body): triangles that intersect, or bodies nested with
    the same orientation or inverted."""
    label, count = components(F, twin)
    if count == 1:
        return ""
    a, b = _crossing(V, F)
    if a >= 0:
        where = ", ".join(f"{x:.4g}" for x in V[F[a]].mean(axis=0))
        if label[a] != label[b]:
            return f"two of the mesh's {count} bodies intersect (near ({where}) mm)"
        return f"a body of the mesh intersects itself (near ({where}) mm)"
    # no sheet crosses another, so the winding number is constant along each side of each body's
    # surface: it must be 0 on one side and 1 on the other, checked just off one face of each body
    import igl

    T = V[F]
    normal = np.cross(T[:, 1] - T[:, 0], T[:, 2] - T[:, 0])
    area = np.linalg.norm(normal, axis=1)
    order = np.lexsort((-area, label))  # each body's largest face first
    face = order[np.searchsorted(label[order], np.arange(count))]
    step = 1e-3 * normal[face] / np.sqrt(area[face])[:, None]  # a thousandth of the face's size
    centre = T[face].mean(axis=1)
    points = np.concatenate([centre + step, centre - step])
    FF = np.ascontiguousarray(F, dtype=np.int64)
    w = igl.fast_winding_number(V, FF, points)
    unsure = np.abs(w - np.rint(w)) > 0.1
    if unsure.any():
        w[unsure] = igl.winding_number(V, FF, points[unsure])
    w = np.rint(w).reshape(2, count)
    bad = (w < 0).any(axis=0) | (w > 1).any(axis=0)
    if bad.any():
        k = int(np.argmax(bad))
        where = ", ".join(f"{x:.4g}" for x in centre[k])
        kind = "a body nested in another with the same orientation" if w[:, k].max() > 1 else "an inverted body"
        return f"the mesh has {kind} (near ({where}) mm)"
    return ""


def crossing(V: np.ndarray, F: np.ndarray) -> str:
    """Where two triangles of a mesh that share no vertex intersect or touch ('' when none do): the search
    that ``overlap`` skips on a mesh of one body, for checks that can afford it (``sdmnn families check``)."""
    a, _ = _crossing(np.ascontiguousarray(V, dtype=np.float64), np.ascontiguousarray(F, dtype=np.int64))
    if a < 0:
        return ""
    return "its surface intersects itself near (" + ", ".join(f"{x:.4g}" for x in V[F[a]].mean(axis=0)) + ") mm"


@njit(cache=True, parallel=True)
def _crossing(V, F):
    """A pair of triangles that share no vertex and intersect or touch, (a, b), or (-1, -1). Each triangle
    goes into the cells of a uniform grid that its box meets; a pair is tested in the one cell that holds
    the low corner of the intersection of their boxes. Most pairs whose boxes meet are neighbours sharing a
    vertex, which touch by construction and are skipped."""
    nf = F.shape[0]
    lo = np.empty((nf, 3))
    hi = np.empty((nf, 3))
    for f in prange(nf):
        for k in range(3):
            a, b, c = V[F[f, 0], k], V[F[f, 1], k], V[F[f, 2], k]
            lo[f, k], hi[f, k] = min(a, b, c), max(a, b, c)
    size = 0.0
    for f in range(nf):
        size += max(hi[f, 0] - lo[f, 0], hi[f, 1] - lo[f, 1], hi[f, 2] - lo[f, 2])
    mlo = np.empty(3)
    mhi = np.empty(3)
    for k in range(3):
        mlo[k], mhi[k] = lo[:, k].min(), hi[:, k].max()
    extent = max(mhi[0] - mlo[0], mhi[1] - mlo[1], mhi[2] - mlo[2])
    eps = 1e-9 * extent  # within this of a plane is on it (rounding and near-flat patches)
    cell = max(CELL * size / nf, extent / 1024.0, 1e-300)
    dims = np.empty(3, np.int64)
    cmin = np.empty((nf, 3), np.int64)  # each triangle's first and last cell along each axis
    cmax = np.empty((nf, 3), np.int64)
    while True:  # larger cells until there are few enough cells and entries (at most 1024 cells an axis)
        inv = 1.0 / cell
        for k in range(3):
            dims[k] = int((mhi[k] - mlo[k]) * inv) + 1
        entries = 0
        for f in range(nf):
            n = 1
            for k in range(3):
                cmin[f, k], cmax[f, k] = int((lo[f, k] - mlo[k]) * inv), int((hi[f, k] - mlo[k]) * inv)
                n *= cmax[f, k] - cmin[f, k] + 1
            entries += n
        if (dims[0] * dims[1] * dims[2] <= MAX_CELLS * nf + 64 and entries <= MAX_ENTRIES * nf + 64) or dims.max() <= 2:
            break
        cell *= 2.0
    ncell = dims[0] * dims[1] * dims[2]
    start = np.zeros(ncell + 1, np.int64)
    for f in range(nf):
        for i in range(cmin[f, 0], cmax[f, 0] + 1):
            for j in range(cmin[f, 1], cmax[f, 1] + 1):
                for k in range(cmin[f, 2], cmax[f, 2] + 1):
                    start[(i * dims[1] + j) * dims[2] + k + 1] += 1
    for c in range(ncell):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    # per entry, in cell order: the triangle, its box, its first cell and its corners (contiguous for the
    # pair loop)
    tri = np.empty(entries, np.int64)
    box = np.empty((entries, 6))
    first = np.empty((entries, 3), np.int64)
    corner = np.empty((entries, 3), np.int64)
    for f in range(nf):
        for i in range(cmin[f, 0], cmax[f, 0] + 1):
            for j in range(cmin[f, 1], cmax[f, 1] + 1):
                for k in range(cmin[f, 2], cmax[f, 2] + 1):
                    c = (i * dims[1] + j) * dims[2] + k
                    e = fill[c]
                    fill[c] += 1
                    tri[e] = f
                    for q in range(3):
                        box[e, q], box[e, 3 + q], first[e, q], corner[e, q] = lo[f, q], hi[f, q], cmin[f, q], F[f, q]
    hit = np.full(ncell, -1, np.int64)
    other = np.full(ncell, -1, np.int64)
    for c in prange(ncell):
        ci, cj, ck = c // (dims[1] * dims[2]), (c // dims[2]) % dims[1], c % dims[2]
        m = start[c + 1] - start[c]
        if m < 2:
            continue
        # swept along x: a cell holding a dense cluster (a body far finer than the others) costs the pairs
        # that overlap in x, not all of its pairs
        order = np.argsort(box[start[c] : start[c + 1], 0]) + start[c]
        for i in range(m):
            x = order[i]
            for j in range(i + 1, m):
                y = order[j]
                if box[y, 0] > box[x, 3]:
                    break
                if box[x, 1] > box[y, 4] or box[y, 1] > box[x, 4] or box[x, 2] > box[y, 5] or box[y, 2] > box[x, 5]:
                    continue
                # the pair's own cell: the one holding the low corner of their boxes' intersection
                if max(first[x, 0], first[y, 0]) != ci or max(first[x, 1], first[y, 1]) != cj or max(first[x, 2], first[y, 2]) != ck:
                    continue
                p0, p1, p2, q0, q1, q2 = corner[x, 0], corner[x, 1], corner[x, 2], corner[y, 0], corner[y, 1], corner[y, 2]
                if p0 == q0 or p0 == q1 or p0 == q2 or p1 == q0 or p1 == q1 or p1 == q2 or p2 == q0 or p2 == q1 or p2 == q2:
                    continue
                if _triangles_meet(V, F, tri[x], tri[y], eps):
                    hit[c], other[c] = tri[x], tri[y]
                    break
            if hit[c] >= 0:
                break
    for c in range(ncell):
        if hit[c] >= 0:
            return hit[c], other[c]
    return -1, -1


@njit(cache=True, inline="always")
def _plane_sides(V, F, a, b, eps):
    """The signed distances of triangle b's corners from triangle a's plane (0 within eps), and a's
    unit normal."""
    p, q, r = F[a, 0], F[a, 1], F[a, 2]
    ux, uy, uz = V[q, 0] - V[p, 0], V[q, 1] - V[p, 1], V[q, 2] - V[p, 2]
    vx, vy, vz = V[r, 0] - V[p, 0], V[r, 1] - V[p, 1], V[r, 2] - V[p, 2]
    nx, ny, nz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
    nn = max(math.sqrt(nx * nx + ny * ny + nz * nz), 1e-300)  # (no degenerate face reaches here)
    nx, ny, nz = nx / nn, ny / nn, nz / nn
    w0, w1, w2 = F[b, 0], F[b, 1], F[b, 2]
    d0 = (V[w0, 0] - V[p, 0]) * nx + (V[w0, 1] - V[p, 1]) * ny + (V[w0, 2] - V[p, 2]) * nz
    d1 = (V[w1, 0] - V[p, 0]) * nx + (V[w1, 1] - V[p, 1]) * ny + (V[w1, 2] - V[p, 2]) * nz
    d2 = (V[w2, 0] - V[p, 0]) * nx + (V[w2, 1] - V[p, 1]) * ny + (V[w2, 2] - V[p, 2]) * nz
    return (d0 if abs(d0) > eps else 0.0), (d1 if abs(d1) > eps else 0.0), (d2 if abs(d2) > eps else 0.0), nx, ny, nz


@njit(cache=True)
def _triangles_meet(V, F, a, b, eps):
    """Whether triangles a and b (non-degenerate) intersect or touch (Moeller 1997: each must meet the
    other's plane, and their segments on the planes' common line must overlap; coplanar ones are
    tested in the plane)."""
    b0, b1, b2, nax, nay, naz = _plane_sides(V, F, a, b, eps)
    if (b0 > 0 and b1 > 0 and b2 > 0) or (b0 < 0 and b1 < 0 and b2 < 0):
        return False
    a0, a1, a2, nbx, nby, nbz = _plane_sides(V, F, b, a, eps)
    if (a0 > 0 and a1 > 0 and a2 > 0) or (a0 < 0 and a1 < 0 and a2 < 0):
        return False
    if (b0 == 0.0 and b1 == 0.0 and b2 == 0.0) or (a0 == 0.0 and a1 == 0.0 and a2 == 0.0):
        return _coplanar_meet(V, F, a, b, nax, nay, naz)
    # the common line's direction; project onto its largest axis
    lx, ly, lz = nay * nbz - naz * nby, naz * nbx - nax * nbz, nax * nby - nay * nbx
    axis = 0 if abs(lx) >= abs(ly) and abs(lx) >= abs(lz) else (1 if abs(ly) >= abs(lz) else 2)
    s0, s1 = _segment(V, F, a, a0, a1, a2, axis)
    t0, t1 = _segment(V, F, b, b0, b1, b2, axis)
    return max(s0, t0) <= min(s1, t1)


@njit(cache=True, inline="always")
def _segment(V, F, t, d0, d1, d2, axis):
    """Where triangle t, its corners at signed distances d from the other's plane, crosses that plane,
    as an interval of coordinate ``axis`` along the planes' common line: its lone corner (the one on
    its own side) joined to the other two."""
    if d0 * d1 > 0.0:
        i, di, dj, dk = 2, d2, d0, d1
    elif d0 * d2 > 0.0:
        i, di, dj, dk = 1, d1, d2, d0
    elif d1 * d2 > 0.0 or d0 != 0.0:
        i, di, dj, dk = 0, d0, d1, d2
    elif d1 != 0.0:
        i, di, dj, dk = 1, d1, d2, d0
    else:
        i, di, dj, dk = 2, d2, d0, d1
    pi, pj, pk = V[F[t, i], axis], V[F[t, (i + 1) % 3], axis], V[F[t, (i + 2) % 3], axis]
    s = pi if di == dj else pi + (pj - pi) * di / (di - dj)
    e = pi if di == dk else pi + (pk - pi) * di / (di - dk)
    return min(s, e), max(s, e)


@njit(cache=True)
def _coplanar_meet(V, F, a, b, nx, ny, nz):
    """Whether coplanar triangles a and b overlap: in the plane of the two axes the normal is least
    along, an edge of one crosses an edge of the other, or a corner of one lies inside the other."""
    drop = 0 if abs(nx) >= abs(ny) and abs(nx) >= abs(nz) else (1 if abs(ny) >= abs(nz) else 2)
    x, y = (1, 2) if drop == 0 else ((0, 2) if drop == 1 else (0, 1))
    P = np.empty((2, 3, 2))
    for t in range(2):
        f = a if t == 0 else b
        for i in range(3):
            P[t, i, 0], P[t, i, 1] = V[F[f, i], x], V[F[f, i], y]
    for i in range(3):
        for j in range(3):
            p, q = P[0, i], P[0, (i + 1) % 3]
            r, s = P[1, j], P[1, (j + 1) % 3]
            if _orient(p, q, r) * _orient(p, q, s) < 0 and _orient(r, s, p) * _orient(r, s, q) < 0:
                return True
    return _inside(P[0], P[1, 0]) or _inside(P[1], P[0, 0])


@njit(cache=True, inline="always")
def _orient(p, q, r):
    return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])


@njit(cache=True, inline="always")
def _inside(T, p):
    s0, s1, s2 = _orient(T[0], T[1], p), _orient(T[1], T[2], p), _orient(T[2], T[0], p)
    return (s0 > 0 and s1 > 0 and s2 > 0) or (s0 < 0 and s1 < 0 and s2 < 0)
