"""Exact distance by characteristic scan conversion (after Mauch, 2003).

Every point's closest point on a closed, manifold triangle mesh lies on one *feature*: the interior of
a face, the interior of an edge, or a vertex, and the point lies in that feature's characteristic
region, the set of points for which the feature holds a local closest point of the surface:

* face: the infinite prism over the triangle along its normal (both sides);
* edge: the wedge between its two faces' normals on the side where the edge is convex, within the
  slab between its end points;
* vertex: its normal cone, the directions m with m . (x - w) <= 0 for every neighbour x.

Scattering each feature's distance (to a plane, a line or a point) into the voxels of its region and
keeping the minimum gives the exact distance everywhere: the true closest feature covers every voxel,
and every value written is a true distance to a point of the surface, so none is too small.

Each region is a convex polyhedron (half-spaces) swept from its base along rays; it is scanned plane
by plane along the grid axis its rays point along most, each plane's cross-section bounded by where
the base points travel along the rays (linear in the plane index). A region whose rays spread too far
from every axis (a sharp edge or corner) is split into narrower cones, and a sweep stops once it is
provably beaten (see ``scatter``). The work is a plane sweep per region plus a few evaluations per
voxel (counted on the cochlea at 64^3: 4.2, of which 1.6 are stopping checks and 1.5 improve the
voxel), where a nearest-triangle query (sdm._distance_kernel) tests ~190 triangles far from the
surface. A tolerance that only ever enlarges regions absorbs rounding on shared boundaries.

Written with numba because no maintained library scan-converts characteristic regions.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

FACE, EDGE, VERTEX = 0, 1, 2
#: An edge whose dihedral angle, or a vertex whose normal cone, is within this angle (radians, its sine or
#: tangent) of flat has no region: what it leaves uncovered is within 2 * FLAT * distance of its faces'
#: prisms, which the scan's tolerance (``tolerance``) covers everywhere on the grid.
FLAT = 1e-10
#: A vertex whose normal cone is within this angle of a line (a vertex a rounding error off a flat patch)
#: gets two thin square cones around its pseudonormal, one each side, that hold its cone: enlarging a
#: region is safe (a vertex's distance is a true distance) where computing the exact cone from
#: near-parallel edges is not.
NEAR_FLAT = 1e-6
#: So does a vertex whose edges all lie within this (a sine) of its tangent plane, however wide the square
#: cones must be (a vertex a hair off a sliver's long edge): the all-pairs search, whose tolerance is 1e-9,
#: could find rays of its cone on both sides.
LEVEL = 1e-8
#: Every edge's and vertex's rays make at least this cosine with their mean ray (the region is a pointed
#: cone, so the mean and the midpoints that split it are well defined); the scan refuses any other.
POINTED = 1e-3
#: Vertices with more neighbours than this and a fan that is not convex are refused (the all-pairs
#: search for their cone's rays is cubic in the number of neighbours).
MAX_PAIRS = 256
#: Each swept piece's rays make at least this cosine with its sweep axis (at most ~78 degrees);
#: wider regions are split.
WIDE = 0.2
#: The side of a piece that is scanned plane by plane over whole planes.
WHOLE_PLANES = 2
#: Pieces are dealt to threads in runs this long (neighbouring features, so a thread's writes stay local
#: and the two threads seldom write to the same cache lines; 2-7 % faster than runs of 32 on the cochlea
#: and the torus at 64^3), or shorter where that would leave fewer than 8 runs per thread.
CHUNK = 1024
#: The bits of +inf as a float64: a voxel no region has reached yet.
INF_BITS = 0x7FF0000000000000


class Regions(NamedTuple):
    """Every feature's characteristic region (``regions``): faces first, then edges, then vertices."""

    kind: np.ndarray  # (n,) FACE, EDGE or VERTEX
    outside: np.ndarray  # (n,) int8: the side the region lies on, +1 outside, -1 inside, 0 both (a face)
    base: np.ndarray  # (n, 3, 3) mm: a face's corners, an edge's end points, a vertex (in row 0)
    cons_a: np.ndarray  # (c, 3) unit normals of the half-spaces cons_a . x <= cons_b (mm) bounding it,
    cons_b: np.ndarray  # (c,)   feature f's in rows cptr[f]:cptr[f + 1]
    cptr: np.ndarray  # (n + 1,)
    rays: np.ndarray  # (r, 3) unit rays along which it is swept from its base, feature f's in rows
    rptr: np.ndarray  # (n + 1,) rptr[f]:rptr[f + 1] (a face's one ray is its normal)
    bad_vertex: int  # the first vertex and half-edge whose region is not a pointed cone (-1: none);
    bad_edge: int  # the scan cannot sweep those, and their regions are left out


class Pieces(NamedTuple):
    """The swept pieces of every region for one grid (``build_pieces``); the first ``count`` are used."""

    count: int
    feat: np.ndarray  # (p,) the feature each piece sweeps
    axis: np.ndarray  # (p,) the grid axis it is swept along
    side: np.ndarray  # (p,) +1 or -1: the direction along it; WHOLE_PLANES: every plane, whole
    first: np.ndarray  # (p,) the first and the last plane whose cross-section can meet the grid
    last: np.ndarray  # (p,)
    pptr: np.ndarray  # (p + 1,) piece p's corner lines: coef[pptr[p]:pptr[p + 1]]
    coef: np.ndarray  # (l, 4) per corner line (a base point along a ray), its in-plane voxel coordinates
    #                   at plane q as a + b * q: (a_u, b_u, a_w, b_w)


def tolerance(V: np.ndarray, bounds: np.ndarray) -> float:
    """How far (mm) the scan enlarges every region: 1e-9 of the largest coordinate of the mesh and the grid
    (``bounds``), plus 1e-9 mm. It absorbs rounding on shared boundaries and covers what flat edges and
    vertices leave uncovered: within 2 * FLAT * distance of their faces' prisms, and no voxel is farther
    than 2 * sqrt(3) times the largest coordinate from the mesh."""
    return 1e-9 * (max(float(np.abs(V).max()), float(np.abs(bounds).max())) + 1.0)


def half_edge_twins(F: np.ndarray, nv: int) -> np.ndarray | None:
    """For half-edge 3f + c (F[f, c] -> F[f, c+1]) its opposite half-edge, or None when the mesh is
    not closed and consistently oriented (an edge without exactly one opposite partner)."""
    twin, ok = _half_edge_twins(F, nv)
    return twin if ok else None


@njit(cache=True, parallel=True)
def _half_edge_twins(F, nv):
    """half_edge_twins, and whether every half-edge has exactly one partner and no directed edge
    appears twice. Each half-edge looks for its partner among its end vertex's outgoing half-edges."""
    nf = F.shape[0]
    nh = 3 * nf
    src = np.empty(nh, np.int64)
    dst = np.empty(nh, np.int64)
    ptr = np.zeros(nv + 1, np.int64)
    for f in range(nf):
        for c in range(3):
            src[3 * f + c], dst[3 * f + c] = F[f, c], F[f, (c + 1) % 3]
            ptr[F[f, c] + 1] += 1
    for v in range(nv):
        ptr[v + 1] += ptr[v]
    fill = ptr[:-1].copy()
    out = np.empty(nh, np.int64)  # half-edges grouped by their start vertex
    for h in range(nh):
        out[fill[src[h]]] = h
        fill[src[h]] += 1
    twin = np.empty(nh, np.int64)
    bad = np.zeros(nh, np.bool_)
    for h in prange(nh):
        a, b = src[h], dst[h]
        partners, same = 0, 0
        for j in range(ptr[b], ptr[b + 1]):
            if dst[out[j]] == a:
                twin[h] = out[j]
                partners += 1
        for j in range(ptr[a], ptr[a + 1]):
            same += dst[out[j]] == b
        bad[h] = partners != 1 or same != 1
    return twin, not bad.any()


def normals_and_fans(V, F, twin):
    """The face normals and each vertex's fan, or None for a degenerate (zero-area) face or a
    non-manifold vertex (a fan that does not go once around it). Returns (FN, VN, nbr, nptr, vface):
    unit face normals, angle-weighted vertex pseudonormals; each vertex's neighbours
    nbr[nptr[v]:nptr[v+1]] in fan order; a face at each vertex."""
    scale = float(np.ptp(V, axis=0).max()) if len(V) else 0.0
    FN, VN, nbr, nptr, vface, manifold = _normals_and_fans(V, F, twin, 2e-12 * max(scale, 1e-300) ** 2)
    return (FN, VN, nbr, nptr, vface) if manifold else None


@njit(cache=True, parallel=True)
def _normals_and_fans(V, F, twin, min_area2):
    """Unit face normals, angle-weighted vertex pseudonormals, each vertex's neighbours in fan order,
    a face at each vertex, and whether every face has twice its area above ``min_area2`` and every
    vertex's fan goes once around it."""
    nf, nv = F.shape[0], V.shape[0]
    FN = np.empty((nf, 3))
    degenerate = np.zeros(nf, np.bool_)
    for f in prange(nf):
        a, b, c = F[f, 0], F[f, 1], F[f, 2]
        ux, uy, uz = V[b, 0] - V[a, 0], V[b, 1] - V[a, 1], V[b, 2] - V[a, 2]
        vx, vy, vz = V[c, 0] - V[a, 0], V[c, 1] - V[a, 1], V[c, 2] - V[a, 2]
        nx, ny, nz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
        nn = math.sqrt(nx * nx + ny * ny + nz * nz)
        degenerate[f] = nn <= min_area2
        FN[f, 0], FN[f, 1], FN[f, 2] = nx / max(nn, 1e-300), ny / max(nn, 1e-300), nz / max(nn, 1e-300)
    if degenerate.any():
        return FN, np.empty((0, 3)), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64), False

    # vertex fans: walk around each vertex across its outgoing half-edges' twins
    out_h = np.full(nv, -1, np.int64)
    nptr = np.zeros(nv + 1, np.int64)
    for h in range(3 * nf):
        v = F[h // 3, h % 3]
        out_h[v] = h
        nptr[v + 1] += 1
    for v in range(nv):
        nptr[v + 1] += nptr[v]
    nbr = np.empty(nptr[nv], np.int64)
    vface = np.zeros(nv, np.int64)
    VN = np.zeros((nv, 3))
    manifold = np.ones(nv, np.bool_)
    for v in prange(nv):
        h0 = out_h[v]
        if h0 < 0:
            continue
        valence = nptr[v + 1] - nptr[v]
        vface[v] = h0 // 3
        h, n = h0, 0
        while True:
            f, c = h // 3, h % 3
            nbr[nptr[v] + n] = F[f, (c + 1) % 3]
            n += 1
            # corner angle of f at v, for the angle-weighted vertex normal
            p, q = F[f, (c + 1) % 3], F[f, (c + 2) % 3]
            ax, ay, az = V[p, 0] - V[v, 0], V[p, 1] - V[v, 1], V[p, 2] - V[v, 2]
            bx, by, bz = V[q, 0] - V[v, 0], V[q, 1] - V[v, 1], V[q, 2] - V[v, 2]
            cosang = (ax * bx + ay * by + az * bz) / math.sqrt((ax * ax + ay * ay + az * az) * (bx * bx + by * by + bz * bz))
            ang = math.acos(min(1.0, max(-1.0, cosang)))
            for k in range(3):
                VN[v, k] += ang * FN[f, k]
            t = twin[h]  # runs next -> v in the neighbour face; leave v along that face's next edge
            h = 3 * (t // 3) + (t % 3 + 1) % 3
            if h == h0 or n >= valence:
                break
        if n != valence or h != h0:
            manifold[v] = False
    return FN, VN, nbr, nptr, vface, manifold.all()


@njit(cache=True, parallel=True)
def pseudonormals(F, twin, FN, VN):
    """Per face, the pseudonormals of its three edges (the sum of the two faces' normals; edge c runs
    from corner c to c+1) and of its three corners, for nearest-triangle signs: (EN, VNc), (F, 3, 3)."""
    nf = F.shape[0]
    EN = np.empty((nf, 3, 3))
    VNc = np.empty((nf, 3, 3))
    for f in prange(nf):
        for c in range(3):
            g = twin[3 * f + c] // 3
            for k in range(3):
                EN[f, c, k] = FN[f, k] + FN[g, k]
                VNc[f, c, k] = VN[F[f, c], k]
    return EN, VNc


@njit(cache=True, parallel=True)
def regions(V, F, twin, FN, VN, nbr, nptr, vface):
    """The ``Regions`` of every face, convex edge and non-flat vertex of a mesh that normals_and_fans
    accepted. An edge's or a vertex's region lies wholly outside the surface (outside = +1) or wholly
    inside (-1): the segment from the feature to a point whose nearest feature it is crosses no surface,
    and near the feature the side is that of its pseudonormal; a face's region has both sides (0). A
    near-flat vertex (NEAR_FLAT, LEVEL) has two regions, one each side. A region that is not a pointed
    cone (POINTED: a vertex with both +n and -n in its computed cone, a knife edge) is reported in
    bad_vertex or bad_edge and left out."""
    nf, nv = F.shape[0], V.shape[0]

    # --- which edges and vertices have regions, and where each feature's rows go -----------------
    # (each edge is handled by its half-edge with the higher twin; most of those come early, so the
    # loops run over an even spread of half-edges, then over the list of edges, to share the work)
    nh = 3 * nf
    half = (nh + 1) // 2
    esign = np.zeros(nh)  # +1/-1: the side on which the edge is convex; 0: no region
    ebad = np.zeros(nh, np.bool_)
    for i in prange(nh):
        h = i // 2 if i % 2 == 0 else half + i // 2
        if twin[h] > h:
            esign[h] = _edge_side(V, F, FN, twin, h)
            f, g = h // 3, twin[h] // 3
            # the wedge's rays are the two face normals: pointed unless the faces fold onto each other
            ebad[h] = esign[h] != 0.0 and FN[f, 0] * FN[g, 0] + FN[f, 1] * FN[g, 1] + FN[f, 2] * FN[g, 2] < 2.0 * POINTED**2 - 1.0
            if ebad[h]:
                esign[h] = 0.0
    edges = np.empty(nh, np.int64)  # the half-edge of each edge with a region
    ne = 0
    for h in range(nh):
        if esign[h] != 0.0:
            edges[ne] = h
            ne += 1
    # per vertex: its rays (0: no region; -1: a cone the scan cannot sweep) and, for a near-flat one, the
    # half-width of its two square cones (0 for any other)
    vrays = np.zeros(nv, np.int64)
    halfwidth = np.zeros(nv)
    # each vertex's unit edges and (up to one per neighbour, which is all a cone with that many facets
    # has) its cone's rays, in the vertex's slots of its fan; copied into place below
    units = np.empty((nptr[nv], 3))
    vbuf = np.empty((nptr[nv], 3))
    for v in prange(nv):
        s, e = nptr[v], nptr[v + 1]
        _unit_edges(V, v, nbr[s:e], units[s:e])
        eps, t, flat = _near_flat(units[s:e], VN[v, 0], VN[v, 1], VN[v, 2])
        if flat:
            continue
        if t <= NEAR_FLAT or (eps <= LEVEL and t < np.inf):
            b = 2.0 * t + FLAT  # twice the bound, for rounding: enlarging is safe
            # the square cones' corner rays make the cosine 1 / sqrt(1 + 2 b^2) with n: pointed, or refused
            vrays[v], halfwidth[v] = (8, b) if 1.0 + 2.0 * b * b <= POINTED**-2 else (-1, 0.0)
        else:
            vrays[v] = _cone_rays(units[s:e], vbuf[s:e])
    vidx = np.empty(nv, np.int64)
    vcon = np.empty(nv, np.int64)
    vray = np.empty(nv, np.int64)
    nvf, ncv, nrv = 0, 0, 0
    for v in range(nv):
        vidx[v], vcon[v], vray[v] = nvf, ncv, nrv
        if halfwidth[v] > 0.0:
            nvf += 2
            ncv += 8
            nrv += 8
        elif vrays[v] > 0:
            nvf += 1
            ncv += nptr[v + 1] - nptr[v]
            nrv += vrays[v]

    nfeat = nf + ne + nvf
    kind = np.empty(nfeat, np.int64)
    outside = np.zeros(nfeat, np.int8)
    base = np.zeros((nfeat, 3, 3))
    cptr = np.zeros(nfeat + 1, np.int64)
    rptr = np.zeros(nfeat + 1, np.int64)
    cons_a = np.empty((3 * nf + 4 * ne + ncv, 3))
    cons_b = np.empty(3 * nf + 4 * ne + ncv)
    rays = np.empty((nf + 2 * ne + nrv, 3))

    for f in prange(nf):  # faces: the prism's sides face inward (n x (b - a) on a counter-clockwise face)
        kind[f] = FACE
        cptr[f + 1], rptr[f + 1] = 3 * f + 3, f + 1
        for k in range(3):
            for i in range(3):
                base[f, i, k] = V[F[f, i], k]
            rays[f, k] = FN[f, k]
        for c in range(3):
            a, b = F[f, c], F[f, (c + 1) % 3]
            ex, ey, ez = V[b, 0] - V[a, 0], V[b, 1] - V[a, 1], V[b, 2] - V[a, 2]
            mx = FN[f, 1] * ez - FN[f, 2] * ey
            my = FN[f, 2] * ex - FN[f, 0] * ez
            mz = FN[f, 0] * ey - FN[f, 1] * ex
            mn = math.sqrt(mx * mx + my * my + mz * mz)
            row = 3 * f + c
            cons_a[row, 0], cons_a[row, 1], cons_a[row, 2] = -mx / mn, -my / mn, -mz / mn
            cons_b[row] = -(mx * V[a, 0] + my * V[a, 1] + mz * V[a, 2]) / mn

    for e in prange(ne):  # convex edges: the wedge between the face normals, inside the slab
        h = edges[e]
        m, row, ray = nf + e, 3 * nf + 4 * e, nf + 2 * e
        f, c = h // 3, h % 3
        g = twin[h] // 3
        a, b = F[f, c], F[f, (c + 1) % 3]
        kind[m], outside[m] = EDGE, esign[h]  # the wedge lies on the side its rays (normals) point to
        cptr[m + 1], rptr[m + 1] = row + 4, ray + 2
        ux, uy, uz = V[b, 0] - V[a, 0], V[b, 1] - V[a, 1], V[b, 2] - V[a, 2]
        un = math.sqrt(ux * ux + uy * uy + uz * uz)
        ux, uy, uz = ux / un, uy / un, uz / un
        for k in range(3):
            base[m, 0, k] = V[a, k]
            base[m, 1, k] = V[b, k]
            rays[ray, k] = esign[h] * FN[f, k]
            rays[ray + 1, k] = esign[h] * FN[g, k]
        cons_a[row, 0], cons_a[row, 1], cons_a[row, 2] = -ux, -uy, -uz
        cons_b[row] = -(ux * V[a, 0] + uy * V[a, 1] + uz * V[a, 2])
        cons_a[row + 1, 0], cons_a[row + 1, 1], cons_a[row + 1, 2] = ux, uy, uz
        cons_b[row + 1] = ux * V[b, 0] + uy * V[b, 1] + uz * V[b, 2]
        for i in range(2):
            o = F[f, (c + 2) % 3] if i == 0 else F[g, (twin[h] % 3 + 2) % 3]
            wx, wy, wz = _in_face_normal(V, a, o, ux, uy, uz)
            cons_a[row + 2 + i, 0], cons_a[row + 2 + i, 1], cons_a[row + 2 + i, 2] = wx, wy, wz
            cons_b[row + 2 + i] = wx * V[a, 0] + wy * V[a, 1] + wz * V[a, 2]

    for v in prange(nv):  # vertices: the normal cone, {m : m . (x - v) <= 0 for every neighbour x}
        if vrays[v] <= 0:
            continue
        m, row, ray = nf + ne + vidx[v], 3 * nf + 4 * ne + vcon[v], nf + 2 * ne + vray[v]
        if halfwidth[v] > 0.0:
            _square_cones(V, v, VN, halfwidth[v], m, row, ray, kind, outside, base, cons_a, cons_b, cptr, rays, rptr)
            continue
        k = nptr[v + 1] - nptr[v]
        kind[m] = VERTEX
        cptr[m + 1], rptr[m + 1] = row + k, ray + vrays[v]
        unit = units[nptr[v] : nptr[v + 1]]
        if vrays[v] <= k:
            rays[ray : ray + vrays[v]] = vbuf[nptr[v] : nptr[v] + vrays[v]]
        else:  # more rays than slots (near-coincident ones from the all-pairs search): again, in place
            _cone_rays(unit, rays[ray : ray + vrays[v]])
        for q in range(3):
            base[m, 0, q] = V[v, q]
        dot = 0.0  # the side: the cone's mean ray against the vertex's pseudonormal
        for q in range(ray, ray + vrays[v]):
            dot += rays[q, 0] * VN[v, 0] + rays[q, 1] * VN[v, 1] + rays[q, 2] * VN[v, 2]
        outside[m] = 1 if dot > 0.0 else -1
        for q in range(k):
            for d in range(3):
                cons_a[row + q, d] = unit[q, d]
            cons_b[row + q] = unit[q, 0] * V[v, 0] + unit[q, 1] * V[v, 1] + unit[q, 2] * V[v, 2]
    bad_vertex = -1
    for v in range(nv):
        if vrays[v] < 0:
            bad_vertex = v
            break
    bad_edge = -1
    for h in range(nh):
        if ebad[h]:
            bad_edge = h
            break
    return Regions(kind, outside, base, cons_a, cons_b, cptr, rays, rptr, bad_vertex, bad_edge)


@njit(cache=True)
def _square_cones(V, v, VN, b, m, row, ray, kind, outside, base, cons_a, cons_b, cptr, rays, rptr):
    """A near-flat vertex's two regions, features m (outside) and m + 1 (inside): the square cones
    {c (sg n + x s1 + y s2) : |x|, |y| <= b, c >= 0} around its unit pseudonormal n (sg = +1, then -1),
    each bounded by four planes through the vertex with unit normals (+-s_i - b sg n) / sqrt(1 + b^2),
    written without differences of near-equal rays."""
    nn = math.sqrt(VN[v, 0] ** 2 + VN[v, 1] ** 2 + VN[v, 2] ** 2)
    n0, n1, n2 = VN[v, 0] / nn, VN[v, 1] / nn, VN[v, 2] / nn
    s1x, s1y, s1z, s2x, s2y, s2z = _frame(n0, n1, n2)
    inv = 1.0 / math.sqrt(1.0 + b * b)
    for side in range(2):
        sg = 1.0 - 2.0 * side
        f, r0, c0 = m + side, ray + 4 * side, row + 4 * side
        kind[f], outside[f] = VERTEX, 1 if side == 0 else -1
        cptr[f + 1], rptr[f + 1] = c0 + 4, r0 + 4
        for q in range(3):
            base[f, 0, q] = V[v, q]
        for c in range(4):
            x = b if c == 0 or c == 1 else -b  # the corners in turn: (b, b), (b, -b), (-b, -b), (-b, b)
            y = b if c == 0 or c == 3 else -b
            rx, ry, rz = sg * n0 + x * s1x + y * s2x, sg * n1 + x * s1y + y * s2y, sg * n2 + x * s1z + y * s2z
            rn = math.sqrt(rx * rx + ry * ry + rz * rz)
            rays[r0 + c, 0], rays[r0 + c, 1], rays[r0 + c, 2] = rx / rn, ry / rn, rz / rn
            # the sides: +-s1, +-s2
            e = 1.0 if c < 2 else -1.0
            sx, sy, sz = (s1x, s1y, s1z) if c % 2 == 0 else (s2x, s2y, s2z)
            ax, ay, az = (e * sx - b * sg * n0) * inv, (e * sy - b * sg * n1) * inv, (e * sz - b * sg * n2) * inv
            cons_a[c0 + c, 0], cons_a[c0 + c, 1], cons_a[c0 + c, 2] = ax, ay, az
            cons_b[c0 + c] = ax * V[v, 0] + ay * V[v, 1] + az * V[v, 2]


@njit(cache=True, inline="always")
def _frame(n0, n1, n2):
    """Two unit vectors s1, s2 making a right-handed frame with the unit vector n."""
    ax, ay, az = (1.0, 0.0, 0.0) if abs(n0) < 0.6 else (0.0, 1.0, 0.0)
    d = ax * n0 + ay * n1 + az * n2
    ax, ay, az = ax - d * n0, ay - d * n1, az - d * n2
    an = math.sqrt(ax * ax + ay * ay + az * az)
    ax, ay, az = ax / an, ay / an, az / an
    return ax, ay, az, n1 * az - n2 * ay, n2 * ax - n0 * az, n0 * ay - n1 * ax


@njit(cache=True)
def _near_flat(unit, nx, ny, nz):
    """How flat a vertex is, from its unit edges ``unit`` in fan order and its pseudonormal n: (eps, t,
    flat), eps the largest |n . e| over its unit edges e. Its normal cone lies within the angle atan(t) of
    +n or of -n: a direction m = cos(p) n + sin(p) s of the cone (s normal to n) has m . e <= 0 for the
    edge e whose projection normal to n is nearest s in angle, which gives sin(p) mu <= |cos(p)| eps, with
    mu the shortest projection times cos(gap / 2), gap the widest angle between projections next to each
    other around n (t = inf when it is half a turn or more: the fan does not go around n; t = eps, a
    lower bound, when eps is above NEAR_FLAT: most vertices). ``flat``: t and the angle between n and
    every face at the vertex are at most FLAT, so that its faces' prisms cover its cone to within the
    tolerance."""
    nn = math.sqrt(nx * nx + ny * ny + nz * nz)
    if not nn > 0.0:
        return np.inf, np.inf, False
    nx, ny, nz = nx / nn, ny / nn, nz / nn
    k = unit.shape[0]
    eps = 0.0
    for q in range(k):
        eps = max(eps, abs(unit[q, 0] * nx + unit[q, 1] * ny + unit[q, 2] * nz))
    if eps > NEAR_FLAT:
        return eps, eps, False
    s1x, s1y, s1z, s2x, s2y, s2z = _frame(nx, ny, nz)
    pmin = 1.0
    ang = np.empty(k)
    for q in range(k):
        d = unit[q, 0] * nx + unit[q, 1] * ny + unit[q, 2] * nz
        px, py, pz = unit[q, 0] - d * nx, unit[q, 1] - d * ny, unit[q, 2] - d * nz
        pmin = min(pmin, math.sqrt(px * px + py * py + pz * pz))
        ang[q] = math.atan2(px * s2x + py * s2y + pz * s2z, px * s1x + py * s1y + pz * s1z)
    ang.sort()
    gap = ang[0] + 2.0 * math.pi - ang[k - 1]
    for q in range(1, k):
        gap = max(gap, ang[q] - ang[q - 1])
    mu = pmin * math.cos(0.5 * gap)
    if not (gap < math.pi and mu > 0.0):
        return eps, np.inf, False
    t = eps / mu
    if not t <= FLAT:
        return eps, t, False
    for q in range(k):  # the face between neighbours q and q + 1 has the normal e[q + 1] x e[q]
        a, b = (q + 1) % k, q
        cx = unit[a, 1] * unit[b, 2] - unit[a, 2] * unit[b, 1]
        cy = unit[a, 2] * unit[b, 0] - unit[a, 0] * unit[b, 2]
        cz = unit[a, 0] * unit[b, 1] - unit[a, 1] * unit[b, 0]
        cn = math.sqrt(cx * cx + cy * cy + cz * cz)
        if not cn > 1e-5:  # a face whose corner here is too thin to tell its normal: not flat
            return eps, t, False
        sx, sy, sz = cy * nz - cz * ny, cz * nx - cx * nz, cx * ny - cy * nx
        if cx * nx + cy * ny + cz * nz <= 0.0 or math.sqrt(sx * sx + sy * sy + sz * sz) > FLAT * cn:
            return eps, t, False
    return eps, t, True


@njit(cache=True, inline="always")
def _in_face_normal(V, a, o, ux, uy, uz):
    """Unit vector from the edge (through a, direction u) towards the face's opposite corner o,
    normal to the edge."""
    dx, dy, dz = V[o, 0] - V[a, 0], V[o, 1] - V[a, 1], V[o, 2] - V[a, 2]
    s = dx * ux + dy * uy + dz * uz
    dx, dy, dz = dx - s * ux, dy - s * uy, dz - s * uz
    dn = math.sqrt(dx * dx + dy * dy + dz * dz)
    return dx / dn, dy / dn, dz / dn


@njit(cache=True)
def _edge_side(V, F, FN, twin, h):
    """The side of half-edge h (face f, the other face g) on which it is convex: +1 on f's normal side
    (g's far corner lies below f's plane), -1 on the other, 0 when flat (the dihedral angle's sine,
    FN[f] . w with w the unit direction in g normal to the edge, within FLAT of 0). Without roots:
    FN[f] . w = FN[f] . d / |d_perp| for d from the edge to g's far corner."""
    f, c = h // 3, h % 3
    a, b = F[f, c], F[f, (c + 1) % 3]
    o = F[twin[h] // 3, (twin[h] % 3 + 2) % 3]
    ux, uy, uz = V[b, 0] - V[a, 0], V[b, 1] - V[a, 1], V[b, 2] - V[a, 2]
    dx, dy, dz = V[o, 0] - V[a, 0], V[o, 1] - V[a, 1], V[o, 2] - V[a, 2]
    s = FN[f, 0] * dx + FN[f, 1] * dy + FN[f, 2] * dz
    du = dx * ux + dy * uy + dz * uz
    perp2 = dx * dx + dy * dy + dz * dz - du * du / (ux * ux + uy * uy + uz * uz)
    if s * s <= FLAT**2 * perp2:
        return 0.0
    return 1.0 if s < 0.0 else -1.0


@njit(cache=True, inline="always")
def _unit_edges(V, v, nbr, unit):
    """The unit directions from vertex v to its neighbours, into ``unit``."""
    for q in range(len(nbr)):
        dx = V[nbr[q], 0] - V[v, 0]
        dy = V[nbr[q], 1] - V[v, 1]
        dz = V[nbr[q], 2] - V[v, 2]
        dn = math.sqrt(dx * dx + dy * dy + dz * dz)
        unit[q, 0], unit[q, 1], unit[q, 2] = dx / dn, dy / dn, dz / dn


@njit(cache=True)
def _cone_rays(unit, out):
    """Extreme rays of a vertex's normal cone {m : m . e_q <= 0} for its unit edge directions e_q
    (``unit``, in fan order): the cross products of neighbour pairs that meet every constraint. Writes
    them to ``out`` when it has room and returns their count: 0 for an empty cone, -1 for a cone that is
    not pointed (POINTED: one holding a line, which only rounding makes of a vertex that is not near-flat)
    or that would take a search over all pairs of more than MAX_PAIRS neighbours."""
    k = unit.shape[0]
    n = _fan_cone_rays(unit, out)
    if n >= 0:
        return n
    if k > MAX_PAIRS:
        return -1
    n, cx, cy, cz, _ = _pair_rays(unit, out, 0.0, 0.0, 0.0)
    if n == 0:
        return 0
    if n <= out.shape[0]:
        worst = _cone_axis(out[:n])[3]
    else:  # the least cosine of a ray with the mean ray, in a second pass (not every ray is in ``out``)
        cn = math.sqrt(cx * cx + cy * cy + cz * cz)
        worst = _pair_rays(unit, out[:0], cx / cn, cy / cn, cz / cn)[4] if cn > 0.0 else -1.0
    return n if worst >= POINTED else -1


@njit(cache=True)
def _cone_axis(R):
    """A unit direction inside the cone of unit rays R and the least cosine of a ray with it: the mean ray
    or, where some ray makes more than a right angle less POINTED with that, the centre of the smallest
    ball holding the rays (Badoiu & Clarkson's iteration), which is inside any cone less than a half-space."""
    n = R.shape[0]
    cx = cy = cz = 0.0
    for r in range(n):
        cx += R[r, 0]
        cy += R[r, 1]
        cz += R[r, 2]
    worst = -1.0
    cn = math.sqrt(cx * cx + cy * cy + cz * cz)
    if cn > 0.0:
        cx, cy, cz = cx / cn, cy / cn, cz / cn
        worst = _least_cosine(R, cx, cy, cz)
    if worst >= POINTED:
        return cx, cy, cz, worst
    bx, by, bz = R[0, 0], R[0, 1], R[0, 2]
    for it in range(1, 257):
        far, fd = 0, -1.0
        for r in range(n):
            d = (R[r, 0] - bx) ** 2 + (R[r, 1] - by) ** 2 + (R[r, 2] - bz) ** 2
            if d > fd:
                far, fd = r, d
        bx += (R[far, 0] - bx) / (it + 1)
        by += (R[far, 1] - by) / (it + 1)
        bz += (R[far, 2] - bz) / (it + 1)
    bn = math.sqrt(bx * bx + by * by + bz * bz)
    if bn > 0.0 and _least_cosine(R, bx / bn, by / bn, bz / bn) > worst:
        return bx / bn, by / bn, bz / bn, _least_cosine(R, bx / bn, by / bn, bz / bn)
    return cx, cy, cz, worst


@njit(cache=True, inline="always")
def _least_cosine(R, cx, cy, cz):
    worst = 1.0
    for r in range(R.shape[0]):
        worst = min(worst, R[r, 0] * cx + R[r, 1] * cy + R[r, 2] * cz)
    return worst


@njit(cache=True)
def _pair_rays(unit, out, mx, my, mz):
    """The cone's rays from all pairs of neighbours, into ``out`` while it has room: (count, their sum,
    the least cosine of one with the unit vector m). A ray equal to one of the first k written (to
    rounding: coplanar neighbours give the same ray from many pairs) is not counted again, so that the
    mean ray is the cone's, not weighted by repeats; the first k are the same however large ``out``."""
    k = unit.shape[0]
    n = 0
    cx = cy = cz = 0.0
    worst = 1.0
    for i in range(k):
        for j in range(i + 1, k):
            r0, r1, r2, rn = _pair_normal(unit, i, j)
            if rn <= 1e-12:
                continue
            for sg in (1.0, -1.0):
                ok = True
                for q in range(k):
                    if sg * (r0 * unit[q, 0] + r1 * unit[q, 1] + r2 * unit[q, 2]) > 1e-9:
                        ok = False
                        break
                for q in range(min(n, k, out.shape[0])):
                    if ok and (out[q, 0] - sg * r0) ** 2 + (out[q, 1] - sg * r1) ** 2 + (out[q, 2] - sg * r2) ** 2 <= 1e-24:
                        ok = False
                if ok:
                    if n < out.shape[0]:
                        out[n, 0], out[n, 1], out[n, 2] = sg * r0, sg * r1, sg * r2
                    cx, cy, cz = cx + sg * r0, cy + sg * r1, cz + sg * r2
                    worst = min(worst, sg * (r0 * mx + r1 * my + r2 * mz))
                    n += 1
    return n, cx, cy, cz, worst


@njit(cache=True, inline="always")
def _pair_normal(unit, i, j):
    """unit[i] x unit[j], normalised, and its length before (<= 1e-12: the two edges are parallel and
    the normal is meaningless)."""
    r0 = unit[i, 1] * unit[j, 2] - unit[i, 2] * unit[j, 1]
    r1 = unit[i, 2] * unit[j, 0] - unit[i, 0] * unit[j, 2]
    r2 = unit[i, 0] * unit[j, 1] - unit[i, 1] * unit[j, 0]
    rn = math.sqrt(r0 * r0 + r1 * r1 + r2 * r2)
    if rn <= 1e-12:
        return r0, r1, r2, rn
    return r0 / rn, r1 / rn, r2 / rn, rn


@njit(cache=True)
def _fan_cone_rays(unit, out):
    """_cone_rays' common case in O(k^2): when every pair of neighbours adjacent in the fan spans a
    plane with all the others on one side, the same side for all, the cone's extreme rays are those
    planes' normals (the fan is a convex cone whose facets are the adjacent pairs). -1 otherwise, or
    when the rays do not form a pointed cone."""
    k = unit.shape[0]
    n = 0
    side = 0.0
    cx = cy = cz = 0.0
    for i in range(k):
        r0, r1, r2, rn = _pair_normal(unit, i, (i + 1) % k)
        if rn <= 1e-12:
            return -1
        above = below = False
        for q in range(k):
            t = r0 * unit[q, 0] + r1 * unit[q, 1] + r2 * unit[q, 2]
            above = above or t > 1e-9
            below = below or t < -1e-9
        if above == below:  # neighbours on both sides, or all in the plane (a flat fan)
            return -1
        sg = -1.0 if above else 1.0
        if side != 0.0 and sg != side:
            return -1
        side = sg
        if n < out.shape[0]:
            out[n, 0], out[n, 1], out[n, 2] = sg * r0, sg * r1, sg * r2
        cx, cy, cz = cx + sg * r0, cy + sg * r1, cz + sg * r2
        n += 1
    cn = math.sqrt(cx * cx + cy * cy + cz * cz)
    if not cn > 0.0:
        return -1
    for i in range(k):  # a pointed cone, or the all-pairs search decides
        r0, r1, r2, _ = _pair_normal(unit, i, (i + 1) % k)
        if not side * (r0 * cx + r1 * cy + r2 * cz) >= POINTED * cn:
            return -1
    return n


@njit(cache=True, inline="always")
def _in_plane(a):
    """The two grid axes normal to axis a, the one with the smaller memory stride last."""
    if a == 0:
        return 1, 2
    if a == 1:
        return 0, 2
    return 0, 1


@njit(cache=True, inline="always")
def _best_axis(R, n, two_sided):
    """The axis and direction along which rays R[:n] point most: (cosine of the worst ray, axis, side)."""
    best, ba, bs = -2.0, 0, 1
    for a in range(3):
        for sg in (1, -1):
            worst = 2.0
            for r in range(n):
                worst = min(worst, abs(R[r, a]) if two_sided else sg * R[r, a])
            if worst > best:
                best, ba, bs = worst, a, sg
    return best, ba, bs


@njit(cache=True)
def build_pieces(origin, spacing, shape, reg, tol):
    """The ``Pieces`` that sweep the regions ``reg`` on this grid. A region whose rays fit within one
    axis's cone is one piece (all of those first, in parallel); a wider one is split into cones of at most
    three rays (the regions are pointed cones, so the ray inside each that it is fanned from and the
    midpoints it is split at are well defined)."""
    kind, base, rays, rptr = reg.kind, reg.base, reg.rays, reg.rptr
    nfeat = len(kind)
    pc, narrow, fa = _narrow_pieces(origin, spacing, shape, reg, tol)
    np_, npt = pc.count, pc.pptr[pc.count]
    B = np.empty((3, 3))
    stack = np.empty((256, 3, 3))
    sn = np.empty(256, np.int64)
    R = np.empty((3, 3))
    for f in range(nfeat):
        if narrow[f]:
            continue
        nb = 3 - kind[f] if kind[f] < VERTEX else 1
        for i in range(nb):
            for k in range(3):
                B[i, k] = base[f, i, k]
        nr = rptr[f + 1] - rptr[f]
        sp = 0
        if nr <= 3:
            for r in range(nr):
                for k in range(3):
                    stack[sp, r, k] = rays[rptr[f] + r, k]
            sn[sp] = nr
            sp += 1
        else:  # fan the cone from a ray inside it, rays ordered by angle around it
            cx, cy, cz, _ = _cone_axis(rays[rptr[f] : rptr[f + 1]])
            ex, ey, ez = (1.0, 0.0, 0.0) if abs(cx) < 0.9 else (0.0, 1.0, 0.0)
            d = ex * cx + ey * cy + ez * cz
            ex, ey, ez = ex - d * cx, ey - d * cy, ez - d * cz
            en = math.sqrt(ex * ex + ey * ey + ez * ez)
            ex, ey, ez = ex / en, ey / en, ez / en
            gx, gy, gz = cy * ez - cz * ey, cz * ex - cx * ez, cx * ey - cy * ex
            ang = np.empty(nr)
            for r in range(nr):
                q = rptr[f] + r
                ang[r] = math.atan2(rays[q, 0] * gx + rays[q, 1] * gy + rays[q, 2] * gz,
                                    rays[q, 0] * ex + rays[q, 1] * ey + rays[q, 2] * ez)
            order = np.argsort(ang)
            for r in range(min(nr, 128)):
                q1, q2 = rptr[f] + order[r], rptr[f] + order[(r + 1) % nr]
                stack[sp, 0, 0], stack[sp, 0, 1], stack[sp, 0, 2] = cx, cy, cz
                for k in range(3):
                    stack[sp, 1, k] = rays[q1, k]
                    stack[sp, 2, k] = rays[q2, k]
                sn[sp] = 3
                sp += 1
            if nr > 128:  # too many rays to fan here: sweep whole planes instead
                sp = 0
                pc = _grow(pc, np_, npt, 0)
                npt, planes = _corners(origin, spacing, shape, B, nb, R[:0], fa[f], WHOLE_PLANES, tol, pc.coef, npt)
                _record(pc.feat, pc.axis, pc.side, pc.first, pc.last, pc.pptr, np_, f, fa[f], WHOLE_PLANES, planes, npt)
                np_ += 1
        while sp > 0:
            sp -= 1
            n = sn[sp]
            for r in range(n):
                for k in range(3):
                    R[r, k] = stack[sp, r, k]
            best, a, s = _best_axis(R, n, False)
            if best < WIDE and sp + 4 <= stack.shape[0]:
                # split at the normalised midpoints of the cone's edges
                if n == 2:
                    mx, my, mz = R[0, 0] + R[1, 0], R[0, 1] + R[1, 1], R[0, 2] + R[1, 2]
                    mn = math.sqrt(mx * mx + my * my + mz * mz)
                    for half in range(2):
                        for k in range(3):
                            stack[sp, 0, k] = R[half, k]
                        stack[sp, 1, 0], stack[sp, 1, 1], stack[sp, 1, 2] = mx / mn, my / mn, mz / mn
                        sn[sp] = 2
                        sp += 1
                else:
                    M = np.empty((3, 3))
                    for e in range(3):
                        i, j = e, (e + 1) % 3
                        mx, my, mz = R[i, 0] + R[j, 0], R[i, 1] + R[j, 1], R[i, 2] + R[j, 2]
                        mn = math.sqrt(mx * mx + my * my + mz * mz)
                        M[e, 0], M[e, 1], M[e, 2] = mx / mn, my / mn, mz / mn
                    for e in range(3):  # three corner triangles and the middle one
                        for k in range(3):
                            stack[sp, 0, k] = R[e, k]
                            stack[sp, 1, k] = M[e, k]
                            stack[sp, 2, k] = M[(e + 2) % 3, k]
                        sn[sp] = 3
                        sp += 1
                    for e in range(3):
                        for k in range(3):
                            stack[sp, e, k] = M[e, k]
                    sn[sp] = 3
                    sp += 1
                continue
            pc = _grow(pc, np_, npt, nb * n)
            if best < WIDE:  # no room left to split: sweep whole planes (slow but exact)
                s, n = WHOLE_PLANES, 0
            npt, planes = _corners(origin, spacing, shape, B, nb, R[:n], a, s, tol, pc.coef, npt)
            _record(pc.feat, pc.axis, pc.side, pc.first, pc.last, pc.pptr, np_, f, a, s, planes, npt)
            np_ += 1
    return Pieces(np_, pc.feat, pc.axis, pc.side, pc.first, pc.last, pc.pptr, pc.coef)


@njit(cache=True, parallel=True)
def _narrow_pieces(origin, spacing, shape, reg, tol):
    """The one piece of every region that fits within one axis's cone (two for a face's prism), with room
    for the wide ones' pieces after them: (pieces, which regions are narrow, each one's sweep axis)."""
    kind, base, rays, rptr = reg.kind, reg.base, reg.rays, reg.rptr
    nfeat = len(kind)
    fa = np.empty(nfeat, np.int64)
    fs = np.empty(nfeat, np.int64)
    narrow = np.empty(nfeat, np.bool_)
    npc = np.zeros(nfeat + 1, np.int64)  # narrow pieces before each feature
    npts = np.zeros(nfeat + 1, np.int64)  # their corner lines
    for f in prange(nfeat):
        nr = rptr[f + 1] - rptr[f]
        best, a, s = _best_axis(rays[rptr[f] : rptr[f + 1]], nr, kind[f] == FACE)
        fa[f], fs[f] = a, (0 if kind[f] == FACE else s)
        narrow[f] = best >= WIDE
        if narrow[f]:
            npc[f + 1] = 2 if kind[f] == FACE else 1
            npts[f + 1] = 6 if kind[f] == FACE else (2 if kind[f] == EDGE else 1) * nr
    nwide = 0
    for f in range(nfeat):
        npc[f + 1] += npc[f]
        npts[f + 1] += npts[f]
        nwide += not narrow[f]
    cap = npc[nfeat] + 16 * nwide + 64
    feat, axis, side = np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int64)
    first, last = np.empty(cap, np.int64), np.empty(cap, np.int64)
    pptr, coef = np.zeros(cap + 1, np.int64), np.empty((npts[nfeat] + 96 * nwide + 64, 4))
    for f in prange(nfeat):
        if not narrow[f]:
            continue
        nb = 3 - kind[f] if kind[f] < VERTEX else 1
        B = base[f]
        R = rays[rptr[f] : rptr[f + 1]]
        npt = npts[f]
        for half in range(npc[f + 1] - npc[f]):  # a face's prism has two halves, each swept away from it
            s = (1 if half == 0 else -1) if kind[f] == FACE else fs[f]
            npt, planes = _corners(origin, spacing, shape, B, nb, R, fa[f], s, tol, coef, npt)
            _record(feat, axis, side, first, last, pptr, npc[f] + half, f, fa[f], s, planes, npt)
    return Pieces(npc[nfeat], feat, axis, side, first, last, pptr, coef), narrow, fa


@njit(cache=True)
def _grow(pc, used, npt, extra):
    """``pc`` (``used`` pieces, ``npt`` corner lines written) with room for one more piece with ``extra``
    corner lines: the same arrays, or larger copies."""
    feat, axis, side, first, last, pptr, coef = pc.feat, pc.axis, pc.side, pc.first, pc.last, pc.pptr, pc.coef
    if used + 1 >= feat.shape[0]:
        cap = 2 * feat.shape[0]
        feat2, axis2, side2 = np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int64)
        first2, last2, pptr2 = np.empty(cap, np.int64), np.empty(cap, np.int64), np.zeros(cap + 1, np.int64)
        feat2[:used], axis2[:used], side2[:used] = feat[:used], axis[:used], side[:used]
        first2[:used], last2[:used], pptr2[: used + 1] = first[:used], last[:used], pptr[: used + 1]
        feat, axis, side, first, last, pptr = feat2, axis2, side2, first2, last2, pptr2
    if npt + extra >= coef.shape[0]:
        coef2 = np.empty((2 * coef.shape[0] + extra, 4))
        coef2[:npt] = coef[:npt]
        coef = coef2
    return Pieces(used, feat, axis, side, first, last, pptr, coef)


@njit(cache=True, inline="always")
def _corners(origin, spacing, shape, B, nb, R, a, s, tol, coef, npt):
    """The corner lines of a piece swept along axis a (side s) from base points B[:nb] along rays R, into
    ``coef`` from row ``npt``, and the planes from the base onward whose cross-section can meet the grid:
    (the next free row, (first plane, last plane))."""
    ua, wa = _in_plane(a)
    lo_a, hi_a = np.inf, -np.inf
    k0 = npt
    iu, iw = 1.0 / spacing[ua], 1.0 / spacing[wa]  # divisions are the cost here: one per corner line
    for i in range(nb):
        lo_a = min(lo_a, B[i, a])
        hi_a = max(hi_a, B[i, a])
        for r in range(R.shape[0]):
            # corner at plane q: B_i + t R_r with t = (origin_a + q h_a - B_ia) / R_ra, in voxel units
            ir = 1.0 / R[r, a]
            k = spacing[a] * ir
            t0 = (origin[a] - B[i, a]) * ir
            coef[npt, 0] = (B[i, ua] + t0 * R[r, ua] - origin[ua]) * iu
            coef[npt, 1] = k * R[r, ua] * iu
            coef[npt, 2] = (B[i, wa] + t0 * R[r, wa] - origin[wa]) * iw
            coef[npt, 3] = k * R[r, wa] * iw
            npt += 1
    lo, hi = 0.0, float(shape[a] - 1)
    if s > 0 and s != WHOLE_PLANES:
        lo = max(lo, (lo_a - tol - origin[a]) / spacing[a])
    elif s < 0:
        hi = min(hi, (hi_a + tol - origin[a]) / spacing[a])
    # keep the planes where the cross-section's box can meet the grid: for each in-plane axis, some
    # corner at or above the first voxel (c0) and some at or below the last (c1): hulls of unions of
    # half-lines, each corner line crossing c0 and c1 at planes (c - al) / be
    for col in (0, 2):
        t = tol * (iu if col == 0 else iw)
        c0 = -t
        c1 = (shape[ua] if col == 0 else shape[wa]) - 1 + t
        lo0, hi0, lo1, hi1 = np.inf, -np.inf, np.inf, -np.inf
        for k in range(k0, npt):
            al, be = coef[k, col], coef[k, col + 1]
            if be > 0.0:
                ib = 1.0 / be
                lo0, hi0 = min(lo0, (c0 - al) * ib), np.inf
                lo1, hi1 = -np.inf, max(hi1, (c1 - al) * ib)
            elif be < 0.0:
                ib = 1.0 / be
                lo0, hi0 = -np.inf, max(hi0, (c0 - al) * ib)
                lo1, hi1 = min(lo1, (c1 - al) * ib), np.inf
            else:
                if al >= c0:
                    lo0, hi0 = -np.inf, np.inf
                if al <= c1:
                    lo1, hi1 = -np.inf, np.inf
        if npt > k0:
            lo, hi = max(lo, lo0 - 1e-9, lo1 - 1e-9), min(hi, hi0 + 1e-9, hi1 + 1e-9)
    return npt, _span(lo, hi, shape[a])


@njit(cache=True, inline="always")
def _record(feat, axis, side, first, last, pptr, p, f, a, s, planes, npt):
    """Piece p: feature f swept along axis a (side s) over ``planes`` (first, last), its corner lines
    ending at row npt. (Arrays, not a Pieces: numba drops what a function inlined into a parallel loop
    writes through a tuple's arrays.)"""
    feat[p], axis[p], side[p] = f, a, s
    first[p], last[p] = planes
    pptr[p + 1] = npt


@njit(cache=True, inline="always")
def _span(lo, hi, n):
    """The first and last of the indices 0..n-1 within [lo, hi] (last < first: none, as for NaN bounds).
    The bounds are clamped to the grid before they become integers, so that no loop's count comes from
    an unbounded quotient."""
    lo, hi = max(lo, 0.0), min(hi, n - 1.0)
    if not lo <= hi:
        return 0, -1
    return int(math.ceil(lo)), int(math.floor(hi))


@intrinsic
def _cas(typingctx, arr, idx, old, new):
    """Atomic compare-and-swap of arr[idx] (int64): writes ``new`` if it holds ``old``; returns what it
    held. By hand because numba has no atomics."""
    sig = types.int64(arr, types.intp, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ary_t = signature.args[0]
        ary = context.make_array(ary_t)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, ary_t, ary, [args[1]])
        return builder.extract_value(builder.cmpxchg(ptr, args[2], args[3], "monotonic", "monotonic"), 0)

    return sig, codegen


def _bitcast(src, dst):
    """An intrinsic that reads a ``src`` scalar's bits as a ``dst`` (numba has no scalar view)."""

    @intrinsic
    def cast(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(dst))

        return dst(src), codegen

    return cast


_bits = _bitcast(types.float64, types.int64)  # for x >= 0, ordered as x is
_float = _bitcast(types.int64, types.float64)


@njit(cache=True, inline="always")
def _atomic_min(arr, i, key):
    """arr[i] = min(arr[i], key), atomically; whether key won."""
    cur = arr[i]
    while key < cur:
        found = _cas(arr, i, cur, key)
        if found == cur:
            return True
        cur = found
    return False


@njit(cache=True)
def scatter(origin, spacing, shape, reg, pc, tol, nthreads, band=3, check_every=4):
    """Per voxel, its squared distance to the nearest feature with that feature in the lowest bits
    (``distances`` reads it; every feature bit set where no region reached).

    Two passes: every piece first sweeps the planes within ``band`` of its base, which makes the
    distance exact near the whole surface; then the rest, away from the base, stopping once a whole
    cross-section is beaten. Along each ray of a region the feature's distance grows at rate 1 and the
    true distance at most at rate 1, so a ray that loses by a margin loses for good; a cross-section
    loses when every voxel within r (half an in-plane voxel diagonal) of it has a known distance more
    than 2r below the feature's (checked at the first plane past the band, then every ``check_every``
    planes while the piece wins no voxel: checking at once ends most losing sweeps after one plane).

    Threads take runs of (at most) CHUNK pieces in turn and share one array: each voxel holds its
    squared distance's float64 bits with the lowest bits (``_feature_mask``) replaced by the feature,
    so the least integer is the nearest feature (to 2^(bits - 52) of its squared distance: 2^-35 on
    the cochlea; ties go to the lower feature); it is lowered by an atomic compare-and-swap, and read
    with every feature bit set (an upper bound) by the stopping checks. Every thread sees every value
    written, so a piece stops as early as it would on one thread (dealing planes to threads instead
    did 25 % more work on two)."""
    nx, ny, nz = shape
    lmask = _feature_mask(len(reg.kind))
    key = np.full(nx * ny * nz, INF_BITS | lmask, np.int64)
    maxc = 1
    for f in range(len(reg.kind)):
        maxc = max(maxc, reg.cptr[f + 1] - reg.cptr[f])
    maxl = 1
    for p in range(pc.count):
        maxl = max(maxl, pc.pptr[p + 1] - pc.pptr[p])
    # per sweep axis: the tolerance and the check radius r (half an in-plane voxel diagonal), in mm and
    # in voxels of each in-plane axis: (tu, tw, r, ru, rw)
    per_axis = np.empty((3, 5))
    for a in range(3):
        ua, wa = _in_plane(a)
        hu, hw = spacing[ua], spacing[wa]
        r = 0.5 * math.sqrt(hu * hu + hw * hw)
        per_axis[a, 0], per_axis[a, 1], per_axis[a, 2], per_axis[a, 3], per_axis[a, 4] = tol / hu, tol / hw, r, r / hu, r / hw
    _sweep_all(origin, spacing, shape, per_axis, tol, lmask, band, check_every, nthreads, maxc, maxl, key,
               reg.kind, reg.outside, reg.base, reg.cons_a, reg.cons_b, reg.cptr, reg.rays, reg.rptr,
               pc.count, pc.feat, pc.axis, pc.side, pc.first, pc.last, pc.pptr, pc.coef)
    return key.reshape(shape)


@njit(cache=True, parallel=True)
def _sweep_all(origin, spacing, shape, per_axis, tol, lmask, band, check_every, nthreads, maxc, maxl, key,
               kind, outside, base, cons_a, cons_b, cptr, rays, rptr, npiece, feat, axis, side, first, last, pptr, coef):
    """scatter's threads: each takes runs of (at most) CHUNK pieces in turn and sweeps them with its own
    scratch space, the planes near the bases first, then the rest. The arrays come one by one (numba
    mishandles tuples of arrays in parallel loops), and each piece is swept in place in the loop: moved
    into a function of its own, inlined or not, the sweep ran slower."""
    run = max(1, min(CHUNK, npiece // (8 * nthreads)))
    nchunk = (npiece + run - 1) // run
    nx, ny, nz = shape
    strides = (ny * nz, nz, 1)
    for stage in range(2):
        for th in prange(nthreads):
            inv = np.empty(maxc)  # per constraint of the piece: 1 / (its w coefficient), and its
            prhs = np.empty(maxc)  # right-hand side without the u term, per plane
            cuv = np.empty(maxc)  # and its u coefficient
            # per ray of the piece: its corner lines' least and greatest u and w offsets and their
            # common slopes (a line per base point and ray; the base points' lines along one ray are
            # parallel), so a plane's cross-section box costs one line per ray
            box = np.empty((maxl, 6))
            for ch in range(th, nchunk, nthreads):
                for p in range(ch * run, min(npiece, ch * run + run)):
                    sp = side[p]
                    if sp == WHOLE_PLANES and stage == 1:
                        continue
                    a = axis[p]
                    ua, wa = _in_plane(a)
                    nu, nw = shape[ua], shape[wa]
                    oa, ou, ow = origin[a], origin[ua], origin[wa]
                    ha, hu, hw = spacing[a], spacing[ua], spacing[wa]
                    sa, su, sw = strides[a], strides[ua], strides[wa]
                    tu, tw, r, ru, rw = per_axis[a, 0], per_axis[a, 1], per_axis[a, 2], per_axis[a, 3], per_axis[a, 4]
                    f = feat[p]
                    kf = kind[f]
                    c0, c1 = cptr[f], cptr[f + 1]
                    k0, k1 = pptr[p], pptr[p + 1]
                    # the feature in sweep coordinates (a, u, w): a point on it and, for a face, its
                    # unit normal or, for an edge, its direction (with 1 / its squared length)
                    ba, bu, bw = base[f, 0, a], base[f, 0, ua], base[f, 0, wa]
                    if kf == FACE:
                        ea, eu_, ew_ = rays[rptr[f], a], rays[rptr[f], ua], rays[rptr[f], wa]
                        einv = 1.0
                    elif kf == EDGE:
                        ea, eu_, ew_ = base[f, 1, a] - ba, base[f, 1, ua] - bu, base[f, 1, wa] - bw
                        einv = 1.0 / (ea * ea + eu_ * eu_ + ew_ * ew_)
                    else:
                        ea = eu_ = ew_ = 0.0
                        einv = 1.0
                    dw0 = ow - bw  # w offset of the row's first voxel
                    # the last plane the base reaches, in the sweep direction
                    nb = 3 - kf if kf < VERTEX else 1
                    edge_a = base[f, 0, a]
                    for i in range(1, nb):
                        edge_a = max(edge_a, base[f, i, a]) if sp >= 0 else min(edge_a, base[f, i, a])
                    step = -1 if sp == -1 else 1
                    # (clamped to the planes of the grid and the band beyond before it becomes an integer)
                    qlim = min(max((edge_a - oa) / ha, -band - 2.0), shape[a] + band + 2.0)
                    qlim = int(math.floor(qlim + tol / ha)) + 1 if step > 0 else int(math.ceil(qlim - tol / ha)) - 1
                    lo, hi = max(first[p], 0), min(last[p], shape[a] - 1)
                    if sp != WHOLE_PLANES:
                        if step > 0:
                            if stage == 0:
                                hi = min(hi, qlim + band)
                            else:
                                lo = max(lo, qlim + band + 1)
                        else:
                            if stage == 0:
                                lo = max(lo, qlim - band)
                            else:
                                hi = min(hi, qlim - band - 1)
                    if lo > hi:
                        continue
                    nr = (k1 - k0) // nb
                    for rr in range(nr):
                        k = k0 + rr
                        box[rr, 0], box[rr, 1], box[rr, 2] = coef[k, 0], coef[k, 0], coef[k, 1]
                        box[rr, 3], box[rr, 4], box[rr, 5] = coef[k, 2], coef[k, 2], coef[k, 3]
                        for i in range(1, nb):
                            k += nr
                            box[rr, 0], box[rr, 1] = min(box[rr, 0], coef[k, 0]), max(box[rr, 1], coef[k, 0])
                            box[rr, 3], box[rr, 4] = min(box[rr, 3], coef[k, 2]), max(box[rr, 4], coef[k, 2])
                    for c in range(c0, c1):
                        A = cons_a[c, wa] * hw
                        inv[c - c0] = 1.0 / A if abs(A) > 1e-300 else 0.0
                        cuv[c - c0] = cons_a[c, ua]
                    q = lo if step > 0 else hi
                    countdown = 1  # the first check comes at the first plane past the band
                    won = False  # whether the piece won a voxel since the last check
                    while lo <= q <= hi:
                        qq = q
                        q += step
                        check = False
                        if stage == 1:
                            countdown -= 1
                            if countdown == 0:
                                countdown = check_every
                                check = not won  # while it still wins, there is no point proving it lost
                                won = False
                        if sp == WHOLE_PLANES:
                            u0, u1, w0, w1 = 0, nu - 1, 0, nw - 1
                        else:
                            mnu, mxu, mnw, mxw = np.inf, -np.inf, np.inf, -np.inf
                            for rr in range(nr):
                                gu, gw = box[rr, 2] * qq, box[rr, 5] * qq
                                mnu, mxu = min(mnu, box[rr, 0] + gu), max(mxu, box[rr, 1] + gu)
                                mnw, mxw = min(mnw, box[rr, 3] + gw), max(mxw, box[rr, 4] + gw)
                            eu, ew = (ru, rw) if check else (tu, tw)
                            if check and (mnu - eu < 0 or mnw - ew < 0 or mxu + eu > nu - 1 or mxw + ew > nw - 1):
                                check = False  # part of the cross-section is near the grid's side
                                eu, ew = tu, tw
                            if mxu < -eu or mxw < -ew or mnu > nu - 1 + eu or mnw > nw - 1 + ew:
                                continue
                            u0, u1 = _span(mnu - eu, mxu + eu, nu)
                            if u0 > u1:
                                continue  # no voxel centre in this plane's cross-section (most planes of thin prisms)
                            w0, w1 = _span(mnw - ew, mxw + ew, nw)
                            if w0 > w1:
                                continue
                        beaten = True
                        qa = oa + qq * ha
                        for c in range(c0, c1):
                            prhs[c - c0] = cons_b[c] + tol - cons_a[c, a] * qa - cons_a[c, wa] * ow
                        da = qa - ba
                        for iu in range(u0, u1 + 1):
                            pu = ou + iu * hu
                            du = pu - bu
                            # the feature's squared distance along the row, as a function of dw only
                            h0 = da * ea + du * eu_ + dw0 * ew_  # face: signed distance at iw = 0
                            r2 = da * da + du * du  # vertex
                            x3 = da * eu_ - du * ea  # edge: the cross product's w-free component
                            chk = check and beaten  # once the check has failed, rows go back to the region only
                            # the row's voxels inside every half-space (and within r of them): w intervals
                            lo_w, hi_w = float(w0), float(w1)
                            lo_r, hi_r = float(w0), float(w1)
                            for c in range(c0, c1):
                                rhs = prhs[c - c0] - cuv[c - c0] * pu
                                iA = inv[c - c0]
                                if iA > 0.0:
                                    hi_w = min(hi_w, rhs * iA)
                                    if chk:
                                        hi_r = min(hi_r, (rhs + r) * iA)
                                elif iA < 0.0:
                                    lo_w = max(lo_w, rhs * iA)
                                    if chk:
                                        lo_r = max(lo_r, (rhs + r) * iA)
                                else:
                                    if rhs < 0.0:
                                        hi_w = -1.0
                                    if rhs + r < 0.0:
                                        hi_r = -1.0
                                if not chk and lo_w > hi_w:
                                    break
                            if not chk:
                                lo_r, hi_r = lo_w, hi_w
                            base_idx = qq * sa + iu * su
                            i0, i1 = _span(lo_r, hi_r, nw)  # a near-zero coefficient makes huge bounds
                            for iw in range(i0, i1 + 1):
                                inside = lo_w <= iw <= hi_w
                                if not inside and not beaten:
                                    continue
                                dw = dw0 + iw * hw
                                if kf == FACE:
                                    h = h0 + iw * hw * ew_
                                    d = h * h
                                elif kf == VERTEX:
                                    d = r2 + dw * dw
                                else:
                                    x1 = du * ew_ - dw * eu_
                                    x2 = dw * ea - da * ew_
                                    d = (x1 * x1 + x2 * x2 + x3 * x3) * einv
                                idx = base_idx + iw * sw
                                if chk and beaten:
                                    cur = key[idx]  # with every feature bit set: an upper bound of its distance
                                    if cur >= INF_BITS or math.sqrt(d) - math.sqrt(_float(cur | lmask)) <= 2.0 * r:
                                        beaten = False
                                if inside and _atomic_min(key, idx, (_bits(d) & ~lmask) | f):
                                    won = True
                        if check and beaten:
                            break


@njit(cache=True, inline="always")
def _feature_mask(nfeat):
    """The key's lowest bits that hold the feature: enough for every feature and one more (all set)."""
    bits = 1
    while (1 << bits) - 1 <= nfeat:
        bits += 1
    return (1 << bits) - 1


@njit(cache=True, parallel=True)
def distances(origin, spacing, key, reg, signed):
    """The scan's result from scatter's key: each voxel's exact distance to its nearest feature (the
    face's plane, the edge's line or the vertex), negative inside when ``signed``, float32; NaN where
    no region reached (never seen on a closed manifold mesh; the caller redoes those). The side is the
    feature's (see ``regions``) or, for a face, that of its normal."""
    kind, outside, base, rays, rptr = reg.kind, reg.outside, reg.base, reg.rays, reg.rptr
    nx, ny, nz = key.shape
    lmask = _feature_mask(len(kind))
    out = np.empty((nx, ny, nz), np.float32)
    for i in prange(nx):
        px = origin[0] + i * spacing[0]
        for j in range(ny):
            py = origin[1] + j * spacing[1]
            for k in range(nz):
                f = key[i, j, k] & lmask
                if f == lmask:
                    out[i, j, k] = np.nan
                    continue
                d = math.sqrt(_float(key[i, j, k] & ~lmask))
                if signed:
                    s = outside[f]
                    if s == 0:
                        n = rays[rptr[f]]
                        pz = origin[2] + k * spacing[2]
                        h = (px - base[f, 0, 0]) * n[0] + (py - base[f, 0, 1]) * n[1] + (pz - base[f, 0, 2]) * n[2]
                        s = 1 if h >= 0.0 else -1
                    if s < 0:
                        d = -d
                out[i, j, k] = d
    return out
