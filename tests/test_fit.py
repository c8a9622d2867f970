import numpy as np
import pytest

import sdmnn
from sdmnn import Grid
from sdmnn.fit import FitError, _fd_hessian, check_observed, fit, synthetic_target
from sdmnn.nn import shipped_model_path

TRUTH = {"a": 3.2, "alpha": 0.7, "b": 0.14, "phi": 0.25}
needs_model = pytest.mark.skipif(shipped_model_path() is None, reason="no shipped model")


@pytest.mark.parametrize("volume, message", [
    (np.zeros((4, 4, 4)), "all zeros"),
    (np.ones((4, 4, 4)), "all ones"),
    (np.full((4, 4, 4), np.nan), "NaN"),
    (np.arange(64).reshape(4, 4, 4) % 3, "only 0"),
    (np.zeros((4, 4)), "3-D"),
])
def test_unusable_label_maps_are_refused(volume, message):
    with pytest.raises(FitError, match=message):
        check_observed(volume, "labels")


def test_sdm_without_a_surface_is_refused():
    with pytest.raises(FitError, match="zero crossing"):
        check_observed(np.ones((4, 4, 4)), "sdm")


def test_bad_settings_are_refused(cochlea):
    y, grid = synthetic_target("cochlea", TRUTH, tau=0)
    with pytest.raises(FitError, match="forward must be"):
        fit(y, grid, forward="magic")
    with pytest.raises(FitError, match="sub-range"):
        fit(y, grid, forward="exact", prior={"a": (1.0, 3.0)})


@needs_model
def test_target_on_another_grid_is_refused_for_the_network():
    grid = Grid((20, 20, 20), (0.5, 0.5, 0.5), (-5.0, -5.0, -2.0))
    y, _ = synthetic_target("cochlea", TRUTH, tau=0, grid=grid)
    with pytest.raises(FitError, match="differs from the model"):
        fit(y, grid, forward="sdmnn")


@needs_model
def test_model_of_another_family_is_refused():
    y, grid = synthetic_target("cochlea", TRUTH, tau=0)
    with pytest.raises(FitError, match="trained for the cochlea family, not torus"):
        fit(y, grid, family="torus", forward="sdmnn", model=sdmnn.load_model())


def test_finite_difference_hessian_of_a_quadratic_is_exact():
    A = np.array([[2.0, 0.3], [0.3, 1.0]])
    H = _fd_hessian(lambda u: 0.5 * (u - 0.4) @ A @ (u - 0.4), np.array([0.5, 0.5]))
    assert np.allclose(H, A, atol=1e-6)


def test_exact_fit_recovers_the_parameters_on_a_coarse_grid():
    # the exact forward model works on any grid: a coarse one keeps the test short
    grid = Grid((32, 28, 16), (0.4, 0.4, 0.4), (-5.6, -5.05, -1.8))
    y, _ = synthetic_target("cochlea", TRUTH, "sdm", sigma=0.02, grid=grid)
    r = fit(y, grid, observed_kind="sdm", forward="exact", n_screen=32, max_exact=150, prior={"phi": (0.0, 0.5)})
    span = sdmnn.get_family("cochlea").space.high - sdmnn.get_family("cochlea").space.low
    err = np.abs(np.array([r.params[k] for k in TRUTH]) - np.array(list(TRUTH.values()))) / span
    assert err.max() < 0.01, (r.params, err)
    lo_hi = r.interval(0.9)
    assert all(lo <= r.params[k] <= hi for k, (lo, hi) in lo_hi.items())
    assert r.evaluations["exact"] > 0 and r.evaluations.get("sdmnn", 0) == 0


@needs_model
def test_hybrid_fit_recovers_a_noise_free_sdm_target_exactly():
    # zero residual at the truth: the exact polish lands there whatever the network's bias
    y, grid = synthetic_target("cochlea", TRUTH, "sdm", sigma=0.0)
    r = fit(y, grid, observed_kind="sdm", forward="hybrid", seed=0)
    span = sdmnn.get_family("cochlea").space.high - sdmnn.get_family("cochlea").space.low
    err = np.abs(np.array([r.params[k] for k in TRUTH]) - np.array(list(TRUTH.values()))) / span
    assert err.max() < 1e-5, (r.params, err)
    assert 0 < r.evaluations["exact"] <= 40


@needs_model
def test_hybrid_fit_of_a_noisy_label_map_is_consistent_with_its_posterior():
    y, grid = synthetic_target("cochlea", TRUTH, "labels", tau=0.05, seed=3)
    r = fit(y, grid, forward="hybrid", seed=0)
    for k, truth in TRUTH.items():
        assert abs(r.params[k] - truth) <= 3 * r.std[k], (k, r.params[k], truth, r.std[k])
    assert r.samples.shape[1] == 4 and set(r.interval(0.9)) == set(TRUTH)
