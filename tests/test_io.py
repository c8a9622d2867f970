import numpy as np
import pytest

from sdmnn import FileError, Grid, GridError, load_volume, save_volume


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _rotation(axis, degrees):
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.radians(degrees) * np.asarray(axis, float) / np.linalg.norm(axis)).as_matrix()


GRIDS = {
    "axis-aligned": Grid((5, 6, 7), (0.2, 0.3, 0.4), (-1.0, 2.0, 0.5)),
    "flipped (ITK/Slicer)": Grid((5, 6, 7), (0.3, 0.3, 0.3), (4.0, 3.0, -2.0), np.diag([-1.0, -1.0, 1.0])),
    "oblique, anisotropic": Grid((5, 6, 7), (0.25, 0.25, 0.5), (1.0, -2.0, 3.0), _rotation([1, 2, 3], 27)),
    "oblique with a flip": Grid((5, 6, 7), (0.2, 0.3, 0.4), (0.0, 0.0, 0.0), _rotation([0, 1, 1], -40) @ np.diag([1.0, 1.0, -1.0])),
}


@pytest.mark.parametrize("name", GRIDS)
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".npy"])
def test_volume_round_trip_keeps_values_and_every_voxels_world_position(tmp_path, suffix, name):
    g = GRIDS[name]
    v = np.random.default_rng(0).normal(size=g.shape).astype(np.float32)
    save_volume(tmp_path / f"v{suffix}", v, g)
    v2, g2 = load_volume(tmp_path / f"v{suffix}")
    assert np.array_equal(v, v2) and g2 == g
    assert np.allclose(g2.points(), g.points(), atol=1e-5)


@pytest.mark.parametrize("suffix", [".NII.GZ", ".NII", ".NRRD", ".MHA", ".NPY", ".Nrrd", ".Nii.Gz", ".nii.GZ", ".Nii"])
def test_upper_case_suffixes_are_written_and_read_in_their_format(tmp_path, suffix):
    g = GRIDS["oblique with a flip"]
    v = np.random.default_rng(1).normal(size=g.shape).astype(np.float32)
    save_volume(tmp_path / f"v{suffix}", v, g)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == (["v.NPY", "v.json"] if suffix == ".NPY" else [f"v{suffix}"])  # no stray temporaries
    v2, g2 = load_volume(tmp_path / f"v{suffix}")
    assert np.array_equal(v, v2) and g2 == g
    if suffix != ".NPY":  # the one format: the header's own magic, whatever the name says
        lower = tmp_path / f"w{suffix.lower()}"
        (tmp_path / f"v{suffix}").rename(lower)
        assert np.array_equal(load_volume(lower)[0], v)


@pytest.mark.parametrize("name", GRIDS)
def test_nifti_stores_the_lps_grid_as_ras(tmp_path, name):
    """nibabel, an independent reader, finds every voxel at the RAS image of its LPS position."""
    import nibabel as nib

    g = GRIDS[name]
    save_volume(tmp_path / "v.nii.gz", np.zeros(g.shape, np.float32), g)
    affine = nib.load(tmp_path / "v.nii.gz").affine
    ijk = np.array([[0, 0, 0], [4, 5, 6], [1, 3, 2]], float)
    assert np.allclose(ijk @ affine[:3, :3].T + affine[:3, 3], g.to_world(ijk) @ LPS_TO_RAS, atol=1e-4)


def test_a_nibabel_nifti_with_a_ras_affine_reads_as_a_flipped_lps_grid(tmp_path):
    import nibabel as nib

    affine = np.diag([0.3, 0.3, 0.3, 1.0])
    affine[:3, 3] = (10.0, -20.0, 5.0)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), affine), tmp_path / "ras.nii.gz")
    _, g = load_volume(tmp_path / "ras.nii.gz")
    assert np.allclose(g.direction, np.diag([-1.0, -1.0, 1.0])) and np.allclose(g.spacing, 0.3)
    assert np.allclose(g.to_world([[3, 4, 5]]) @ LPS_TO_RAS, [[10.9, -18.8, 6.5]])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".npy"])
def test_nan_and_infinite_voxels_read_as_they_are_stored(tmp_path, suffix):
    """ITK's NIfTI reader (before ITK 6) reads them as 0, a valid value; the fit must see them to refuse them."""
    g = GRIDS["oblique, anisotropic"]
    v = np.arange(np.prod(g.shape), dtype=np.float32).reshape(g.shape)
    v[1, 2, 3], v[0, 0, 1], v[2, 0, 0] = np.nan, np.inf, -np.inf
    save_volume(tmp_path / f"v{suffix}", v, g)
    got, _ = load_volume(tmp_path / f"v{suffix}")
    assert np.array_equal(got, v, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_a_nii_gz_is_read_even_beside_a_nii_of_the_same_name(tmp_path, dtype):
    """ITK's NIfTI library, given NAME.nii.gz, reads NAME.nii when both exist."""
    save_volume(tmp_path / "v.nii", np.zeros((5, 4, 3), dtype), Grid((5, 4, 3), (1, 1, 1)))
    save_volume(tmp_path / "v.nii.gz", np.ones((5, 4, 3), dtype), Grid((5, 4, 3), (0.5, 0.5, 0.5)))
    v, g = load_volume(tmp_path / "v.nii.gz")
    assert np.all(v == 1) and g.spacing == (0.5, 0.5, 0.5)
    v, g = load_volume(tmp_path / "v.nii")
    assert np.all(v == 0) and g.spacing == (1, 1, 1)


def test_an_npy_whose_grid_sidecar_disagrees_is_refused(tmp_path):
    save_volume(tmp_path / "v.npy", np.zeros((5, 5, 5), np.float32), Grid((5, 5, 5), (1, 1, 1)))
    save_volume(tmp_path / "w.npy", np.zeros((4, 4, 4), np.float32), Grid((4, 4, 4), (1, 1, 1)))
    (tmp_path / "v.json").write_text((tmp_path / "w.json").read_text())
    with pytest.raises(FileError, match=r"its voxels are \(5, 5, 5\) but its grid .* is \(4, 4, 4\)"):
        load_volume(tmp_path / "v.npy")


def test_an_npy_without_its_grid_is_refused_and_its_grid_is_written_with_it_or_not_at_all(tmp_path):
    np.save(tmp_path / "lone.npy", np.zeros((3, 3, 3), np.float32))
    with pytest.raises(FileError, match="needs its grid in lone.json beside it"):
        load_volume(tmp_path / "lone.npy")
    (tmp_path / "notes.json").write_text('{"subject": 7}')  # someone else's .json
    with pytest.raises(FileError, match="notes.json beside it, which exists and is no volume's grid file"):
        save_volume(tmp_path / "notes.npy", np.zeros((3, 3, 3), np.float32), Grid((3, 3, 3), (1, 1, 1)))
    (tmp_path / "model.json").write_text('{"arch": "sdmnn", "grid": {}}')  # a model's own: it has a grid too
    with pytest.raises(FileError, match="model.json beside it, which exists and is no volume's grid file"):
        save_volume(tmp_path / "model.npy", np.zeros((3, 3, 3), np.float32), Grid((3, 3, 3), (1, 1, 1)))
    (tmp_path / "box.json").mkdir()
    with pytest.raises(FileError, match="box.json beside it, which is a folder"):
        save_volume(tmp_path / "box.npy", np.zeros((3, 3, 3), np.float32), Grid((3, 3, 3), (1, 1, 1)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box.json", "lone.npy", "model.json", "notes.json"]
    assert (tmp_path / "notes.json").read_text() == '{"subject": 7}'


def test_a_shape_mismatch_writes_nothing(tmp_path):
    g = Grid((5, 6, 7), (1, 1, 1))
    with pytest.raises(GridError):
        save_volume(tmp_path / "v.nii.gz", np.zeros((2, 2, 2)), g)
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_halfway_leaves_no_partial_file(tmp_path, monkeypatch):
    import SimpleITK as sitk

    def half_write(image, name, *args, **kwargs):
        with open(name, "wb") as f:
            f.write(b"\x00" * 100)  # the temporary file exists and holds a partial write
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", half_write)
    with pytest.raises(FileError, match="disk full"):
        save_volume(tmp_path / "v.nrrd", np.zeros((2, 2, 2), np.float32), Grid((2, 2, 2), (1, 1, 1)))
    assert list(tmp_path.iterdir()) == []


def test_detached_headers_are_read_but_not_written(tmp_path):
    with pytest.raises(FileError, match="write .nrrd instead"):
        save_volume(tmp_path / "v.nhdr", np.zeros((2, 2, 2)), Grid((2, 2, 2), (1, 1, 1)))


def test_a_non_orthonormal_direction_is_refused():
    with pytest.raises(GridError, match="orthonormal"):
        Grid((2, 2, 2), (1, 1, 1), (0, 0, 0), [[1, 0.2, 0], [0, 1, 0], [0, 0, 1]])


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


def test_a_textured_mesh_split_at_its_uv_seams_loads_watertight(tmp_path):
    """An OBJ whose faces each carry their own texture coordinates has its corners split (one vertex per
    position and UV); the loader joins them by position, so the closed mesh is closed again."""
    import trimesh

    from sdmnn import load_mesh

    box = trimesh.creation.box()
    soup = trimesh.Trimesh(box.triangles.reshape(-1, 3), np.arange(36).reshape(-1, 3), process=False)
    soup.visual = trimesh.visual.TextureVisuals(uv=np.random.default_rng(0).random((36, 2)))
    soup.export(tmp_path / "seams.obj")
    assert not trimesh.load_mesh(tmp_path / "seams.obj", process=True).is_watertight  # trimesh keeps UV seams
    mesh = load_mesh(tmp_path / "seams.obj")
    assert mesh.is_watertight and len(mesh.vertices) == 8


def test_what_cannot_be_a_volume_or_a_mesh_file_is_one_sentence(tmp_path):
    import trimesh

    from sdmnn import MeshError, save_mesh

    g = Grid((4, 4, 4), (1, 1, 1))
    with pytest.raises(FileError, match="expected a file path, got NoneType"):
        load_volume(None)
    with pytest.raises(FileError, match="holds real numbers, got object"):
        save_volume(tmp_path / "v.nii.gz", np.zeros((4, 4, 4), object), g)
    with pytest.raises(GridError, match="grid must be an sdmnn.Grid"):
        save_volume(tmp_path / "v.nii.gz", np.zeros((4, 4, 4)), (4, 4, 4))
    with pytest.raises(MeshError, match="the mesh is empty"):
        save_mesh(tmp_path / "e.stl", trimesh.Trimesh())
    assert list(tmp_path.iterdir()) == []
    save_volume(tmp_path / "h.nii.gz", np.full((4, 4, 4), 0.5, np.float16), g)  # half floats are written as float32
    assert np.all(load_volume(tmp_path / "h.nii.gz")[0] == 0.5)


def test_a_folder_output_is_written_whole_or_not_at_all(tmp_path):
    """A fit's results folder (FitResult.save): written beside it, then moved in; a failure half-way leaves the folder
    as it was, absent or with its old files, and no temporary folder."""
    from sdmnn.io import _umask, atomic_folder

    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "new" / "fit") as tmp:
            (tmp / "result.json").write_text("{}")
            raise RuntimeError("a plot failed")
    assert not (tmp_path / "new" / "fit").exists() and list((tmp_path / "new").iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "result.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(old) as tmp:
            (tmp / "result.json").write_text("new")
            (tmp / "mesh.stl").write_text("new")
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old"] and [p.name for p in old.iterdir()] == ["result.json"]
    assert (old / "result.json").read_text() == "old"
    with atomic_folder(old) as tmp:
        (tmp / "result.json").write_text("new")
        (tmp / "mesh.stl").write_text("new")
    assert sorted(p.name for p in old.iterdir()) == ["mesh.stl", "result.json"] and (old / "result.json").read_text() == "new"
    with atomic_folder(tmp_path / "fresh") as tmp:
        (tmp / "a.txt").write_text("a")
    assert (tmp_path / "fresh" / "a.txt").read_text() == "a" and sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "new", "old"]
    assert oct((tmp_path / "fresh").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def test_volumes_made_from_an_image_are_written_in_its_format():
    from sdmnn.io import WRITTEN_VOLUME_FORMATS, volume_format_of

    assert [volume_format_of(f"ct{s}") for s in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy")] == [
        ".nii.gz", ".nii", ".nrrd", ".nrrd", ".mha", ".mha", ".nii.gz"]
    assert set(WRITTEN_VOLUME_FORMATS) == {".nii.gz", ".nii", ".nrrd", ".mha"}
    with pytest.raises(FileError, match="unsupported file type"):
        volume_format_of("ct.dcm")


def test_an_stl_says_its_frame_in_its_header_and_reads_back(tmp_path):
    import trimesh

    from sdmnn.io import load_mesh, save_mesh

    box = trimesh.creation.box(extents=(1, 2, 3))
    save_mesh(tmp_path / "box.stl", box)
    assert (tmp_path / "box.stl").read_bytes()[:9] == b"SPACE=LPS"  # 3D Slicer's mark of the frame
    back = load_mesh(tmp_path / "box.stl")
    assert back.is_watertight and np.isclose(back.volume, 6.0)


def write_dicom_series(folder, volume, grid, uid="1.2.826.0.1.3680043.2.1125.7.1", skip=(), decimals=None,
                       description="CT"):
    """``volume`` ([i, j, k]) on ``grid`` as a DICOM series, one file per slice k (but those in ``skip``), as a scanner
    writes it: each slice's position (rounded to ``decimals``) and orientation, one series UID."""
    import locale

    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    before = locale.setlocale(locale.LC_ALL, None)  # GDCM's writer sets the C locale (ASCII text) for the process
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0)).astype(np.int16))
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(np.array(grid.direction).ravel().tolist())
    d = np.array(grid.direction)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        if k in skip:
            continue
        plane = image[:, :, k]
        for tag, value in (("0008|0060", "CT"), ("0020|000e", uid), ("0020|000d", uid + ".0"), ("0020|0013", str(k)),
                           ("0020|0037", "\\".join(f"{v:.6f}" for v in (*d[:, 0], *d[:, 1]))),
                           ("0020|0032", "\\".join(str(round(v, decimals) if decimals else v)
                                                     for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
                           ("0008|103e", description),
                           ("0018|0050", str(grid.spacing[2]))):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)
    locale.setlocale(locale.LC_ALL, before)


def test_a_dicom_series_folder_reads_with_its_grid_and_a_bad_one_is_one_sentence(tmp_path):
    grid = GRIDS["oblique, anisotropic"]
    volume = np.random.default_rng(0).integers(-1000, 2000, grid.shape)
    write_dicom_series(tmp_path / "ct", volume, grid)
    read, read_grid = load_volume(tmp_path / "ct")
    assert np.array_equal(read, volume) and read_grid == grid
    write_dicom_series(tmp_path / "rounded", volume, grid, decimals=2)  # positions as some scanners write them
    rounded = load_volume(tmp_path / "rounded")[1]  # the grid, to what two decimals of its positions hold
    assert np.allclose(rounded.spacing, grid.spacing, atol=1e-3) and np.allclose(rounded.origin, grid.origin, atol=0.01)
    fine = Grid((4, 4, 40), (0.1, 0.1, 0.1), (1.0, -2.0, 3.0), _rotation([1, 2, 3], 27))  # a cone-beam CT's voxels
    write_dicom_series(tmp_path / "fine", np.zeros(fine.shape), fine, decimals=2)
    assert np.allclose(load_volume(tmp_path / "fine")[1].spacing, fine.spacing, atol=1e-3)
    coarse = Grid((4, 4, 12), (0.5, 0.5, 0.625), (1.0, -2.0, 3.0))  # positions with one decimal: 0.6 and 0.7 mm steps
    write_dicom_series(tmp_path / "one_decimal", np.zeros(coarse.shape), coarse, decimals=1)
    assert np.allclose(load_volume(tmp_path / "one_decimal")[1].spacing, coarse.spacing, atol=0.01)
    write_dicom_series(tmp_path / "gap", volume, grid, skip=(3,))  # a slice missing
    with pytest.raises(FileError, match="not evenly spaced .* a missing slice"):
        load_volume(tmp_path / "gap")
    write_dicom_series(tmp_path / "twice", volume, grid)
    (tmp_path / "twice" / "copy.dcm").write_bytes((tmp_path / "twice" / "slice002.dcm").read_bytes())
    with pytest.raises(FileError, match="two of its DICOM slices lie at the same position"):
        load_volume(tmp_path / "twice")
    (tmp_path / "mixed").mkdir()  # two series in one folder
    for i, f in enumerate(sorted((tmp_path / "ct").iterdir())):
        (tmp_path / "mixed" / f"a{i}.dcm").write_bytes(f.read_bytes())
    write_dicom_series(tmp_path / "study" / "patient" / "bone", volume, grid, uid="1.2.826.0.1.3680043.2.1125.7.2",
                       description="BONE 0.6")
    for i, f in enumerate(sorted((tmp_path / "study" / "patient" / "bone").iterdir())):
        (tmp_path / "mixed" / f"b{i}.dcm").write_bytes(f.read_bytes())
    with pytest.raises(FileError, match=r"holds 2 DICOM series \(.*BONE 0.6 \(7 files\).*\); give the folder of one"):
        load_volume(tmp_path / "mixed")
    with pytest.raises(FileError, match="no DICOM series; these folders in it hold some: patient/bone; give one"):
        load_volume(tmp_path / "study")  # a study's folder, its series two folders down
    (tmp_path / "none").mkdir()
    with pytest.raises(FileError, match="a folder holding no DICOM series; a volume is a file"):
        load_volume(tmp_path / "none")
