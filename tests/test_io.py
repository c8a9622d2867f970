import numpy as np
import pytest

from sdmnn import FileError, Grid, GridError, load_volume, save_volume


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".npy"])
def test_volume_round_trip_keeps_values_and_grid(tmp_path, suffix):
    g = Grid((5, 6, 7), (0.2, 0.3, 0.4), (-1.0, 2.0, 0.5))
    v = np.random.default_rng(0).normal(size=g.shape).astype(np.float32)
    save_volume(tmp_path / f"v{suffix}", v, g)
    v2, g2 = load_volume(tmp_path / f"v{suffix}")
    assert np.array_equal(v, v2) and g2.same_as(g)
    if suffix != ".npy":
        import nibabel as nib

        assert np.allclose(nib.load(tmp_path / f"v{suffix}").affine, g.affine)


def test_failed_write_leaves_no_file(tmp_path):
    g = Grid((5, 6, 7), (1, 1, 1))
    with pytest.raises(GridError):
        save_volume(tmp_path / "v.nii.gz", np.zeros((2, 2, 2)), g)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_one_sentence(tmp_path):
    with pytest.raises(FileError, match="does not exist"):
        save_volume(tmp_path / "no" / "v.nii.gz", np.zeros((2, 2, 2)), Grid((2, 2, 2), (1, 1, 1)))


def test_unreadable_volume_is_one_sentence(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(FileError, match="cannot be read"):
        load_volume(bad)
    with pytest.raises(FileError, match="unsupported file type"):
        load_volume(tmp_path / "x.txt")
    with pytest.raises(FileError, match="no such file"):
        load_volume(tmp_path / "missing.nii.gz")
