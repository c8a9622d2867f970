import numpy as np
import pytest

from sdmnn import Grid, GridError


def test_voxel_ijk_is_at_origin_plus_index_times_spacing():
    g = Grid((3, 4, 5), (0.5, 1.0, 2.0), (1.0, -2.0, 3.0))
    p = g.points().reshape(3, 4, 5, 3)
    assert np.allclose(p[2, 3, 4], [1.0 + 1.0, -2.0 + 3.0, 3.0 + 8.0])
    assert np.allclose(p[0, 0, 0], g.origin)
    assert np.allclose(g.affine @ [2, 3, 4, 1], [*p[2, 3, 4], 1])


def test_covering_grid_covers_bounds_with_margin():
    bounds = [[-1.0, 0.0, 2.0], [1.3, 0.7, 2.1]]
    g = Grid.covering(bounds, 0.2, margin=0.5)
    lo, hi = g.bounds
    assert np.all(lo <= np.array(bounds[0]) - 0.5 + 1e-9) and np.all(hi >= np.array(bounds[1]) + 0.5 - 1e-9)
    assert g.spacing == (0.2, 0.2, 0.2)


@pytest.mark.parametrize("spacing", [(0, 1, 1), (-0.2, 0.2, 0.2), (float("nan"), 1, 1)])
def test_bad_spacing_is_refused(spacing):
    with pytest.raises(GridError, match="spacing"):
        Grid((4, 4, 4), spacing)


def test_bad_shape_is_refused():
    with pytest.raises(GridError, match="shape"):
        Grid((4, 0, 4), (1, 1, 1))


def test_grid_over_budget_is_refused_before_allocating(monkeypatch):
    monkeypatch.setenv("SDMNN_MAX_BYTES", str(2**20))
    g = Grid((2000, 2000, 2000), (0.1, 0.1, 0.1))
    with pytest.raises(GridError, match="over the budget"):
        g.points()
    assert g.memory_estimate() > 2**20


def test_grid_dict_round_trip():
    g = Grid((3, 4, 5), (0.5, 1.0, 2.0), (1.0, -2.0, 3.0))
    assert Grid.from_dict(g.to_dict()) == g
