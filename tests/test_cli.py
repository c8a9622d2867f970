"""The command line end to end, in a temporary folder, as a user runs it."""
import os
import subprocess
import sys

import numpy as np
import pytest

import sdmnn

SDMNN = [sys.executable, "-m", "sdmnn.cli"]


def run(*args, cwd, ok=True):
    r = subprocess.run([*SDMNN, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def test_families_lists_parameters_and_ranges(tmp_path, capsule_file):
    out = run("families", "--family", f"{capsule_file}:CAPSULE", cwd=tmp_path).stdout
    assert "cochlea" in out and "alpha" in out and "torus" in out and "[2, 5]" in out
    assert "capsule" in out and "capsule.py:CAPSULE" in out and "[0.5, 1]" in out


def test_mesh_sdm_show_end_to_end(tmp_path):
    run("mesh", "cochlea", "-p", "a=3.5", "-p", "alpha=0.6", "-p", "b=0.12", "-p", "phi=0.2", "-o", "c.stl", cwd=tmp_path)
    run("sdm", "cochlea", "-p", "a=3.5", "-o", "c.nii.gz", "--png", "c.png", cwd=tmp_path)
    sdm, grid = sdmnn.load_volume(tmp_path / "c.nii.gz")
    fam = sdmnn.get_family("cochlea")
    assert grid == fam.grid and sdm.min() < 0 < sdm.max()
    assert np.allclose(sdm, sdmnn.exact_sdm(fam.mesh(fam.defaults), fam.grid), atol=1e-6)
    r = run("sdm", "--mesh", "c.stl", "--spacing", "0.25", "--margin", "1", "-o", "m.npy", cwd=tmp_path)
    assert "warning" not in r.stderr  # the STL's shared vertices are joined again: watertight
    m, g = sdmnn.load_volume(tmp_path / "m.npy")
    assert g.spacing == (0.25, 0.25, 0.25) and m.min() < 0
    r = run("sdm", "--mesh", "c.stl", "--spacing", "0.2,0.2,0.4", "-o", "a.nii.gz", cwd=tmp_path)
    assert "voxels of 0.2x0.2x0.4 mm" in r.stdout and sdmnn.load_volume(tmp_path / "a.nii.gz")[1].spacing == (0.2, 0.2, 0.4)
    run("show", "c.nii.gz", "-o", "s.png", cwd=tmp_path)
    for f in ("c.png", "s.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["sdm", "cochlea", "-p", "a=7.1", "-o", "x.nii.gz"], "a must lie in [2, 5] mm, got 7.1"),
    (["sdm", "cochlea", "-p", "a=5.0000001", "-o", "x.nii.gz"], "a must lie in [2, 5] mm, got 5.0000001"),
    (["sdm", "cochlea", "-p", "a=nan", "-o", "x.nii.gz"], "finite"),
    (["sdm", "cochlea", "-p", "zeta=1", "-o", "x.nii.gz"], "unknown parameter"),
    (["sdm", "cochlea", "-p", "a", "-o", "x.nii.gz"], "NAME=VALUE"),
    (["sdm", "sphere", "-o", "x.nii.gz"], "unknown family"),
    (["sdm", "--mesh", "missing.stl", "-o", "x.nii.gz"], "no such file"),
    (["sdm", "--mesh", "empty.stl", "-o", "x.nii.gz"], "no triangles"),
    (["sdm", "--mesh", "nan.obj", "-o", "x.nii.gz"], "nan.obj: the mesh has NaN or infinite vertex coordinates"),
    (["sdm", "--mesh", "box.stl", "-p", "a=3", "-o", "x.nii.gz"], "-p sets a family's parameters; a --mesh has none"),
    (["dataset", "make", "cochlea", "--design", "grid:2", "-o", "x.nii.gz"], "x.nii.gz: .nii.gz names a file"),
    (["sdm", "--mesh", "box.stl", "--spacing", "0", "-o", "x.nii.gz"], "--spacing takes sizes in mm > 0, got 0"),
    (["sdm", "--mesh", "box.stl", "--spacing", "-1,1,1", "-o", "x.nii.gz"], "--spacing takes sizes in mm > 0, got -1,1,1"),
    (["sdm", "--mesh", "box.stl", "--spacing", "0.2,0.2", "-o", "x.nii.gz"], "--spacing takes 3 comma-separated numbers (or one)"),
    (["sdm", "--mesh", "box.stl", "--margin", "-1", "-o", "x.nii.gz"], "--margin takes a number of mm >= 0"),
    (["sdm", "--mesh", "box.stl", "--spacing", "0.0005", "-o", "x.nii.gz"], "over the budget"),
    (["sdm", "cochlea", "-o", "x.txt"], "unsupported file type; accepted: .nii, .nii.gz, .nrrd, .mha, .npy"),
    (["sdm", "cochlea", "-o", "nofolder/x.nii.gz"], "does not exist"),
    (["show", "garbage.nii.gz", "-o", "x.png"], "cannot be read"),
    # outputs are checked before any work: nothing is written when one of them cannot be
    (["sdm", "cochlea", "-o", "x.nii.gz", "--png", "nofolder/y.png"], "the folder nofolder does not exist"),
    (["sdm", "cochlea", "-o", "x.nii.gz", "--png", "y.txt"], "unsupported file type; accepted: .png"),
    (["show", "garbage.nii.gz", "-o", "x.txt"], "unsupported file type; accepted: .png"),
    (["demo", "-o", "box.stl"], "cannot write the folder box.stl: a file of that name exists"),
    (["evaluate", "--n", "1", "-o", "nofolder/e.json"], "the folder nofolder does not exist"),
    # options that do not go together, or that no run can use (the train folder -o x.txt must not be created)
    (["sdm", "--mesh", "box.stl", "--forward", "sdmnn", "-o", "x.nii.gz"], "the SDM of a --mesh is always the exact one"),
    (["sdm", "cochlea", "--spacing", "0.5", "-o", "x.nii.gz"], "--spacing and --margin set the grid around a --mesh"),
    (["sdm", "cochlea", "--model", "nomodel", "-o", "x.nii.gz"], "not the exact SDM"),
    (["sdm", "cochlea", "-p", "a=3", "-p", "a=4", "-o", "x.nii.gz"], "-p a is given twice"),
    (["dataset", "make", "cochlea", "--design", "grid:2", "--workers", "0", "-o", "x.txt"], "--workers must be at least 1"),
    (["train", "cochlea", "--data", "none.zarr", "--steps", "0", "-o", "x.txt"], "--steps must be at least 1, got 0"),
    (["train", "cochlea", "--data", "none.zarr", "--batch", "-2", "-o", "x.txt"], "--batch must be at least 1"),
    (["train", "cochlea", "--data", "none.zarr", "--lr", "-1", "-o", "x.txt"], "--lr must be a number > 0"),
    (["train", "cochlea", "--data", "none.zarr", "--hard", "2", "-o", "x.txt"], "--hard is a share of each batch"),
    (["train", "cochlea", "--data", "none.zarr", "-o", "box.stl"], "cannot write the folder box.stl: a file of that name"),
    (["train", "cochlea", "--data", "none.zarr", "--arch", "deepsdf", "--channels", "8,8,8", "-o", "x.txt"],
     "--arch deepsdf has none"),
    (["train", "cochlea", "--data", "none.zarr", "--points", "100", "-o", "x.txt"], "--points sets the SDF samples"),
    (["train", "cochlea", "--data", "none.zarr", "--online-workers", "3", "-o", "x.txt"], "--online, which is not given"),
    (["sdm", "cochlea", "-o", "x.mhd"], ".mhd files keep their data in a second file"),
    # a folder that takes no new file (a read-only mount; /proc stands for one, whoever runs the tests)
    (["sdm", "cochlea", "-o", "/proc/x.nii.gz"], "cannot write /proc/x.nii.gz: /proc takes no new file"),
    (["dataset", "make", "cochlea", "--design", "grid:2", "-o", "/proc/d.zarr"], "/proc takes no new file"),
    (["phantom", "cochlea", "--spacing", "5", "-o", "x.nii.gz"], "no voxel of 5x5x5 mm lies half inside the shape"),
    (["dataset", "make", "cochlea", "--design", "grid:2", "-o", "."], ". exists and is not an sdmnn dataset"),
    (["view", "--port", "70000", "--no-browser"], "--port takes a port number 0-65535"),
    (["sdm", "--mesh", "cut.stl", "-o", "x.nii.gz"], "header announces 12 triangles (684 bytes): the file is cut short"),
    # square brackets in a message are printed as they are (not read as console styles)
    (["sdm", "cochlea", "-o", "[dir]/x.nii.gz"], "the folder [dir] does not exist"),
])
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, args, message):
    import trimesh

    trimesh.creation.box().export(tmp_path / "box.stl")
    (tmp_path / "cut.stl").write_bytes((tmp_path / "box.stl").read_bytes()[:400])
    (tmp_path / "empty.stl").write_text("solid empty\nendsolid empty\n")
    (tmp_path / "garbage.nii.gz").write_bytes(b"garbage")
    (tmp_path / "nan.obj").write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
    r = subprocess.run([*SDMNN, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SDMNN_MAX_BYTES": str(2**30)})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr and "warning" not in r.stderr
    assert not (tmp_path / "x.nii.gz").exists() and not (tmp_path / "x.txt").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_version_and_a_label_map_shown_as_an_image(tmp_path):
    assert run("--version", cwd=tmp_path).stdout.strip() == f"sdmnn {sdmnn.__version__}"
    fam = sdmnn.get_family("cochlea")
    sdmnn.save_volume(tmp_path / "seg.nii.gz", (sdmnn.exact_sdm(fam.mesh(fam.defaults), fam.grid) < 0).astype(np.uint8), fam.grid)
    assert "no SDM: drawn as an image" in " ".join(run("show", "seg.nii.gz", "-o", "s.png", cwd=tmp_path).stdout.split())
    sdm = sdmnn.exact_sdm(fam.mesh(fam.defaults), fam.grid)
    sdmnn.save_volume(tmp_path / "ct.nii.gz", np.where(sdm < 0, 0.0, 1500.0) - 500, fam.grid)  # HU: negative too
    assert "ct.nii.gz has no voxel near its zero level, so it is no SDM" in " ".join(run("show", "ct.nii.gz", "-o", "c.png", cwd=tmp_path).stdout.split())
    sdmnn.save_volume(tmp_path / "sdm.nii.gz", sdm, fam.grid)
    assert run("show", "sdm.nii.gz", "-o", "d.png", cwd=tmp_path).stdout.split() == ["wrote", "d.png"]


def test_open_mesh_warns_and_still_writes(tmp_path):
    import trimesh

    box = trimesh.creation.box()
    trimesh.Trimesh(box.vertices, box.faces[1:]).export(tmp_path / "open.ply")
    r = run("sdm", "--mesh", "open.ply", "--spacing", "0.2", "-o", "o.nii.gz", cwd=tmp_path)
    assert "not watertight" in " ".join(r.stderr.split())
    assert (tmp_path / "o.nii.gz").exists()


def test_a_mesh_that_cannot_be_read_is_one_sentence_and_exit_2(tmp_path):
    (tmp_path / "bad.obj").write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    r = run("sdm", "--mesh", "bad.obj", "-o", "x.nii.gz", cwd=tmp_path, ok=False)
    assert r.returncode == 2 and "NaN" in r.stderr and "Traceback" not in r.stderr


def test_a_defect_is_one_sentence_asking_to_report_it_and_exit_3(tmp_path):
    """Any exception that is not about the input (here one planted in the exact SDM) is a defect of sdmnn."""
    import trimesh

    trimesh.creation.box().export(tmp_path / "box.stl")
    plant = ("import sys, sdmnn.sdm, sdmnn.cli\n"
             "def broken(*args, **kwargs):\n    return 1 / 0\n"
             "sdmnn.sdm.exact_sdm = broken\n"
             "sys.argv = ['sdmnn', 'sdm', '--mesh', 'box.stl', '-o', 'x.nii.gz']\n"
             "sdmnn.cli.main()\n")
    r = subprocess.run([sys.executable, "-c", plant], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr
    said = " ".join(r.stderr.split())
    assert "internal error: ZeroDivisionError: division by zero" in said and "please report it" in said
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2  # one sentence, wrapped at most once
    assert not (tmp_path / "x.nii.gz").exists()


@pytest.mark.skipif(sdmnn.nn.shipped_model_path() is None, reason="no shipped model")
def test_fit_cli_writes_a_table_json_samples_and_pngs(tmp_path):
    from sdmnn.fitting import synthetic_target

    truth = {"a": 3.6, "alpha": 0.5, "b": 0.11, "phi": -0.2}
    labels, grid = synthetic_target("cochlea", truth, "labels", tau=0.05, seed=1)
    sdmnn.save_volume(tmp_path / "target.mha", labels, grid)  # the fit's volumes come back as .mha
    r = run("fit", "target.mha", "--family", "cochlea", "--observed", "labels", "--forward", "sdmnn", "-o", "res", cwd=tmp_path)
    assert "90 % interval" in r.stdout and "alpha" in r.stdout
    import json

    result = json.loads((tmp_path / "res" / "result.json").read_text())
    assert abs(result["map"]["a"] - truth["a"]) < 0.1
    assert np.load(tmp_path / "res" / "samples.npy").shape[1] == 4
    for name in ("corner.png", "overlay.png", "mesh.stl", "sdm.mha", "labels.mha"):
        assert (tmp_path / "res" / name).exists(), name
    fitted, g = sdmnn.load_volume(tmp_path / "res" / "labels.mha")
    truth_labels, _ = synthetic_target("cochlea", truth, "labels", tau=0)
    assert g == grid and 2 * np.sum((fitted > 0) & (truth_labels > 0)) / (np.sum(fitted > 0) + np.sum(truth_labels > 0)) > 0.9


@pytest.mark.parametrize("args, message", [
    (["fit", "seg.nii.gz", "--tau", "0", "-o", "res"], "tau must be a number > 0"),
    (["fit", "seg.nii.gz", "--band", "1", "-o", "res"], "sigma and band (--sigma, --band) apply to an SDM target"),
    (["fit", "seg.nii.gz", "--forward", "exact", "-o", "small.nii.gz/res"], "small.nii.gz is a file"),
    (["fit", "seg.nii.gz", "--forward", "exact", "-o", "small.nii.gz"], "a file of that name exists"),
    (["fit", "seg.nii.gz", "--observed", "ct", "-o", "res"], "--observed must be one of labels, sdm, intensity"),
    (["fit", "seg.nii.gz", "--pose", "affine", "-o", "res"], "--pose must be one of none, rigid"),
    (["fit", "seg.nii.gz", "--turns", "some", "-o", "res"], "--turns must be one of auto, near, all"),
    (["fit", "seg.nii.gz", "--turns", "all", "--pose", "rigid", "-o", "res"], "turns (--turns) applies to an intensity image"),
    (["fit", "seg.nii.gz", "--centre", "1,2", "-o", "res"], "--centre takes 3 comma-separated numbers"),
    (["fit", "seg.nii.gz", "--centre", "100,0,0", "--forward", "exact", "-o", "res"], "outside the image"),
    (["fit", "seg.nii.gz", "--label", "3", "--forward", "exact", "-o", "res"], "no voxel of label 3"),
    (["fit", "seg.nii.gz", "--mask", "small.nii.gz", "--forward", "exact", "-o", "res"], "not on the image's grid"),
    (["fit", "missing.nrrd", "-o", "res"], "no such file"),
    (["fit", "seg.nii.gz", "--observed", "intensity", "--radius", "5", "-o", "res"], "radius (--radius) is the reach about centre (--centre)"),
    (["fit", "seg.nii.gz", "--observed", "intensity", "--window", "5", "-o", "res"], "--window takes LOW,HIGH (two numbers), auto or none"),
    (["fit", "seg.nii.gz", "--observed", "intensity", "--window", "3,1", "-o", "res"], "window (--window) is two intensities LOW < HIGH"),
    (["fit", "seg.nii.gz", "--window", "0,1", "-o", "res"], "a label map or an SDM has none"),
    (["fit", "seg.txt", "-o", "res"], "unsupported file type"),
    (["phantom", "cochlea", "--kind", "mri", "-o", "p.nii.gz"], "--kind must be one of labels, ct"),
    (["phantom", "cochlea", "--spacing", "0,0.3,0.3", "-o", "p.nii.gz"], "--spacing takes sizes in mm > 0, got 0,0.3,0.3"),
    (["phantom", "cochlea", "--kind", "ct", "--noise", "-5", "-o", "p.nii.gz"], "--noise takes a number >= 0, got -5"),
    # the truth's file is checked with the image's, before the work: no image is left without its truth
    (["phantom", "cochlea", "-o", "q.nii.gz"], "cannot write q.truth.json: it is a folder"),
    (["fit", "seg.nii.gz", "--observed", "sdm", "-o", "res"], "seg.nii.gz: the observed SDM has no zero crossing "
     "(no voxel inside or none outside); it holds whole numbers >= 0, as a label map does"),
    (["phantom", "cochlea", "--rotate", "x", "-o", "p.nii.gz"], "--rotate takes 3 comma-separated numbers"),
    (["phantom", "cochlea", "--noise", "50", "-o", "p.nii.gz"], "a labels phantom has neither"),
    (["dataset", "make", "cochlea", "--design", "grid:2", "-o", "seg.nii.gz"], "cannot write the folder seg.nii.gz"),
])
def test_bad_fit_and_phantom_options_are_one_sentence_and_exit_2(tmp_path, args, message):
    fam = sdmnn.get_family("cochlea")
    y = (sdmnn.exact_sdm(fam.mesh(fam.defaults), fam.grid) < 0).astype(np.uint8)
    sdmnn.save_volume(tmp_path / "seg.nii.gz", y, fam.grid)
    sdmnn.save_volume(tmp_path / "small.nii.gz", np.ones((3, 3, 3), np.uint8), sdmnn.Grid((3, 3, 3), (1, 1, 1)))
    (tmp_path / "q.truth.json").mkdir()
    r = run(*args, cwd=tmp_path, ok=False)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "res").exists()
    assert not (tmp_path / "p.nii.gz").exists() and not (tmp_path / "q.nii.gz").exists()


def test_sdm_warns_when_the_family_grid_does_not_hold_the_shape(tmp_path):
    (tmp_path / "small.py").write_text(
        "import trimesh\nimport sdmnn\n"
        "BALL = sdmnn.define_family('ball', {'r': (0.5, 3.0)}, lambda p: trimesh.creation.icosphere(2, radius=p['r']),\n"
        "                           grid=sdmnn.Grid((16, 16, 16), (0.2, 0.2, 0.2), (-1.5, -1.5, -1.5)))\n")
    assert "warning" not in run("sdm", "small.py:BALL", "-p", "r=1", "-o", "a.nii.gz", cwd=tmp_path).stderr
    r = run("sdm", "small.py:BALL", "-p", "r=3", "-o", "b.nii.gz", cwd=tmp_path)
    assert "warning: the shape leaves the grid" in r.stderr and (tmp_path / "b.nii.gz").exists()


def test_fit_cli_reads_a_dicom_series_folder_and_writes_on_its_grid(tmp_path):
    from sdmnn.phantom import make_phantom, surface_distances, truth_mesh
    from test_io import write_dicom_series

    image, grid, truth = make_phantom("cochlea", {"a": 3.5, "alpha": 0.6, "b": 0.12, "phi": 0.2}, rotate=(20, -35, 50),
                                      spacing=(0.4, 0.4, 0.6))
    write_dicom_series(tmp_path / "series", image, grid)
    r = run("fit", "series", "--pose", "rigid", "--forward", "exact", "-o", "res", cwd=tmp_path)
    assert "wrote res/" in " ".join(r.stdout.split())
    sdm, sdm_grid = sdmnn.load_volume(tmp_path / "res" / "sdm.nii.gz")  # NIfTI for a DICOM series, on its grid
    assert sdm_grid == grid
    d = surface_distances(sdmnn.load_mesh(tmp_path / "res" / "mesh.stl"), truth_mesh(truth))
    assert d.mean() < 0.05, d.mean()


def test_fit_cli_leaves_out_the_air_of_a_ct_by_default_and_says_so(tmp_path):
    """A CT-like series in HU (as a scanner writes it: flipped to LPS in a NIfTI file) with the middle ear's air beside
    the cochlea: the default window leaves the air out, the output and result.json say how much."""
    import json

    from sdmnn.phantom import make_phantom, surface_distances, truth_mesh

    image, grid, truth = make_phantom("cochlea", {"a": 3.5, "alpha": 0.6, "b": 0.12, "phi": 0.2}, kind="ct",
                                      rotate=(20, -35, 50), spacing=(0.4, 0.4, 0.5), seed=1)
    mesh = truth_mesh(truth)
    air = grid.points().reshape(*grid.shape, 3)[..., 0] > mesh.vertices[:, 0].max() + 0.5
    image[air] = -1000 + 100 * np.random.default_rng(2).standard_normal(air.sum())
    sdmnn.save_volume(tmp_path / "ct.nii.gz", image.astype(np.float32), grid)
    r = run("fit", "ct.nii.gz", "--observed", "intensity", "--pose", "rigid", "--forward", "exact", "-o", "res",
            cwd=tmp_path)
    said = " ".join(r.stdout.split())
    assert "voxels of the part of the image fitted: air (below -400, as in HU) and those within 1 mm of it (--window none keeps them)" in said
    window = json.loads((tmp_path / "res" / "result.json").read_text())["window"]
    assert window["auto"] and window["low"] == -400 and 0 < window["left_out_voxels"] < air.sum()  # of the part fitted
    d = surface_distances(sdmnn.load_mesh(tmp_path / "res" / "mesh.stl"), mesh)
    assert d.mean() < 0.05, d.mean()


def test_fit_cli_refuses_an_empty_label_map(tmp_path):
    fam = sdmnn.get_family("cochlea")
    sdmnn.save_volume(tmp_path / "empty.nii.gz", np.zeros(fam.grid.shape, np.uint8), fam.grid)
    r = run("fit", "empty.nii.gz", "--forward", "exact", "-o", "res", cwd=tmp_path, ok=False)
    assert r.returncode == 2 and "empty.nii.gz: the label map is all zeros" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "res").exists()


@pytest.mark.skipif(sdmnn.nn.shipped_model_path() is None, reason="no shipped model")
def test_demo_writes_both_sdms_and_says_honestly_which_is_faster(tmp_path):
    r = run("demo", "-o", "out", cwd=tmp_path)
    text = " ".join(r.stdout.split())
    assert "than the exact SDM" in text and ("faster" in text or "slower" in text or "as fast" in text)
    for name in ("cochlea_exact.nii.gz", "cochlea_sdmnn.nii.gz", "cochlea.png"):
        assert (tmp_path / "out" / name).exists(), name


@pytest.mark.skipif(sdmnn.nn.shipped_model_path(arch="deepsdf") is None, reason="no shipped DeepSDF-style model")
def test_sdm_with_the_deepsdf_baseline(tmp_path):
    run("sdm", "cochlea", "--forward", "deepsdf", "-o", "d.nii.gz", cwd=tmp_path)
    sdm, grid = sdmnn.load_volume(tmp_path / "d.nii.gz")
    exact = sdmnn.exact_sdm(sdmnn.get_family("cochlea").mesh(sdmnn.get_family("cochlea").defaults), grid)
    near = np.abs(exact) < 0.5
    assert np.mean((sdm[near] < 0) == (exact[near] < 0)) > 0.9  # the baseline's sign near the surface


def test_dataset_make_excludes_the_points_of_another_store(tmp_path):
    run("dataset", "make", "cochlea", "--design", "grid:2", "-o", "a.zarr", cwd=tmp_path)
    fam = sdmnn.get_family("cochlea")
    corner = fam.space.low  # a point of the grid:2 design
    inner = (fam.space.low + fam.space.high) / 2
    (tmp_path / "pts.csv").write_text(",".join(fam.names) + "\n" + "\n".join(",".join(map(str, p)) for p in (corner, inner)) + "\n")
    run("dataset", "make", "cochlea", "--design", "csv:pts.csv", "--exclude", "a.zarr", "-o", "b.zarr", cwd=tmp_path)
    from sdmnn.dataset import dataset_params

    b = dataset_params(tmp_path / "b.zarr")
    assert b.shape == (1, 4) and np.allclose(b[0], inner)


def test_a_user_family_file_works_end_to_end_through_the_cli(tmp_path, capsule_file):
    """A family defined in a file of its own: checked, a dataset, a few training steps, evaluate --json, a phantom,
    and fits with the network and with the exact model, all by FILE.py:NAME."""
    import json

    from sdmnn.phantom import surface_distances, truth_mesh

    spec = f"{capsule_file}:CAPSULE"
    assert "passed" in run("families", "check", spec, "--samples", "4", cwd=tmp_path).stdout
    run("dataset", "make", spec, "--design", "sobol:8", "-o", "d.zarr", cwd=tmp_path)
    run("train", spec, "--data", "d.zarr", "--steps", "3", "--batch", "2", "--channels", "8,8,8", "--hidden", "16",
        "--threads", "1", "-o", "run", cwd=tmp_path)
    figures = json.loads(run("evaluate", "run", "--n", "2", "--json", "-o", "e.json", cwd=tmp_path).stdout)
    for key in ("mae_mm", "mae_near_mm", "wrong_sign_fraction", "wrong_sign_near_fraction", "max_error_mm", "ms_per_sdm"):
        assert np.isfinite(figures[key]), key
    written = json.loads((tmp_path / "e.json").read_text())  # the same names, and every case's figures
    cases = written["cases"]
    assert written["max_error_mm"] == figures["max_error_mm"] == np.mean([c["max_error_mm"] for c in cases])
    assert figures["worst_case"]["max_error_mm"] == max(c["max_error_mm"] for c in cases)
    r = run("phantom", spec, "-p", "length=2.2", "-p", "radius=0.7", "--spacing", "0.25", "-o", "ph.nii.gz", cwd=tmp_path)
    assert "takes no `refine`" in r.stderr
    for forward in ("sdmnn", "exact"):  # the 3-step network (its family the model's), then the exact model
        given = ("--model", "run") if forward == "sdmnn" else ("--family", spec)
        r = run("fit", "ph.nii.gz", *given, "--forward", forward, "-o", f"fit-{forward}", cwd=tmp_path)
        result = json.loads((tmp_path / f"fit-{forward}" / "result.json").read_text())
        assert result["family"] == "capsule" and result["family_source"].endswith("capsule.py:CAPSULE")
        if forward == "sdmnn":  # which network it ran on
            assert result["model"]["path"] == str((tmp_path / "run").resolve()) and len(result["model"]["weights_sha256"]) == 64
        else:
            assert result["model"] is None
    r = run("fit", "ph.nii.gz", "--forward", "exact", "--model", "run", "-o", "x", cwd=tmp_path, ok=False)
    assert r.returncode == 2 and "--model chooses the network" in r.stderr
    # a capsule 2.8 voxels in radius: its label map pins the surface, not each parameter
    d = surface_distances(sdmnn.load_mesh(tmp_path / "fit-exact" / "mesh.stl"), truth_mesh(json.loads((tmp_path / "ph.truth.json").read_text())))
    assert result["quality"]["dice"] > 0.95 and d.mean() < 0.1, (result["map"], d.mean())


def test_a_family_whose_shapes_fail_the_check_is_refused_by_dataset_and_train(tmp_path):
    (tmp_path / "leaky.py").write_text("import sdmnn, trimesh\n"
                                       "def leaky(p):\n"
                                       "    m = trimesh.creation.icosphere(1, p['r'])\n"
                                       "    return trimesh.Trimesh(m.vertices, m.faces[1:], process=False)\n"
                                       "LEAKY = sdmnn.define_family('leaky', {'r': (0.5, 1.0)}, leaky)\n")
    r = run("families", "check", "leaky.py:LEAKY", cwd=tmp_path, ok=False)
    assert r.returncode == 1 and "r=0.75" in r.stdout and "edge" in r.stdout
    for args in (("dataset", "make", "leaky.py:LEAKY", "--design", "random:2", "-o", "x.zarr"),
                 ("train", "leaky.py:LEAKY", "--online", "--steps", "1", "-o", "run")):
        r = run(*args, cwd=tmp_path, ok=False)
        assert r.returncode == 2 and "fails `sdmnn families check`" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_the_fit_help_states_the_searchs_reach_as_the_fit_has_it():
    """The help is written out (the command line does not import the fitting module to start); it must say what the
    fit does."""
    import typer

    from sdmnn.cli import app
    from sdmnn.fitting import AUTO_ALL_PINNED, AUTO_ALL_R2, SEARCH_SHIFT_MM, SEARCH_TURNS

    params = {p.name: p for p in typer.main.get_command(app).commands["fit"].params}
    assert f"{SEARCH_SHIFT_MM:g} mm of --centre" in params["pose"].help
    assert f"all ({SEARCH_TURNS} spread" in params["turns"].help and f"R^2 is below {AUTO_ALL_R2:g}" in params["turns"].help
    for option in ("pose", "turns"):
        assert f"or {AUTO_ALL_PINNED} of its parameters lie at their range's ends" in " ".join(params[option].help.split())


def test_a_mesh_that_encloses_nothing_gets_an_unsigned_map_and_says_so(tmp_path):
    """A surface stored twice, facing both ways (as some exporters write double-sided models), has winding number 0
    everywhere: its map has no inside, which the command says rather than leaving a sign that is not there."""
    import trimesh

    box = trimesh.creation.box()
    trimesh.Trimesh(box.vertices, np.concatenate([box.faces, box.faces[:, ::-1]]), process=False).export(tmp_path / "two.stl")
    r = run("sdm", "--mesh", "two.stl", "--spacing", "0.25", "-o", "two.nii.gz", cwd=tmp_path)
    assert "no voxel lies inside two.stl" in " ".join(r.stderr.split())
    assert sdmnn.load_volume(tmp_path / "two.nii.gz")[0].min() >= 0
    box.export(tmp_path / "one.stl")
    assert "no voxel lies inside" not in run("sdm", "--mesh", "one.stl", "--spacing", "0.25", "-o", "one.nii.gz", cwd=tmp_path).stderr


@pytest.mark.skipif(sdmnn.nn.shipped_model_path() is None, reason="no shipped model")
def test_a_model_of_another_architecture_than_forward_is_refused(tmp_path):
    shipped = str(sdmnn.nn.shipped_model_path())
    r = run("sdm", "cochlea", "--forward", "deepsdf", "--model", shipped, "-o", "d.nii.gz", cwd=tmp_path, ok=False)
    assert r.returncode == 2 and "holds a model of the sdmnn architecture, not deepsdf (--forward deepsdf)" in " ".join(r.stderr.split())
    assert not (tmp_path / "d.nii.gz").exists()
