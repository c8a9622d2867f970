"""The bodies of a closed mesh, their orientation, and whether the pseudonormal sign holds on them.

On a closed mesh the generalised winding number w is an integer off the surface. The pseudonormal sign (the
side of the nearest feature) is the winding-number sign (inside where |w| >= 1/2) only where every sheet of
surface separates w = 0 from w = 1. Bodies that cross or touch each other or themselves, a body nested in
another with the same orientation, or an inverted body standing alone make w = 2 or w = -1 somewhere, and
the points whose nearest sheet bounds such a region get the wrong sign from it. ``overlap`` finds them:
triangle pairs that intersect (hashed into a uniform grid of cells, then exact-in-double triangle tests) and
the winding number of the other bodies at one point of each body.

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
    """Why the pseudonormal sign does not hold on this closed, consistently oriented mesh ('' when it
    does): triangles that intersect, or bodies nested with the same orientation or inverted."""
    a, b = _crossing(V, F)
    label, count = components(F, twin)
    if a >= 0:
        where = ", ".join(f"{x:.4g}" for x in V[F[a]].mean(axis=0))
        if label[a] != label[b]:
            return f"two of the mesh's {count} bodies intersect (near ({where}) mm)"
        return f"the mesh intersects itself (near ({where}) mm)"
    if count == 1:
        return ""
    # no sheet crosses another: the other bodies' winding number is constant on each body, and the body
    # adds its own orientation (+-1) inside it; both sides must be 0 or 1. At a point inside one of a
    # body's faces that body's own winding number is exactly half its orientation.
    import igl

    T = V[F]
    area = np.linalg.norm(np.cross(T[:, 1] - T[:, 0], T[:, 2] - T[:, 0]), axis=1)
    volume = np.bincount(label, weights=np.einsum("ij,ij->i", T[:, 0], np.cross(T[:, 1], T[:, 2])), minlength=count)
    own = np.where(volume >= 0, 1, -1)
    face = np.array([np.flatnonzero(label == k)[np.argmax(area[label == k])] for k in range(count)])
    w = igl.fast_winding_number(V, np.ascontiguousarray(F, dtype=np.int64), T[face].mean(axis=1))
    others = np.rint(w - own / 2.0)
    bad = (others < 0) | (others > 1) | (others + own < 0) | (others + own > 1)
    if bad.any():
        k = int(np.argmax(bad))
        where = ", ".join(f"{x:.4g}" for x in T[face[k]].mean(axis=0))
        kind = "an inverted body" if others[k] == 0 else "a body nested in another with the same orientation"
        return f"the mesh has {kind} (near ({where}) mm)"
    return ""


@njit(cache=True, parallel=True)
def _crossing(V, F):
    """A pair of triangles that share no vertex and intersect or touch, (a, b), or (-1, -1). Each triangle
    goes into the cells of a uniform grid that its box meets; a pair is tested in the one cell that holds
    the low corner of the intersection of their boxes."""
    nf = F.shape[0]
    lo = np.empty((nf, 3))
    hi = np.empty((nf, 3))
    size = 0.0
    for f in range(nf):
        for k in range(3):
            a, b, c = V[F[f, 0], k], V[F[f, 1], k], V[F[f, 2], k]
            lo[f, k], hi[f, k] = min(a, b, c), max(a, b, c)
        size += max(hi[f, 0] - lo[f, 0], hi[f, 1] - lo[f, 1], hi[f, 2] - lo[f, 2])
    mlo = np.empty(3)
    mhi = np.empty(3)
    for k in range(3):
        mlo[k], mhi[k] = lo[:, k].min(), hi[:, k].max()
    extent = max(mhi[0] - mlo[0], mhi[1] - mlo[1], mhi[2] - mlo[2])
    eps = 1e-9 * extent  # within this of a plane is on it (rounding and near-flat patches)
    cell = max(CELL * size / nf, extent / 1024.0, 1e-300)
    dims = np.empty(3, np.int64)
    while True:  # larger cells until there are few enough cells and entries (a bounded loop: at most 1024 per axis)
        for k in range(3):
            dims[k] = int((mhi[k] - mlo[k]) / cell) + 1
        entries = 0
        for f in range(nf):
            n = 1
            for k in range(3):
                n *= int((hi[f, k] - mlo[k]) / cell) - int((lo[f, k] - mlo[k]) / cell) + 1
            entries += n
        if (dims[0] * dims[1] * dims[2] <= MAX_CELLS * nf + 64 and entries <= MAX_ENTRIES * nf + 64) or dims.max() <= 2:
            break
        cell *= 2.0
    ncell = dims[0] * dims[1] * dims[2]
    start = np.zeros(ncell + 1, np.int64)
    fill = start[:-1]
    members = np.empty(0, np.int64)
    for fill_in in range(2):  # count, then fill
        if fill_in:
            for c in range(ncell):
                start[c + 1] += start[c]
            fill = start[:-1].copy()
            members = np.empty(start[ncell], np.int64)
        for f in range(nf):
            i0, j0, k0 = _cell(lo[f], mlo, cell)
            i1, j1, k1 = _cell(hi[f], mlo, cell)
            for i in range(i0, i1 + 1):
                for j in range(j0, j1 + 1):
                    for k in range(k0, k1 + 1):
                        c = (i * dims[1] + j) * dims[2] + k
                        if fill_in:
                            members[fill[c]] = f
                            fill[c] += 1
                        else:
                            start[c + 1] += 1
    hit = np.full(ncell, -1, np.int64)
    other = np.full(ncell, -1, np.int64)
    for c in prange(ncell):
        ci, cj, ck = c // (dims[1] * dims[2]), (c // dims[2]) % dims[1], c % dims[2]
        for x in range(start[c], start[c + 1]):
            a = members[x]
            for y in range(x + 1, start[c + 1]):
                b = members[y]
                if (lo[a, 0] > hi[b, 0] or lo[b, 0] > hi[a, 0] or lo[a, 1] > hi[b, 1] or lo[b, 1] > hi[a, 1]
                        or lo[a, 2] > hi[b, 2] or lo[b, 2] > hi[a, 2]):
                    continue
                # the pair's own cell: the one holding the low corner of their boxes' intersection
                if (int((max(lo[a, 0], lo[b, 0]) - mlo[0]) / cell) != ci or int((max(lo[a, 1], lo[b, 1]) - mlo[1]) / cell) != cj
                        or int((max(lo[a, 2], lo[b, 2]) - mlo[2]) / cell) != ck):
                    continue
                shared = False
                for p in range(3):
                    for q in range(3):
                        shared = shared or F[a, p] == F[b, q]
                if not shared and _triangles_meet(V, F, a, b, eps):
                    hit[c], other[c] = a, b
                    break
            if hit[c] >= 0:
                break
    for c in range(ncell):
        if hit[c] >= 0:
            return hit[c], other[c]
    return -1, -1


@njit(cache=True, inline="always")
def _cell(p, mlo, cell):
    """The cell holding point p (at least mlo, at most 1024 cells beyond)."""
    return int((p[0] - mlo[0]) / cell), int((p[1] - mlo[1]) / cell), int((p[2] - mlo[2]) / cell)


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
    d = np.empty(3)
    for i in range(3):
        w = F[b, i]
        d[i] = (V[w, 0] - V[p, 0]) * nx + (V[w, 1] - V[p, 1]) * ny + (V[w, 2] - V[p, 2]) * nz
        if abs(d[i]) <= eps:
            d[i] = 0.0
    return d, nx, ny, nz


@njit(cache=True)
def _triangles_meet(V, F, a, b, eps):
    """Whether triangles a and b (non-degenerate) intersect or touch (Moeller 1997: each must meet the
    other's plane, and their segments on the planes' common line must overlap; coplanar ones are
    tested in the plane)."""
    db, nax, nay, naz = _plane_sides(V, F, a, b, eps)
    if (db[0] > 0 and db[1] > 0 and db[2] > 0) or (db[0] < 0 and db[1] < 0 and db[2] < 0):
        return False
    da, nbx, nby, nbz = _plane_sides(V, F, b, a, eps)
    if (da[0] > 0 and da[1] > 0 and da[2] > 0) or (da[0] < 0 and da[1] < 0 and da[2] < 0):
        return False
    if (db[0] == 0.0 and db[1] == 0.0 and db[2] == 0.0) or (da[0] == 0.0 and da[1] == 0.0 and da[2] == 0.0):
        return _coplanar_meet(V, F, a, b, nax, nay, naz)
    # the common line's direction; project onto its largest axis
    lx, ly, lz = nay * nbz - naz * nby, naz * nbx - nax * nbz, nax * nby - nay * nbx
    axis = 0 if abs(lx) >= abs(ly) and abs(lx) >= abs(lz) else (1 if abs(ly) >= abs(lz) else 2)
    a0, a1 = _segment(V, F, a, da, axis)
    b0, b1 = _segment(V, F, b, db, axis)
    return max(a0, b0) <= min(a1, b1)


@njit(cache=True, inline="always")
def _segment(V, F, t, d, axis):
    """Where triangle t crosses the other's plane, as an interval of coordinate ``axis`` along the
    common line: its lone corner (the one on its own side) joined to the other two."""
    if d[0] * d[1] > 0.0:
        i = 2
    elif d[0] * d[2] > 0.0:
        i = 1
    elif d[1] * d[2] > 0.0 or d[0] != 0.0:
        i = 0
    elif d[1] != 0.0:
        i = 1
    else:
        i = 2
    j, k = (i + 1) % 3, (i + 2) % 3
    pi, pj, pk = V[F[t, i], axis], V[F[t, j], axis], V[F[t, k], axis]
    s = pi if d[i] == d[j] else pi + (pj - pi) * d[i] / (d[i] - d[j])
    e = pi if d[i] == d[k] else pi + (pk - pi) * d[i] / (d[i] - d[k])
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
