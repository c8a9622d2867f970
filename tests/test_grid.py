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


@pytest.mark.parametrize("shape", [(4, 0, 4), (2.7, 4, 4), (True, 4, 4), (float("inf"), 4, 4), (4, 4)])
def test_bad_shape_is_refused(shape):
    with pytest.raises(GridError, match="shape"):
        Grid(shape, (1, 1, 1))


def test_integral_shapes_of_any_number_type_are_taken():
    assert Grid((4.0, np.int64(4), 4), (1, 1, 1)).shape == (4, 4, 4)


def test_a_stored_grid_without_its_fields_is_one_sentence():
    with pytest.raises(GridError, match="a grid is stored as"):
        Grid.from_dict({"shape": [4, 4, 4]})


def test_grid_over_budget_is_refused_before_allocating(monkeypatch):
    monkeypatch.setenv("SDMNN_MAX_BYTES", str(2**20))
    g = Grid((2000, 2000, 2000), (0.1, 0.1, 0.1))
    with pytest.raises(GridError, match=r"needs about 178.81 GiB, over the budget of 1.0 MiB"):
        g.points()
    assert g.memory_estimate() > 2**20
    monkeypatch.setenv("SDMNN_MAX_BYTES", "1000")  # small budgets read as such, not as 0.00 GiB
    with pytest.raises(GridError, match=r"needs about 9 KiB, over the budget of 1000 bytes"):
        Grid((10, 10, 4), (1, 1, 1)).points()


def test_grid_dict_round_trip():
    g = Grid((3, 4, 5), (0.5, 1.0, 2.0), (1.0, -2.0, 3.0))
    assert Grid.from_dict(g.to_dict()) == g


def _tube_sdm(points, radius=0.3):
    """The analytic SDM of an infinite tube of ``radius`` mm along x (negative inside)."""
    return np.hypot(points[..., 1], points[..., 2]) - radius


def test_sample_sdm_takes_out_the_shrinking_of_trilinear_near_a_thin_tube():
    torch = pytest.importorskip("torch")
    from scipy.ndimage import map_coordinates

    from sdmnn.grid import sample_sdm

    grid = Grid(shape=(12, 16, 16), spacing=(0.2, 0.2, 0.2), origin=(-1.1, -1.5, -1.5))
    volume = _tube_sdm(grid.points().reshape(*grid.shape, 3))
    rng = np.random.default_rng(0)
    index = rng.uniform(1, np.array(grid.shape) - 2, (20000, 3))
    truth = _tube_sdm(grid.to_world(index))
    near = np.abs(truth) < 0.2  # within one voxel of the surface
    corrected = sample_sdm(torch.from_numpy(volume[None]), torch.from_numpy(index[None]), grid.spacing)[0].numpy()
    trilinear = map_coordinates(volume, index.T, order=1)
    e_lin, e_cor = (trilinear - truth)[near], (corrected - truth)[near]
    assert e_lin.mean() > 0.005  # plain trilinear moves the surface inward all over the tube
    assert abs(e_cor.mean()) < e_lin.mean() / 5
    assert np.abs(e_cor).mean() < np.abs(e_lin).mean() / 2
    voxels = np.indices(grid.shape).reshape(3, -1).T.astype(float)
    at_voxels = sample_sdm(torch.from_numpy(volume[None]), torch.from_numpy(voxels[None]), grid.spacing)[0].numpy()
    assert np.allclose(at_voxels, volume.ravel())  # exact at the voxels


def test_sample_sdm_is_exact_for_a_quadratic_on_an_anisotropic_grid():
    torch = pytest.importorskip("torch")
    from sdmnn.grid import sample_sdm

    spacing = (0.3, 0.2, 0.5)
    f = lambda p: p[..., 0] ** 2 + 3 * p[..., 1] ** 2 - 2 * p[..., 2] ** 2 + p[..., 0] * p[..., 1]  # noqa: E731
    grid = Grid(shape=(7, 9, 5), spacing=spacing, origin=(-1.0, -0.8, -1.0))
    volume = f(grid.points().reshape(*grid.shape, 3))
    index = np.random.default_rng(1).uniform(0, np.array(grid.shape) - 1, (500, 3))
    got = sample_sdm(torch.from_numpy(volume[None]), torch.from_numpy(index[None]), spacing)[0].numpy()
    assert np.allclose(got, f(grid.to_world(index)), atol=1e-12)  # each axis's term paired with its own t and h


def test_sample_sdm_beyond_the_grid_adds_the_distance_to_its_border():
    torch = pytest.importorskip("torch")
    from sdmnn.grid import sample_sdm

    spacing = (0.5, 0.2, 0.25)
    shape = (6, 7, 8)
    volume = (np.indices(shape)[0] * spacing[0]).astype(float)  # a plane's SDM: x mm from the first voxel's face
    index = np.array([[2.3, 3.1, 4.7], [8.0, 3.0, 4.0], [-3.0, 2.5, 1.0]])
    got = sample_sdm(torch.from_numpy(volume[None]), torch.from_numpy(index[None]), spacing)[0].numpy()
    assert np.allclose(got, [2.3 * 0.5, 5 * 0.5 + 3 * 0.5, 0 + 3 * 0.5])  # linear inside; border plus distance beyond


@pytest.mark.parametrize("corrected", [True, False])
def test_sample_sdm_reads_one_set_of_points_for_all_volumes_as_it_reads_one_set_each(corrected):
    torch = pytest.importorskip("torch")
    from sdmnn.grid import sample_sdm

    spacing = (0.3, 0.2, 0.5)
    grid = Grid(shape=(7, 9, 5), spacing=spacing, origin=(-1.0, -0.8, -1.0))
    p = grid.points().reshape(*grid.shape, 3)
    volumes = torch.from_numpy(np.stack([np.hypot(p[..., 1], p[..., 2]) - r for r in (0.3, 0.5, 0.7)]))
    index = torch.from_numpy(np.random.default_rng(2).uniform(-2, np.array(grid.shape) + 1, (1, 400, 3)))
    shared = sample_sdm(volumes, index, spacing, corrected)
    each = sample_sdm(volumes, index.expand(3, -1, -1), spacing, corrected)
    assert shared.shape == (3, 400)
    assert torch.allclose(shared, each, atol=1e-12)
    assert not torch.allclose(shared[0], shared[1])  # each volume its own values


def test_sample_gradient_is_the_gradient_of_a_tube_between_the_voxels():
    torch = pytest.importorskip("torch")
    from sdmnn.grid import sample_gradient

    grid = Grid(shape=(12, 16, 16), spacing=(0.2, 0.2, 0.2), origin=(-1.1, -1.5, -1.5))
    volumes = torch.from_numpy(_tube_sdm(grid.points().reshape(*grid.shape, 3))[None])
    index = np.random.default_rng(3).uniform(1, np.array(grid.shape) - 2, (5000, 3))
    p = grid.to_world(index)
    r = np.hypot(p[:, 1], p[:, 2])
    truth = np.stack([np.zeros_like(r), p[:, 1] / r, p[:, 2] / r], 1)  # unit, away from the axis
    got = sample_gradient(volumes.expand(2, -1, -1, -1), torch.from_numpy(index[None]), grid.spacing)
    assert got.shape == (2, 5000, 3) and torch.equal(got[0], got[1])
    off_axis = r > 0.45  # the differences and the cell (0.4 mm) clear of the kink on the axis
    assert np.abs(got[0].numpy() - truth)[off_axis].max() < 0.05
