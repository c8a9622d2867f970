import math
import os
import warnings

import igl
import numpy as np
import pytest
import trimesh

import sdmnn
from sdmnn import Grid, MeshError, MeshWarning, exact_sdm
from sdmnn.shapes.torus import RESOLUTION


def chord_error(torus, params, resolution):
    """Largest distance between the polygonal torus and the smooth one (the sagitta of its chords)."""
    R, r = params["R"], params["r"]
    sections, points = resolution
    return r * (1 - math.cos(math.pi / points)) + (R + r) * (1 - math.cos(math.pi / sections))


def test_exact_sdm_matches_the_analytic_torus_up_to_the_mesh_chords(torus):
    params = torus.defaults
    sdm = exact_sdm(torus.mesh(params), torus.grid)
    truth = torus.analytic_sdf(params, torus.grid)
    err = np.abs(sdm - truth).max()
    assert err <= chord_error(torus, params, RESOLUTION) + 1e-5
    # and the error shrinks with a finer mesh: it is the mesh, not the distance computation
    finer = exact_sdm(torus.mesh(params, resolution=(512, 128)), torus.grid)
    assert np.abs(finer - truth).max() < err / 3


def test_exact_sdm_matches_libigl_on_the_cochlea(cochlea):
    params = {"a": 2.7, "alpha": 1.1, "b": 0.21, "phi": -0.5}
    mesh = cochlea.mesh(params)
    grid = cochlea.grid
    sdm = exact_sdm(mesh, grid)
    s, _, c, _ = igl.signed_distance(grid.points(), mesh.vertices, mesh.faces.astype(np.int64),
                                     sign_type=igl.SIGNED_DISTANCE_TYPE_PSEUDONORMAL)
    s = s.reshape(grid.shape)
    assert np.abs(sdm - s).max() < 1e-4
    assert np.sum((sdm < 0) != (s < 0)) == 0


def test_sign_is_negative_inside(torus, small_grid):
    p = dict(torus.defaults, tilt=0.0, dz=0.0)
    sdm = exact_sdm(torus.mesh(p), small_grid)
    inside = torus.mesh(p).contains(small_grid.points())  # trimesh's ray test, independent of ours
    far = np.abs(sdm.ravel()) > 0.05
    assert np.all((sdm.ravel()[far] < 0) == inside[far])
    assert sdm.min() < 0 < sdm.max()


def test_gradient_norm_is_one_away_from_the_medial_axis(torus):
    p = torus.defaults
    sdm = exact_sdm(torus.mesh(p), torus.grid).astype(np.float64)
    g = np.gradient(sdm, *torus.grid.spacing)
    norm = np.sqrt(sum(gi**2 for gi in g))[2:-2, 2:-2, 2:-2]
    # away from the medial sets (tube core circle, the z axis, the hole) central differences see one smooth branch
    truth = torus.analytic_sdf(p, torus.grid)[2:-2, 2:-2, 2:-2]
    q = (torus.grid.points() - [0, 0, p["dz"]]).reshape(*torus.grid.shape, 3)[2:-2, 2:-2, 2:-2]
    rho = np.hypot(q[..., 0], q[..., 1])
    mask = (np.abs(truth) > 0.3) & (truth + p["r"] > 0.4) & (rho > 1.0)
    assert mask.sum() > 10000
    assert np.percentile(np.abs(norm[mask] - 1), 99) < 0.01


def test_sdm_is_one_lipschitz(cochlea):
    sdm = exact_sdm(cochlea.mesh(cochlea.defaults), cochlea.grid).astype(np.float64)
    for axis, h in enumerate(cochlea.grid.spacing):
        assert np.abs(np.diff(sdm, axis=axis)).max() <= h * (1 + 1e-5)


def test_any_closed_mesh_box_is_exact():
    box = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    grid = Grid.covering(box.bounds, 0.25, 1.0)
    p = grid.points()
    q = np.abs(p) - 1.0
    truth = np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)
    assert np.abs(exact_sdm(box, grid).ravel() - truth).max() < 1e-5


def _remove_faces(mesh, n, rng):
    keep = np.ones(len(mesh.faces), bool)
    keep[rng.choice(len(mesh.faces), n, replace=False)] = False
    return trimesh.Trimesh(mesh.vertices, mesh.faces[keep], process=False)


def test_robust_sign_survives_missing_flipped_and_duplicated_faces(torus, small_grid, rng):
    p = torus.defaults
    mesh = torus.mesh(p)
    truth = exact_sdm(mesh, small_grid)
    holes = _remove_faces(mesh, 200, rng)
    faces = mesh.faces.copy()
    flip = rng.choice(len(faces), 50, replace=False)
    faces[flip] = faces[flip][:, ::-1]
    flipped = trimesh.Trimesh(mesh.vertices, faces, process=False)
    dup = trimesh.Trimesh(mesh.vertices, np.concatenate([mesh.faces, mesh.faces[:300]]), process=False)
    for broken in (holes, flipped, dup):
        with pytest.warns(MeshWarning):
            sdm = exact_sdm(broken, small_grid)
        wrong = np.sum((sdm < 0) != (truth < 0))
        assert wrong <= 0.0005 * truth.size, wrong  # libigl's winding number: a handful near the holes


def test_inverted_mesh_is_flipped_with_a_warning(torus, small_grid):
    mesh = torus.mesh(torus.defaults)
    inverted = trimesh.Trimesh(mesh.vertices, mesh.faces[:, ::-1], process=False)
    with pytest.warns(MeshWarning, match="inverted"):
        sdm = exact_sdm(inverted, small_grid)
    assert np.array_equal(sdm, exact_sdm(mesh, small_grid))


def test_empty_mesh_is_refused(small_grid):
    with pytest.raises(MeshError, match="empty"):
        exact_sdm(trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), int)), small_grid)


def test_nan_vertices_are_refused(small_grid):
    box = trimesh.creation.box()
    v = box.vertices.copy()
    v[0, 0] = np.nan
    with pytest.raises(MeshError, match="NaN"):
        exact_sdm(trimesh.Trimesh(v, box.faces, process=False), small_grid)


def test_clean_mesh_gives_no_warning(cochlea):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact_sdm(cochlea.mesh(cochlea.defaults), cochlea.grid)


def test_unsigned_distance_is_the_absolute_sdm(torus, small_grid):
    mesh = torus.mesh(torus.defaults)
    assert np.allclose(sdmnn.unsigned_distance(mesh, small_grid), np.abs(exact_sdm(mesh, small_grid)))


# --- the two exact methods: characteristic scan conversion ("scan") and BVH queries ("bvh") ------

def _both(mesh, grid):
    scan = exact_sdm(mesh, grid, method="scan")
    bvh = exact_sdm(mesh, grid, method="bvh")
    return scan, bvh


def _assert_same(scan, bvh):
    assert np.abs(scan - bvh).max() < 1e-6
    assert np.sum((scan < 0) != (bvh < 0)) == 0


@pytest.mark.parametrize("family", ["torus", "cochlea"])
def test_scan_equals_bvh_on_random_shapes_and_grids(family, rng):
    """Random parameters, random anisotropic spacing and grids that cut through the shape (features
    outside the grid still scatter into it): the scan must find the same nearest triangle."""
    fam = sdmnn.get_family(family)
    for _ in range(3):
        params = dict(zip(fam.names, fam.space.low + rng.random(4) * (fam.space.high - fam.space.low)))
        mesh = fam.mesh(params, resolution=(96, 16) if family == "torus" else (160, 16))
        lo, hi = mesh.bounds
        spacing = tuple(rng.uniform(0.15, 0.35, 3))
        origin = lo + rng.uniform(-0.3, 0.5, 3) * (hi - lo)  # may start inside the shape
        shape = tuple(int(s) for s in rng.integers(12, 30, 3))
        _assert_same(*_both(mesh, Grid(shape, spacing, tuple(origin))))


def test_scan_is_exact_on_sharp_edges_and_corners():
    """A cube's 90-degree edges and corners have normal cones too wide for one sweep axis: they are
    split into narrower cones, and the result is the analytic box SDF."""
    box = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    grid = Grid((27, 23, 25), (0.21, 0.23, 0.19), (-2.7, -2.4, -2.3))
    scan, bvh = _both(box, grid)
    q = np.abs(grid.points()) - 1.0
    truth = np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)
    assert np.abs(scan.ravel() - truth).max() < 1e-5
    _assert_same(scan, bvh)
    tilted = box.copy()
    tilted.apply_transform(trimesh.transformations.rotation_matrix(0.7, [1, 2, 3]))
    _assert_same(*_both(tilted, grid))


def _l_prism():
    """An L-shaped prism: a reflex (concave) vertical edge and corners where convex and concave meet."""
    xy = np.array([(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)], float)
    V = np.concatenate([np.c_[xy, np.zeros(6)], np.c_[xy, np.ones(6)]])
    cap = np.array([(0, 1, 2), (0, 2, 3), (0, 3, 4), (0, 4, 5)])
    sides = [f for i in range(6) for f in ((i, (i + 1) % 6, 6 + (i + 1) % 6), (i, 6 + (i + 1) % 6, 6 + i))]
    mesh = trimesh.Trimesh(V, np.concatenate([cap[:, ::-1], cap + 6, sides]), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    return mesh


def test_scan_on_convex_vertices_and_on_a_concave_shape():
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=1.5)  # every vertex convex
    _assert_same(*_both(sphere, Grid((24, 24, 24), (0.17, 0.17, 0.17), (-2.0, -2.0, -2.0))))
    grid = Grid((26, 26, 16), (0.13, 0.13, 0.13), (-0.6, -0.6, -0.5))
    scan, bvh = _both(_l_prism(), grid)
    _assert_same(scan, bvh)
    # independent truth: the L is the union of two boxes, so its SDF outside is the min of theirs
    p = grid.points()

    def box_sdf(lo, hi):
        c, h = (np.add(lo, hi)) / 2, (np.subtract(hi, lo)) / 2
        q = np.abs(p - c) - h
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)

    union = np.minimum(box_sdf((0, 0, 0), (2, 1, 1)), box_sdf((0, 0, 0), (1, 2, 1)))
    outside = union > 0
    assert np.abs(scan.ravel()[outside] - union[outside]).max() < 1e-5
    assert np.all(scan.ravel()[union < -1e-6] < 0)


def test_mesh_far_outside_the_grid(torus):
    mesh = torus.mesh(torus.defaults, resolution=(64, 16))
    _assert_same(*_both(mesh, Grid((8, 9, 10), (0.3, 0.3, 0.3), (20.0, -1.0, 3.0))))


def test_auto_uses_the_bvh_where_the_scan_does_not_apply(small_grid):
    """Two cubes sharing one corner vertex: watertight edge by edge but the shared vertex is not
    manifold, so the scan refuses and auto falls back to the BVH with the robust sign."""
    a = trimesh.creation.box(extents=(1, 1, 1), transform=trimesh.transformations.translation_matrix([0.5, 0.5, 0.5]))
    b = trimesh.creation.box(extents=(1, 1, 1), transform=trimesh.transformations.translation_matrix([-0.5, -0.5, -0.5]))
    both = trimesh.util.concatenate([a, b])
    both.merge_vertices()
    assert both.is_watertight
    with pytest.raises(MeshError, match="scan method needs"):
        exact_sdm(both, small_grid, sign="winding", method="scan")
    with pytest.warns(MeshWarning, match="non-manifold"):
        sdm = exact_sdm(both, small_grid)
    separate = np.minimum(exact_sdm(a, small_grid), exact_sdm(b, small_grid))
    assert np.abs(sdm - separate).max() < 1e-5


def _twins_by_dict(F):
    """Half-edge partners found with a dictionary: None unless every directed edge appears once and
    has exactly one partner running the other way."""
    where = {}
    for h, (a, b) in enumerate(zip(F.ravel(), np.roll(F, -1, axis=1).ravel())):
        if (a, b) in where:
            return None
        where[(a, b)] = h
    try:
        return np.array([where[(b, a)] for (a, b) in where])
    except KeyError:
        return None


@pytest.mark.parametrize("change", ["none", "drop a face", "flip a face", "duplicate a face"])
def test_half_edge_twins_match_a_dictionary(cochlea, change):
    from sdmnn.scan import half_edge_twins

    F = np.ascontiguousarray(cochlea.mesh(cochlea.defaults).faces, dtype=np.int64)
    F = {"none": F, "drop a face": F[1:], "flip a face": np.vstack([F[:1, ::-1], F[1:]]),
         "duplicate a face": np.vstack([F, F[:1]])}[change]
    expected, got = _twins_by_dict(F), half_edge_twins(np.ascontiguousarray(F), int(F.max()) + 1)
    assert (expected is None) == (got is None) == (change != "none")
    if expected is not None:
        assert np.array_equal(got, expected)


def _cone_rays_by_pairs(E):
    """The extreme rays of {m : m . e <= 0 for every row e of E} from every pair of rows (numpy),
    as a set of directions; None for an empty or flat cone."""
    rays = []
    for i in range(len(E)):
        for j in range(i + 1, len(E)):
            r = np.cross(E[i], E[j])
            if np.linalg.norm(r) <= 1e-12:
                continue
            r /= np.linalg.norm(r)
            rays += [sg * r for sg in (1.0, -1.0) if np.all(sg * (E @ r) <= 1e-9)]
    if not rays or np.linalg.norm(np.sum(rays, axis=0)) < 1e-6 * len(rays):
        return None
    return _directions(rays)


def _directions(rays):
    """The distinct directions among unit vectors (closer than 1e-7: the same)."""
    kept = []
    for r in rays:
        if all(np.linalg.norm(r - k) > 1e-7 for k in kept):
            kept.append(r)
    return np.array(kept)


@pytest.mark.parametrize("nudge", [0.0, 1e-11])
def test_scan_where_many_pairs_of_neighbours_give_one_cone_ray(nudge):
    """A bipyramid over an L-shaped base with three collinear points on two of its sides: each apex's
    fan is not convex and three of its edges share a plane, so the all-pairs search finds the same ray
    from several pairs and counts it once. Nudged off the line by 1e-11 mm, those rays differ by more
    than rounding but less than the search's tolerance: there are more of them than the apex has
    neighbours, and the regions take their second path."""
    from sdmnn import scan

    xy = np.array([(0, 0), (1, nudge), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2), (-nudge, 1)], float)
    n = len(xy)
    V = np.concatenate([np.c_[xy, np.zeros(n)], [(0.8, 0.8, 1.0), (0.8, 0.8, -1.0)]])
    F = [(i, (i + 1) % n, n) for i in range(n)] + [((i + 1) % n, i, n + 1) for i in range(n)]
    mesh = trimesh.Trimesh(V, np.array(F), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    ring = np.arange(n - 1, -1, -1)  # the top apex's neighbours, in its fan's order
    E = (V[ring] - V[n]) / np.linalg.norm(V[ring] - V[n], axis=1)[:, None]
    rays = scan._cone_rays(E, np.empty((n, 3)))
    assert rays == 5 if nudge == 0 else rays > n
    grid = Grid((24, 24, 24), (0.12, 0.12, 0.12), (-0.4037, -0.4071, -1.4013))  # no voxel centre on a face
    _assert_same(*_both(mesh, grid))


@pytest.mark.parametrize("shape", ["cochlea", "torus", "icosphere", "L prism"])
def test_vertex_cone_rays_match_all_pairs(cochlea, torus, shape):
    """The scan's vertex cones (adjacent pairs of a convex fan, all pairs otherwise) against all pairs,
    on convex, saddle (the torus's inner side), concave and flat-neighboured vertices."""
    from sdmnn import scan
    from sdmnn import sdm as sdm_mod

    mesh = {"cochlea": lambda: cochlea.mesh(cochlea.defaults, resolution=(160, 16)), "torus": lambda: torus.mesh(torus.defaults, resolution=(48, 12)),
            "icosphere": lambda: trimesh.creation.icosphere(subdivisions=2), "L prism": _l_prism}[shape]()
    V, F = np.ascontiguousarray(mesh.vertices, float), np.ascontiguousarray(mesh.faces, np.int64)
    topo = sdm_mod._Topology.of(V, F)
    nbr, nptr = topo._fans[:2]
    kinds = set()
    for v in range(len(V)):
        ring = nbr[nptr[v] : nptr[v + 1]]
        E = V[ring] - V[v]
        E /= np.linalg.norm(E, axis=1)[:, None]
        expected = _cone_rays_by_pairs(E)
        eps, t, flat = scan._near_flat(E, *topo.VNv[v])
        if flat or t <= scan.NEAR_FLAT or (eps <= scan.LEVEL and np.isfinite(t)):  # (the cochlea's end caps)
            # no cone to compare, or the bound on it that sizes the square cones: within atan(t) of +-n
            kinds.add("flat")
            n = topo.VNv[v] / np.linalg.norm(topo.VNv[v])
            assert expected is None or np.all(np.abs(expected @ n) >= np.cos(np.arctan(t)) - 1e-12)
            continue
        out = np.zeros((64, 3))
        n = scan._cone_rays(E, out)
        kinds.add("none" if expected is None else "cone")
        if expected is None:
            assert n == 0
        else:
            got = _directions(out[:n])
            assert got.shape == expected.shape
            assert all(np.linalg.norm(expected - r, axis=1).min() < 1e-9 for r in got)
    assert "cone" in kinds and ("none" in kinds) == (shape in ("cochlea", "torus"))  # saddles have none


def test_unknown_method_is_refused(small_grid):
    with pytest.raises(ValueError, match="method must be"):
        exact_sdm(trimesh.creation.box(), small_grid, method="fast")


def test_scan_safety_net_fills_unreached_voxels(torus, small_grid):
    """Voxels no region reached would be redone with nearest-triangle queries: the helper it uses
    agrees with the grid kernel."""
    from sdmnn import bvh
    from sdmnn import sdm as sdm_mod

    mesh = torus.mesh(torus.defaults, resolution=(64, 16))
    V = np.ascontiguousarray(mesh.vertices, float)
    F = np.ascontiguousarray(mesh.faces, np.int64)
    topo = sdm_mod._Topology.of(V, F)
    pts = small_grid.points()[::97]
    got = bvh.at_points(pts, np.ascontiguousarray(V[F]), topo.FN, topo.EN, topo.VN, True)
    assert np.abs(got - exact_sdm(mesh, small_grid).ravel()[::97]).max() < 1e-6


@pytest.mark.parametrize("shape", [(30, 30, 1), (1, 25, 25), (1, 1, 40)])
def test_scan_on_slices_and_lines(cochlea, shape):
    grid = Grid(shape, (0.2, 0.2, 0.2), (-4.0, -4.0, 0.3))
    _assert_same(*_both(cochlea.mesh(cochlea.defaults), grid))


def test_keep_freed_memory_applies_on_glibc_and_changes_no_result(torus, small_grid):
    import platform

    from sdmnn.runtime import keep_freed_memory

    mesh = torus.mesh(torus.defaults, resolution=(64, 16))
    before = exact_sdm(mesh, small_grid)
    applied = keep_freed_memory()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert np.array_equal(exact_sdm(mesh, small_grid), before)


def test_scan_gives_the_same_numbers_on_any_number_of_threads(cochlea):
    """Threads share one array, lowered by atomic compare-and-swap: the result must not depend on
    how many write it, nor on their timing (run twice)."""
    import numba

    from sdmnn.runtime import set_threads

    mesh = cochlea.mesh(cochlea.defaults)
    lo, hi = mesh.bounds
    grid = Grid((48, 44, 24), tuple((hi - lo) * 1.2 / (47, 43, 23)), tuple(lo - 0.1 * (hi - lo)))
    before = numba.get_num_threads()
    try:
        set_threads(1)
        one = exact_sdm(mesh, grid)
        set_threads(numba.config.NUMBA_NUM_THREADS)
        assert np.array_equal(exact_sdm(mesh, grid), one)
        assert np.array_equal(exact_sdm(mesh, grid), one)
    finally:
        set_threads(before)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread affinity is Linux-only")
def test_workers_are_pinned_one_per_core_when_they_use_every_core_and_released_on_one(cochlea):
    import numba

    import threading

    from sdmnn import _thread_ids, runtime

    cores = len(os.sched_getaffinity(0))
    if cores < 2 or numba.config.NUMBA_NUM_THREADS < cores or not _thread_ids.AVAILABLE:
        pytest.skip("needs two cores or more, a numba thread for each and glibc's gettid")
    mesh = cochlea.mesh(cochlea.defaults)
    grid = Grid((24, 22, 12), (0.5, 0.5, 0.5), (-6.0, -5.5, -1.0))
    before, flag = numba.get_num_threads(), runtime.PIN_THREADS
    try:
        runtime.set_threads(cores)
        pinned = exact_sdm(mesh, grid)
        tids = runtime._pinned["tids"]
        assert len(tids) == cores and threading.get_native_id() not in tids  # numba's workers, not the caller
        on = [os.sched_getaffinity(t) for t in tids]
        assert all(len(c) == 1 for c in on) and len(set().union(*on)) == cores  # one core each, all different
        runtime.set_threads(1)
        one = exact_sdm(mesh, grid)
        assert all(os.sched_getaffinity(t) == os.sched_getaffinity(0) for t in tids)
        runtime.set_threads(cores)
        runtime.PIN_THREADS = False  # SDMNN_PIN_THREADS=0
        free = exact_sdm(mesh, grid)
        assert runtime._pinned["tids"] == () and all(os.sched_getaffinity(t) == os.sched_getaffinity(0) for t in tids)
        assert np.array_equal(pinned, one) and np.array_equal(pinned, free)
    finally:
        runtime.PIN_THREADS = flag
        runtime.set_threads(before)


@pytest.mark.parametrize("flip", [False, True])
def test_exact_sdm_on_an_oblique_grid_matches_libigl_at_the_voxels_world_positions(cochlea, flip):
    """Oblique and flipped image grids (scanner geometry): the SDM at each voxel's world position."""
    from scipy.spatial.transform import Rotation

    mesh = cochlea.mesh(cochlea.defaults)
    direction = Rotation.from_rotvec([0.3, -0.5, 0.8]).as_matrix() @ np.diag([-1.0, -1.0, 1.0] if flip else [1.0, 1.0, 1.0])
    grid = Grid((30, 26, 14), (0.4, 0.45, 0.6), (0.0, 0.0, 0.0), direction)
    centre = grid.to_world((np.array(grid.shape) - 1) / 2)
    grid = Grid(grid.shape, grid.spacing, tuple(np.array(grid.origin) - centre + mesh.centroid), direction)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MeshWarning)  # a flipped grid must not look like an inverted mesh
        sdm = exact_sdm(mesh, grid)
    s, _, _, _ = igl.signed_distance(grid.points(), mesh.vertices, mesh.faces.astype(np.int64),
                                     sign_type=igl.SIGNED_DISTANCE_TYPE_PSEUDONORMAL)
    s = s.reshape(grid.shape)
    assert (sdm < 0).sum() > 100
    assert np.abs(sdm - s).max() < 1e-4 and np.sum((sdm < 0) != (s < 0)) == 0


# --- real-world meshes: crossing and nested bodies, flipped faces, regions the scan cannot sweep ------

def _exact_inside(mesh, grid):
    """Where the exact generalised winding number (libigl) is at least 1/2 in magnitude: the truth."""
    return np.abs(igl.winding_number(np.asarray(mesh.vertices, float), np.asarray(mesh.faces, np.int64), grid.points())) >= 0.5


def _bodies(*meshes):
    return trimesh.util.concatenate(list(meshes))


@pytest.mark.parametrize("layout", ["crossing", "nested, same orientation", "nested, a cavity"])
def test_sign_of_a_mesh_of_several_bodies_is_the_winding_numbers(layout):
    """Two spheres as two bodies of one mesh. Crossing, or one inside the other with the same orientation,
    the pseudonormal of the nearest sheet is wrong somewhere (inside one body, nearest to the other's
    surface): those get the winding-number sign, with a warning. A cavity (inner sphere inverted) keeps the
    pseudonormal sign, exact there."""
    big = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    if layout == "crossing":
        other = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
        other.apply_translation([1.1, 0.2, 0.1])
    else:
        other = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
        other.apply_translation([0.1, 0.05, 0.0])
        if layout == "nested, a cavity":
            other.invert()
    mesh = _bodies(big, other)
    grid = Grid((36, 30, 30), (0.1, 0.1, 0.1), (-1.25, -1.45, -1.45))
    truth = _exact_inside(mesh, grid)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MeshWarning)
        sdm = exact_sdm(mesh, grid).ravel()
    said = " ".join(str(w.message) for w in caught)
    off = np.abs(sdm) > 1e-6
    assert np.array_equal((sdm < 0)[off], truth[off])
    pseudonormal = exact_sdm(mesh, grid, sign="pseudonormal").ravel()
    wrong = np.sum((pseudonormal < 0)[off] != truth[off])
    if layout == "nested, a cavity":
        assert said == "" and wrong == 0
    else:
        assert ("intersect" if layout == "crossing" else "nested") in said and wrong > 0
    assert np.allclose(np.abs(sdm), np.abs(pseudonormal), atol=1e-6)  # the distances are the scan's either way


@pytest.mark.parametrize("flipped", [3, 20])
def test_a_few_flipped_faces_flip_no_sign(flipped, rng):
    """A closed mesh with some faces turned inside out is oriented consistently first (each body keeping
    the orientation most of its faces had), with a warning: the SDM is the unflipped mesh's, exactly."""
    sphere = trimesh.creation.icosphere(subdivisions=3)
    faces = sphere.faces.copy()
    pick = rng.choice(len(faces), flipped, replace=False)
    faces[pick] = faces[pick][:, ::-1]
    grid = Grid((30, 30, 30), (0.08, 0.08, 0.08), (-1.17, -1.16, -1.15))
    with pytest.warns(MeshWarning, match=f"{flipped} of the mesh's {len(faces)} faces were flipped"):
        sdm = exact_sdm(trimesh.Trimesh(sphere.vertices, faces, process=False), grid)
    assert np.array_equal(sdm, exact_sdm(sphere, grid))


def test_scan_hands_a_knife_edge_to_the_bvh_with_a_warning():
    """A prism over a triangle with a 0.05-degree corner: at that edge the two faces fold onto each other
    (their normals are nearly opposite) and its end vertices' cones are nearly half-spaces, regions the
    scan cannot split; the BVH method takes the mesh and the SDM is still libigl's."""
    a = np.radians(0.05)
    xy = np.array([(0.0, 0.0), (2.0, 2.0 * np.tan(a)), (2.0, 0.0)])[::-1]
    V = np.concatenate([np.c_[xy, np.zeros(3)], np.c_[xy, np.ones(3)]])
    F = np.array([(0, 2, 1), (3, 4, 5), (0, 1, 4), (0, 4, 3), (1, 2, 5), (1, 5, 4), (2, 0, 3), (2, 3, 5)])
    mesh = trimesh.Trimesh(V, F, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    grid = Grid((20, 12, 14), (0.13, 0.1, 0.1), (-0.31, -0.52, -0.23))
    with pytest.warns(MeshWarning, match="(fold onto each other|is not a pointed cone); using the BVH method"):
        sdm = exact_sdm(mesh, grid, method="scan")
    s, _, _, _ = igl.signed_distance(grid.points(), V, F.astype(np.int64), sign_type=igl.SIGNED_DISTANCE_TYPE_PSEUDONORMAL)
    assert np.abs(sdm.ravel() - s).max() < 1e-5


def test_winding_number_refuses_an_empty_mesh_missing_vertices_and_points_that_are_not_n_by_3():
    box = trimesh.creation.box()
    with pytest.raises(MeshError, match="empty"):
        sdmnn.winding_number(trimesh.Trimesh(), np.zeros((2, 3)))
    with pytest.raises(MeshError, match="missing vertices"):
        sdmnn.winding_number(trimesh.Trimesh(box.vertices, box.faces + 100, process=False), np.zeros((2, 3)))
    with pytest.raises(sdmnn.errors.SdmnnError, match="points must be an"):
        sdmnn.winding_number(box, np.zeros((2, 2)))
    assert np.allclose(sdmnn.winding_number(box, np.array([[0.0, 0, 0], [2, 0, 0]]), closed=True), [1, 0], atol=1e-2)
    with pytest.raises(sdmnn.errors.GridError, match="grid must be an sdmnn.Grid"):
        exact_sdm(box, (8, 8, 8))
    with pytest.raises(sdmnn.errors.SdmnnError, match="sign must be"):
        exact_sdm(box, Grid((4, 4, 4), (0.5, 0.5, 0.5), (-1, -1, -1)), sign="x")


def test_inside_fraction_of_a_ball_sums_to_its_volume_on_an_oblique_flipped_anisotropic_grid():
    """Partial volume against an analytic truth: the voxels' shares of a ball, times the voxel volume, sum to the
    ball's volume, and voxels wholly inside or outside (by the centre's distance against half the voxel's diagonal)
    are 1 and 0."""
    from scipy.spatial.transform import Rotation

    from sdmnn.sdm import inside_fraction

    ball = trimesh.creation.icosphere(subdivisions=6, radius=1.0)
    D = Rotation.from_rotvec([0.3, -0.5, 0.8]).as_matrix() @ np.diag([1.0, -1.0, 1.0])
    spacing = np.array([0.25, 0.3, 0.45])
    grid = Grid((13, 11, 8), tuple(spacing), tuple(-D @ ((np.array([13, 11, 8]) - 1) * spacing / 2)), D)
    f = inside_fraction(ball, grid)
    assert abs(f.sum() * np.prod(spacing) - ball.volume) < 0.01 * ball.volume
    r = np.linalg.norm(grid.points(), axis=-1).reshape(grid.shape)
    half = np.linalg.norm(spacing) / 2
    assert np.all(f[r < 1 - half] == 1) and np.all(f[r > 1 + half] == 0)
