import os

import numpy as np
import pytest

import sdmnn
from sdmnn import Grid, ParameterError, SdmnnError
from sdmnn.dataset import (DatasetError, create_store, dataset_info, design_points, make_dataset,
                           open_dataset, run_task)

COARSE = Grid((16, 14, 8), (0.8, 0.8, 0.8), (-5.4, -4.9, -1.7))  # the cochlea box, coarsely


def test_grid_design_is_the_full_factorial_with_the_ends(cochlea):
    pts = design_points("grid:5", cochlea)
    assert pts.shape == (625, 4)
    assert np.allclose(pts.min(0), cochlea.space.low) and np.allclose(pts.max(0), cochlea.space.high)
    assert len(np.unique(pts, axis=0)) == 625


def test_sobol_and_random_designs_are_seeded_and_inside_the_box(cochlea):
    for kind in ("sobol:64", "random:64"):
        a, b = design_points(kind, cochlea, seed=1), design_points(kind, cochlea, seed=1)
        assert np.array_equal(a, b) and not np.array_equal(a, design_points(kind, cochlea, seed=2))
        assert np.all(a >= cochlea.space.low) and np.all(a <= cochlea.space.high)


def test_within_restricts_a_design_to_sub_ranges_and_leaves_the_others(cochlea):
    pts = design_points("sobol:256 within a=2:3.3,b=0.05:0.12", cochlea, seed=3)
    a, alpha, b, phi = pts.T
    assert a.min() >= 2 and a.max() <= 3.3 and b.min() >= 0.05 and b.max() <= 0.12
    assert a.max() > 3.2 and b.max() > 0.11  # the sub-range is filled, not a corner of it
    low, high = cochlea.space.low, cochlea.space.high  # the others span the family's whole range
    assert alpha.min() < low[1] + 0.05 * (high[1] - low[1]) and alpha.max() > high[1] - 0.05 * (high[1] - low[1])
    grid = design_points("grid:2 within phi=0:0.5", cochlea)
    assert set(np.unique(grid[:, 3])) == {0.0, 0.5} and set(np.unique(grid[:, 0])) == {low[0], high[0]}


def test_within_is_stored_in_one_spelling_so_a_reworded_rerun_resumes(cochlea):
    from sdmnn.dataset import canonical_design

    one = canonical_design("sobol:8 within b=0.05:0.12, a=2.0:3.3", cochlea)
    assert one == canonical_design("sobol:8 within a=2:3.3,b=0.050:0.12", cochlea) == "sobol:8 within a=2:3.3,b=0.05:0.12"


@pytest.mark.parametrize("within", ["a=1:3", "a=3:2", "c=0:1", "a=2", "a=x:3", "a=2:3,", "a=2:3,a=2.5:3"])
def test_within_refuses_unknown_names_and_ranges_outside_the_family(cochlea, within):
    with pytest.raises(SdmnnError, match="within"):
        design_points(f"random:8 within {within}", cochlea)


def test_held_out_split_never_repeats_a_training_point(cochlea):
    train = design_points("grid:3", cochlea)
    held = design_points("grid:5", cochlea, exclude=train)
    assert len(held) == 625 - 81


def test_csv_design_and_its_range_check(cochlea, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("a,alpha,b,phi\n3,0.5,0.1,0\n4,1.0,0.2,0.3\n")
    assert design_points(f"csv:{good}", cochlea).shape == (2, 4)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,alpha,b,phi\n3,0.5,0.1,0\n9,1.0,0.2,0.3\n")
    with pytest.raises(ParameterError, match="design point 1 is outside"):
        design_points(f"csv:{bad}", cochlea)


@pytest.mark.parametrize("spec", ["grid", "lhs:10", "sobol:x", "random:0"])
def test_unknown_or_malformed_designs_are_refused(cochlea, spec):
    with pytest.raises(SdmnnError):
        design_points(spec, cochlea)


def test_killed_run_resumes_to_the_same_bits_as_a_serial_run(cochlea, tmp_path):
    serial = tmp_path / "serial.zarr"
    make_dataset(serial, "cochlea", "random:6", seed=4, grid=COARSE, task_size=2, progress=False)
    resumed = tmp_path / "resumed.zarr"
    pts = design_points("random:6", cochlea, seed=4)
    create_store(resumed, cochlea, COARSE, "random:6", 4, pts, task_size=2)
    run_task(str(resumed), 2, 4)  # one task finished before the "kill"
    s = make_dataset(resumed, "cochlea", "random:6", seed=4, grid=COARSE, task_size=2, progress=False)
    assert s.written == 4 and s.skipped == 2
    again = make_dataset(resumed, "cochlea", "random:6", seed=4, grid=COARSE, task_size=2, progress=False)
    assert again.written == 0
    a, b = open_dataset(serial), open_dataset(resumed)
    assert np.array_equal(a.sdm.numpy(), b.sdm.numpy()) and np.array_equal(a.params, b.params)
    # the stored SDMs are the exact ones
    assert np.array_equal(a.sdm[5].numpy(), sdmnn.exact_sdm(cochlea.mesh(a.params[5]), COARSE))


def test_an_interrupted_pool_task_stops_between_samples(cochlea, tmp_path, monkeypatch):
    """What a local pool's worker does once the run is interrupted (``_execute`` sets the event): no new sample."""
    import threading

    from sdmnn import dataset

    path = tmp_path / "d.zarr"
    create_store(path, cochlea, COARSE, "random:4", 0, design_points("random:4", cochlea, seed=0), task_size=4)
    stop = threading.Event()
    monkeypatch.setattr(dataset, "_STOP", stop)
    assert run_task(str(path), 0, 2)["written"] == 2
    stop.set()
    assert run_task(str(path), 2, 4)["written"] == 0 and dataset_info(path)["complete"] == 2


def test_ctrl_c_stops_a_pool_run_at_once_and_a_rerun_finishes_it(tmp_path):
    """Ctrl-C reaches the whole process group, pool workers included: the run stops within a sample or two, says how
    far it got, and leaves no traceback."""
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "sdmnn.cli", "dataset", "make", "cochlea", "--design", "sobol:512", "--workers", "2",
               "-o", "d.zarr"]
    run = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and run.poll() is None:  # until the workers have written a sample
        if (tmp_path / "d.zarr" / "zarr.json").exists() and dataset_info(tmp_path / "d.zarr")["complete"] > 0:
            break
        time.sleep(0.2)
    asked = time.time()
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and time.time() - asked < 15, err[-2000:]
    assert "Traceback" not in err and "samples of d.zarr are written; rerun the same command" in err, err[-2000:]
    assert dataset_info(tmp_path / "d.zarr")["complete"] < 512


def test_dask_local_cluster_equals_a_serial_run_bit_for_bit(tmp_path):
    from distributed import LocalCluster

    make_dataset(tmp_path / "serial.zarr", "cochlea", "sobol:4", seed=0, grid=COARSE, task_size=2, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        make_dataset(tmp_path / "dask.zarr", "cochlea", "sobol:4", seed=0, grid=COARSE, task_size=2,
                     scheduler=cluster.scheduler_address, progress=False)
    a, b = open_dataset(tmp_path / "serial.zarr"), open_dataset(tmp_path / "dask.zarr")
    assert len(b) == 4 and np.array_equal(a.sdm.numpy(), b.sdm.numpy())


def test_process_pool_equals_a_serial_run(tmp_path):
    make_dataset(tmp_path / "a.zarr", "cochlea", "random:4", seed=9, grid=COARSE, task_size=1, progress=False)
    make_dataset(tmp_path / "b.zarr", "cochlea", "random:4", seed=9, grid=COARSE, task_size=1, workers=2, progress=False)
    assert np.array_equal(open_dataset(tmp_path / "a.zarr").sdm.numpy(), open_dataset(tmp_path / "b.zarr").sdm.numpy())


def test_existing_output_with_other_metadata_is_refused(tmp_path):
    path = tmp_path / "d.zarr"
    make_dataset(path, "cochlea", "random:2", seed=1, grid=COARSE, progress=False)
    with pytest.raises(DatasetError, match="other metadata"):
        make_dataset(path, "cochlea", "random:2", seed=2, grid=COARSE, progress=False)
    assert dataset_info(path)["complete"] == 2  # nothing lost


def test_a_sample_that_crashes_is_reported_and_the_rest_are_kept(tmp_path, monkeypatch):
    import sdmnn.dataset as ds

    real = ds.compute_sample
    calls = {"n": 0}

    def flaky(family, grid, params):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated worker crash")
        return real(family, grid, params)

    monkeypatch.setattr(ds, "compute_sample", flaky)
    path = tmp_path / "d.zarr"
    s = make_dataset(path, "cochlea", "random:3", seed=1, grid=COARSE, progress=False)
    assert s.written == 2 and len(s.failed) == 1 and "simulated" in s.failed[0][1]
    assert dataset_info(path)["missing"] == 1
    monkeypatch.setattr(ds, "compute_sample", real)
    assert make_dataset(path, "cochlea", "random:3", seed=1, grid=COARSE, progress=False).written == 1


def test_corrupted_store_is_refused(tmp_path):
    path = tmp_path / "d.zarr"
    make_dataset(path, "cochlea", "random:2", seed=1, grid=COARSE, progress=False)
    chunk = next(p for p in (path / "sdm").rglob("*") if p.is_file() and p.parent.name != "sdm" and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:10])  # truncated
    with pytest.raises(DatasetError, match="corrupted or truncated"):
        open_dataset(path)
    (path / "zarr.json").write_text("{ not json")
    with pytest.raises(DatasetError):
        open_dataset(path)


def test_open_dataset_checks_family_and_grid(tmp_path, cochlea):
    path = tmp_path / "d.zarr"
    make_dataset(path, "cochlea", "random:1", seed=1, grid=COARSE, progress=False)
    with pytest.raises(DatasetError, match="not torus"):
        open_dataset(path, family="torus")
    with pytest.raises(DatasetError, match="grid"):
        open_dataset(path, grid=cochlea.grid)
    x, sdm = open_dataset(path)[0]
    assert x.shape == (4,) and float(x.abs().max()) <= 1 and tuple(sdm.shape) == COARSE.shape


def test_dataset_cli_make_info_show(tmp_path):
    import subprocess
    import sys

    cli = [sys.executable, "-m", "sdmnn.cli", "dataset"]
    r = subprocess.run([*cli, "make", "cochlea", "--design", "grid:2", "-o", "t.zarr", "--workers", "2"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "16/16 samples complete" in " ".join(r.stdout.split())
    r = subprocess.run([*cli, "info", "t.zarr"], cwd=tmp_path, capture_output=True, text=True)
    assert "cochlea family, design grid:2" in r.stdout and "16/16" in r.stdout
    r = subprocess.run([*cli, "show", "t.zarr", "--index", "3", "-o", "s.png"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "s.png").exists()
    r = subprocess.run([*cli, "make", "cochlea", "--design", "grid:1", "-o", "u.zarr"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and "at least 2 levels" in r.stderr and not (tmp_path / "u.zarr").exists()


def _die(*args, **kwargs):
    import os

    os._exit(9)  # a worker killed outright, as by the out-of-memory killer


def test_a_killed_worker_process_is_one_sentence_and_the_run_resumes(tmp_path, monkeypatch):
    import sdmnn.dataset as ds

    real = ds.run_task
    monkeypatch.setattr(ds, "run_task", _die)  # the pool pickles it by reference: its processes die
    path = tmp_path / "d.zarr"
    with pytest.raises(DatasetError, match="a worker died"):
        make_dataset(path, "cochlea", "random:4", seed=1, grid=COARSE, task_size=2, workers=2, progress=False)
    monkeypatch.setattr(ds, "run_task", real)
    assert make_dataset(path, "cochlea", "random:4", seed=1, grid=COARSE, task_size=2, workers=2, progress=False).written == 4
    assert dataset_info(path)["complete"] == 4
