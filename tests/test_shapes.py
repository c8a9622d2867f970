import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sdmnn
from sdmnn import ParameterError
from sdmnn.sdm import winding_number

FAMILIES = ["cochlea", "torus"]


def corners(family):
    return [dict(zip(family.names, c)) for c in itertools.product(*family.ranges.values())]


def assert_valid_solid(family, params, resolution=None):
    mesh = family.mesh(params, resolution)
    assert mesh.is_watertight, params
    assert mesh.is_winding_consistent, params
    assert mesh.volume > 0, params
    lo, hi = family.grid.bounds
    assert np.all(mesh.bounds[0] >= lo + family.grid.spacing[0]) and np.all(mesh.bounds[1] <= hi - family.grid.spacing[0]), params
    # No self-intersection: just outside the surface the winding number is 0, just inside it is 1
    # (an overlap would give 1 outside or 2 inside somewhere).
    normals = mesh.vertex_normals
    step = 1e-3
    w_out = winding_number(mesh, mesh.vertices + step * normals)
    w_in = winding_number(mesh, mesh.vertices - step * normals)
    assert np.all(np.abs(w_out) < 0.5) and np.all(np.abs(w_in - 1) < 0.5), params


@pytest.mark.parametrize("name", FAMILIES)
def test_every_corner_of_the_box_gives_a_valid_solid(name):
    family = sdmnn.get_family(name)
    for params in corners(family):
        assert_valid_solid(family, params, resolution=(200, 24))


@pytest.mark.parametrize("name", FAMILIES)
def test_random_parameters_give_valid_solids(name):
    family = sdmnn.get_family(name)

    @settings(max_examples=12, deadline=None)
    @given(st.tuples(*[st.floats(lo, hi) for lo, hi in family.ranges.values()]))
    def check(values):
        assert_valid_solid(family, dict(zip(family.names, values)), resolution=(200, 24))

    check()


def test_cochlea_declares_the_posters_parameters(cochlea):
    assert cochlea.names == ("a", "alpha", "b", "phi")
    assert cochlea.ranges["a"] == (2.0, 5.0) and cochlea.ranges["b"] == (0.05, 0.25)
    assert np.isclose(cochlea.ranges["phi"][1], np.pi / 4)


def test_torus_mesh_volume_matches_the_analytic_volume(torus):
    p = torus.defaults
    mesh = torus.mesh(p, resolution=(512, 128))
    assert mesh.volume == pytest.approx(2 * np.pi**2 * p["R"] * p["r"] ** 2, rel=1e-3)


def test_cochlea_phi_changes_the_shape_at_the_apex(cochlea):
    # The section keeps its aspect ratio everywhere, so phi is visible even where the turns are tight.
    p = dict(cochlea.defaults, b=0.25)
    m0, m1 = cochlea.mesh(dict(p, phi=-0.7)), cochlea.mesh(dict(p, phi=0.7))
    apex = slice(-32 * 40 - 2, -2)  # the last 40 sections
    assert np.abs(m0.vertices[apex] - m1.vertices[apex]).max() > 1e-3


@pytest.mark.parametrize("bad, message", [
    ({"a": 7.1}, "a must lie in"),
    ({"a": float("nan")}, "finite"),
    ({"zeta": 1.0}, "unknown parameter"),
])
def test_bad_parameters_are_refused_with_one_sentence(cochlea, bad, message):
    with pytest.raises(ParameterError, match=message):
        cochlea.mesh({**cochlea.defaults, **bad})


def test_missing_parameter_is_refused(cochlea):
    with pytest.raises(ParameterError, match="missing parameter 'phi'"):
        cochlea.mesh({"a": 3, "alpha": 0.5, "b": 0.1})


def test_wrong_count_is_refused(cochlea):
    with pytest.raises(ParameterError, match="expected 4 parameters"):
        cochlea.mesh([3.0, 0.5])


def test_unknown_family_is_refused():
    with pytest.raises(sdmnn.SdmnnError, match="unknown family"):
        sdmnn.get_family("sphere")


def test_default_mesh_resolution_is_not_the_accuracy_bottleneck(cochlea):
    # the corner measured worst: widest base, fastest decay; against a 16x finer mesh
    p = {"a": 5.0, "alpha": 0.0, "b": 0.25, "phi": -np.pi / 4}
    coarse = sdmnn.exact_sdm(cochlea.mesh(p), cochlea.grid)
    fine = sdmnn.exact_sdm(cochlea.mesh(p, (1600, 128)), cochlea.grid)
    assert np.abs(coarse - fine).max() < 0.01  # mm: 1/20 of a 0.2 mm voxel
