import math
import warnings

import igl
import numpy as np
import pytest
import trimesh

import sdmnn
from sdmnn import Grid, MeshError, MeshWarning, exact_sdm


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
    assert err <= chord_error(torus, params, torus.resolution) + 1e-5
    # and the error shrinks with a finer mesh: it is the mesh, not the distance computation
    finer = exact_sdm(torus.mesh(params, (512, 128)), torus.grid)
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
