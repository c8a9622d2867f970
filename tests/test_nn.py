import contextlib
import json
import os
import socket
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import sdmnn
from sdmnn import Grid, ModelError, ParameterError, SdmnnError
from sdmnn.dataset import make_dataset
from sdmnn.nn import load_model
from sdmnn.nn.model import SDMNN, InferenceSDMNN, SDMNNConfig
from sdmnn.nn.prune import narrowed
from sdmnn.nn.train import TrainConfig, train, weighted_mse

TINY = Grid((16, 16, 8), (0.8, 0.7, 0.8), (-5.4, -5.1, -1.7))
TINY_CHANNELS = (8, 8, 8)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.zarr"
    make_dataset(path, "cochlea", "random:6", seed=0, grid=TINY, progress=False)
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "m"
    train(TrainConfig(data=[str(tiny_data)], val=str(tiny_data), steps=3, batch=2, channels=TINY_CHANNELS,
                      hidden=32, eval_every=2, out=str(out)), progress=False)
    return out


def test_network_maps_parameters_to_a_volume():
    net = SDMNN(SDMNNConfig(out_shape=(16, 16, 8), channels=(8, 8, 8), hidden=16))
    assert net(torch.zeros(3, 4)).shape == (3, 16, 16, 8)


@pytest.mark.parametrize("n_params, shape", [(1, (13, 7, 30)), (16, (8, 9, 17)), (6, (40, 32, 56))])
def test_network_takes_any_grid_shape_and_any_parameter_count(n_params, shape):
    net = SDMNN(SDMNNConfig(n_params=n_params, out_shape=shape, channels=(8, 8, 8), hidden=16))
    x = torch.zeros(2, n_params, requires_grad=True)
    out = net(x)
    assert out.shape == (2, *shape)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="n_params >= 1"):
        SDMNNConfig(n_params=0, out_shape=shape)


def test_checkpoint_round_trip_predicts_the_same(tiny_model, cochlea):
    m = load_model(tiny_model)
    assert m.family.name == "cochlea" and m.grid == TINY
    one = m.predict(cochlea.defaults)
    assert one.shape == TINY.shape and one.dtype == np.float32
    batch = m.predict(np.array([list(cochlea.defaults.values())] * 2))
    assert batch.shape == (2, *TINY.shape) and np.allclose(batch[0], one, atol=1e-5)
    meta = json.loads((tiny_model / "model.json").read_text())
    for key in ("family", "parameters", "grid", "normalisation", "arch", "config", "training", "sdmnn_version", "accuracy"):
        assert key in meta
    assert meta["training"]["steps"] == 3


def test_prediction_is_differentiable_in_the_parameters(tiny_model, cochlea):
    m = load_model(tiny_model)
    p = torch.tensor([list(cochlea.defaults.values())], requires_grad=True)
    m.predict_torch(p).square().mean().backward()
    assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("params, message", [
    ({"a": 9.0, "alpha": 0.5, "b": 0.1, "phi": 0.0}, "a must lie in"),
    ([3.0, 0.5, 0.1], "expected"),
    ([3.0, float("nan"), 0.1, 0.0], "finite"),
    ({"a": 3.0, "alpha": True, "b": 0.1, "phi": 0.0}, "alpha must be a number"),
    ({"a": 3.0, "alpha": "0.5", "b": 0.1, "phi": 0.0}, "alpha must be a number"),
    (["3", "0.5", "0.1", "0"], "a must be a number"),
    ([3.0, True, 0.1, 0.0], "alpha must be a number"),
    (np.zeros((0, 4)), "with B >= 1"),
    ("abc", "expected parameters of shape"),
])
def test_bad_parameters_are_refused(tiny_model, params, message):
    with pytest.raises(ParameterError, match=message):
        load_model(tiny_model).predict(params)


def test_predict_returns_one_volume_per_mapping_of_a_list(tiny_model, cochlea):
    model = load_model(tiny_model)
    d, shape = cochlea.defaults, model.grid.shape
    assert model.predict(d).shape == shape and model.predict(list(d.values())).shape == shape
    two = model.predict([d, {**d, "a": 4.0}])
    assert two.shape == (2, *shape) and np.allclose(two[0], model.predict(d), atol=1e-5)
    from types import MappingProxyType

    assert model.predict(MappingProxyType(d)).shape == shape  # any mapping is one shape
    assert model.predict((MappingProxyType(d), d)).shape == (2, *shape)  # a tuple of mappings is a batch
    assert model.predict(np.array([list(d.values())] * 3)).shape == (3, *shape)


def test_tampered_or_truncated_weights_are_refused(tiny_model, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    w = bad / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="truncated or were changed"):
        load_model(bad)
    w.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ModelError, match="truncated or were changed"):
        load_model(bad)


def test_checkpoint_for_other_ranges_or_architecture_is_refused(tiny_model, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["parameters"][0]["high"] = 9.0
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="other parameters or ranges"):
        load_model(bad)
    meta = json.loads((tiny_model / "model.json").read_text())
    meta["config"]["channels"] = [8, 8, 16]
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(SdmnnError, match=r"do not match the architecture in model.json \((Missing key|Unexpected key|size mismatch)"):
        load_model(bad)
    for description, message in (([], "not a model description \\(a JSON object\\), but a JSON list"),
                                 ({k: v for k, v in meta.items() if k != "family"}, "names no family")):
        (bad / "model.json").write_text(json.dumps(description))
        with pytest.raises(SdmnnError, match=message):
            load_model(bad)


def test_the_inference_network_computes_the_trained_function():
    """InferenceSDMNN (folded coordinate and parameter channels, the upsampling as a convolution) against the SDMNN it
    comes from, on a grid that is not a multiple of the network's stride (so padding and crop are exercised) and with
    weights far from their initial values (so every folded term matters)."""
    torch.manual_seed(0)
    net = SDMNN(SDMNNConfig(n_params=3, out_shape=(21, 18, 11), channels=(8, 8, 8), hidden=32)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p += 0.05 * torch.randn_like(p)
        x = torch.rand(3, 3) * 2 - 1
        ref = net(x)
        assert ref.shape == (3, 21, 18, 11) and ref.std() > 0.1
        assert (InferenceSDMNN(net)(x) - ref).abs().max() < 1e-5 * ref.abs().max()
        assert (InferenceSDMNN(net, torch.bfloat16)(x) - ref).abs().max() < 0.02 * ref.abs().max()


def test_the_inference_network_reads_a_lift_of_low_rank_where_it_saves_and_keeps_the_function():
    """Where the lift's outputs over the parameter box span few directions (two parameters, a 512 x 64 lift), the
    inference form reads it as two thin layers, and the SDM stays that of the trained network, at parameters it did
    not sample (the corners of the box among them)."""
    torch.manual_seed(1)
    net = SDMNN(SDMNNConfig(n_params=2, out_shape=(16, 16, 16), channels=(8, 8), hidden=64)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p += 0.05 * torch.randn_like(p)
        fast = InferenceSDMNN(net)
        assert fast.lift_factored and fast.lift_rank * (512 + 64) <= 512 * 64 / 2
        corners = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
        x = torch.cat([corners, torch.rand(12, 2) * 2 - 1])
        ref = net(x)
        assert (fast(x) - ref).abs().max() < 1e-3 * ref.abs().max()


def test_the_sign_aware_loss_adds_the_weighted_size_of_wrong_signs_only():
    target = torch.tensor([-0.05, 0.02, 1.0, -2.0])
    right = torch.tensor([-0.03, 0.05, 1.2, -1.5])  # every sign right: the sign term adds nothing
    assert weighted_mse(right, target, 20, 0.15, sign_weight=0.5) == weighted_mse(right, target, 20, 0.15)
    wrong = torch.tensor([0.01, -0.03, 1.2, -1.5])  # the two voxels near the surface on the wrong side
    w = 1 + 20 * torch.exp(-target.abs() / 0.15)
    added = 0.5 * (w[0] * 0.01 + w[1] * 0.03) / w.sum()
    assert torch.isclose(weighted_mse(wrong, target, 20, 0.15, 0.5) - weighted_mse(wrong, target, 20, 0.15), added)


def test_the_peak_term_adds_the_excess_of_errors_over_its_tolerance_only():
    target = torch.tensor([-0.05, 0.02, 1.0, -2.0])
    small = target + torch.tensor([0.04, -0.03, 0.04, 0.0])  # no error over 0.05 mm: the term adds nothing
    assert weighted_mse(small, target, 20, 0.15, peak_weight=100) == weighted_mse(small, target, 20, 0.15)
    large = target + torch.tensor([0.0, -0.15, 0.08, 0.0])
    w = 1 + 20 * torch.exp(-target.abs() / 0.15)
    added = 100 * (0.10 + 0.03) / w.sum()
    assert torch.isclose(weighted_mse(large, target, 20, 0.15, peak_weight=100) - weighted_mse(large, target, 20, 0.15), added)
    with pytest.raises(SdmnnError, match="--peak-weight"):
        train(TrainConfig(peak_weight=-1, data=[], steps=1))
    with pytest.raises(SdmnnError, match="--peak-tol"):
        train(TrainConfig(peak_tol=float("nan"), data=[], steps=1))


def test_bfloat16_prediction_matches_float32_and_bad_precision_is_refused(cochlea):
    """The fast path (convolution stages in bfloat16) against float32 on the shipped model: far below its own error."""
    if sdmnn.nn.shipped_model_path() is None:
        pytest.skip("no shipped model")
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    with contextlib.nullcontext() if native else pytest.warns(UserWarning, match="is emulated: about 100x slower"):
        fast = load_model(precision="bfloat16")
    full = load_model(precision="float32")
    assert fast.precision == "bfloat16" and full.precision == "float32"
    x = np.random.default_rng(0).uniform(cochlea.space.low, cochlea.space.high, (4, len(cochlea.space)))
    diff = np.abs(fast.predict(x) - full.predict(x))
    assert diff.max() < 0.05 and diff.mean() < 0.005
    # the fit's differentiable path stays float32, and so does its path without gradients (the inference form)
    t = torch.tensor(x[:3])
    assert torch.equal(fast.predict_torch(t), full.predict_torch(t))
    quick = fast.predict_torch(t, differentiable=False)
    assert not quick.requires_grad and quick.dtype == torch.float32
    assert (quick - full.predict_torch(t)).abs().max() < 5e-4  # the lift read at low rank: 0.0002 mm here
    with pytest.raises(SdmnnError, match="precision must be one of"):
        load_model(precision="half")


def test_fine_tuning_starts_from_the_given_model(tiny_model, tiny_data, tmp_path):
    source = load_model(tiny_model)
    cfg = TrainConfig(data=[str(tiny_data)], steps=1, batch=2, lr=1e-12, channels=TINY_CHANNELS, hidden=32,
                      init=str(tiny_model), out=str(tmp_path / "ft"))
    train(cfg, progress=False)
    tuned = load_model(tmp_path / "ft")
    x = np.array(list(sdmnn.get_family("cochlea").defaults.values()))
    assert np.allclose(tuned.predict(x), source.predict(x), atol=1e-4)  # one step at lr 1e-12: the same weights
    for channels in [(8, 4), (16, 8, 8)]:  # another depth; wider somewhere
        with pytest.raises(SdmnnError, match=r"that model has channels \(8, 8, 8\) and hidden 32; give as many --channels, none wider"):
            train(TrainConfig(data=[str(tiny_data)], steps=1, batch=2, channels=channels, hidden=32, init=str(tiny_model),
                              out=str(tmp_path / "other")), progress=False)
    with pytest.raises(SdmnnError, match="that model's architecture is sdmnn, this run's deepsdf"):
        train(TrainConfig(data=[str(tiny_data)], steps=1, batch=2, arch="deepsdf", hidden=32, init=str(tiny_model),
                          out=str(tmp_path / "deep")), progress=False)
    # without --channels, the init model's; narrower ones start from its weights, narrowed
    train(TrainConfig(data=[str(tiny_data)], steps=1, batch=2, lr=1e-12, hidden=32, init=str(tiny_model), out=str(tmp_path / "same")),
          progress=False)
    assert load_model(tmp_path / "same").meta["config"]["channels"] == list(TINY_CHANNELS)
    train(TrainConfig(data=[str(tiny_data)], steps=1, batch=2, lr=1e-12, channels=(4, 8, 4), hidden=32, init=str(tiny_model),
                      out=str(tmp_path / "narrow")), progress=False)
    narrow = load_model(tmp_path / "narrow", precision="float32")
    assert narrow.meta["config"]["channels"] == [4, 8, 4]
    expected = narrowed(source.net, (4, 8, 4))(source.normalise_torch(torch.tensor(x[None], dtype=torch.float32)))
    assert np.allclose(narrow.predict(x), expected.detach().numpy()[0], atol=1e-4)  # one step at lr 1e-12: narrowed weights


def test_narrowing_drops_the_channels_nothing_reads():
    """With the channels that nothing reads gone (other ones at each scale, and for a stage's middle and output
    channels), the narrowed network computes the same function: one channel per GroupNorm group on both sides, so the
    normalisation is unchanged. At full width it is the same network."""
    torch.manual_seed(0)
    net = SDMNN(SDMNNConfig(out_shape=(16, 16, 8), channels=(8, 8, 8), hidden=16)).eval()
    live_coarse, live_mid, live_out = [1, 4, 6, 7], [[3, 6], [1, 2, 4, 7]], [[0, 7], [0, 3, 5, 6]]

    def dead(live):
        return [k for k in range(8) if k not in live]

    with torch.no_grad():
        net.heads[0].weight[:, dead(live_coarse)] = 0
        net.stages[0].body[0].weight[:, dead(live_coarse)] = 0
        for i, stage in enumerate(net.stages):
            stage.body[3].weight[:, dead(live_mid[i])] = 0
            net.heads[i + 1].weight[:, dead(live_out[i])] = 0
        net.stages[1].body[0].weight[:, dead(live_out[0])] = 0
        net.shuffle.weight[:, dead(live_out[1])] = 0
        x = torch.rand(3, 4) * 2 - 1
        small = narrowed(net, (4, 2, 4)).eval()
        assert small.config.channels == (4, 2, 4)
        assert torch.allclose(small(x), net(x), atol=1e-5)
        assert torch.allclose(narrowed(net, (8, 8, 8))(x), net(x), atol=1e-5)
        assert not torch.allclose(narrowed(net, (2, 2, 2))(x), net(x), atol=1e-3)  # live channels dropped: another function
    with pytest.raises(ModelError, match=r"channels must have 3 scales, none wider than \(8, 8, 8\); got \(8, 16, 8\)"):
        narrowed(net, (8, 16, 8))


def test_narrowing_keeps_groupnorm_groups_together():
    """GroupNorm normalises contiguous groups of gcd(channels, 8) channels. Where the group count stays (16 -> 8)
    the same number is kept from each group, where the group size stays (24 -> 12) whole groups are kept; one group's
    channels are made far more important, so a global choice would break both."""
    torch.manual_seed(0)
    net = SDMNN(SDMNNConfig(out_shape=(16, 16, 8), channels=(8, 24, 16), hidden=16)).eval()
    with torch.no_grad():
        for i, stage in enumerate(net.stages):
            for norm in (stage.body[1], stage.body[4]):
                norm.weight.copy_(torch.arange(len(norm.weight)) + 1.0)  # the weight names the channel it came from
            stage.body[3].weight[:, :3] *= 100  # the first middle group
            net.heads[i + 1].weight[:, :3] *= 100  # the first output group
        net.stages[1].body[0].weight[:, :3] *= 100
        small = narrowed(net, (8, 12, 8))
    for norm_old, norm_new in [(net.stages[0].body[1], small.stages[0].body[1]), (net.stages[0].body[4], small.stages[0].body[4]),
                               (net.stages[1].body[1], small.stages[1].body[1]), (net.stages[1].body[4], small.stages[1].body[4])]:
        kept = norm_new.weight.detach().long() - 1
        size_old, size_new = len(norm_old.weight) // norm_old.num_groups, len(norm_new.weight) // norm_new.num_groups
        for group in kept.view(norm_new.num_groups, size_new):  # each new group from one old group
            assert len(set((group // size_old).tolist())) == 1, kept
        if norm_new.num_groups == norm_old.num_groups:  # the same count from every old group
            assert sorted((kept // size_old).tolist()) == sorted(list(range(norm_old.num_groups)) * size_new)


def test_training_resumes_where_it_stopped(tiny_data, tmp_path):
    cfg = TrainConfig(data=[str(tiny_data)], steps=2, batch=2, channels=TINY_CHANNELS, hidden=32, out=str(tmp_path / "r"))
    train(cfg, progress=False)
    cfg.steps = 4
    result = train(cfg, progress=False)
    assert result["steps"] == 4
    log = [json.loads(line) for line in (tmp_path / "r" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("final")] == [2, 4]


def test_training_on_an_unfinished_dataset_says_so(tmp_path):
    from sdmnn.dataset import create_store, design_points, run_task

    fam = sdmnn.get_family("cochlea")
    create_store(tmp_path / "part.zarr", fam, TINY, "random:4", 0, design_points("random:4", fam, seed=0), task_size=2)
    run_task(str(tmp_path / "part.zarr"), 0, 2)  # half of it, as an interrupted run leaves it
    cfg = TrainConfig(data=[str(tmp_path / "part.zarr")], steps=1, batch=2, channels=TINY_CHANNELS, hidden=32,
                      out=str(tmp_path / "r"))
    with pytest.warns(UserWarning, match="holds 2 of its design's 4 samples"):
        train(cfg, progress=False)


def test_ddp_training_with_two_gloo_processes(tiny_data, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    with socket.socket() as s:  # a free port, not a fixed one another job may hold
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([torchrun, "--nproc_per_node=2", f"--master_port={port}", "-m", "sdmnn.nn.train", "cochlea",
                        "--data", str(tiny_data), "--steps", "2", "--batch", "2", "--channels", "8,8,8",
                        "--threads", "1", "-o", str(tmp_path / "ddp")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert meta["training"]["steps"] == 2 and meta["training"]["samples_seen"] == 2 * 2 * 2


def test_training_without_data_is_refused(tmp_path):
    with pytest.raises(SdmnnError, match="at least one dataset"):
        train(TrainConfig(data=[], out=str(tmp_path / "x")), progress=False)


def test_deepsdf_baseline_trains_saves_and_predicts_a_volume(tiny_data, tmp_path, cochlea):
    out = tmp_path / "d"
    train(TrainConfig(arch="deepsdf", data=[str(tiny_data)], val=str(tiny_data), steps=3, batch=2, hidden=32, points=256,
                      eval_every=2, out=str(out)), progress=False)
    m = load_model(out)
    assert m.arch == "deepsdf"
    sdm = m.predict(cochlea.defaults)
    assert sdm.shape == TINY.shape and np.all(np.abs(sdm) <= 2.0 + 1e-6)  # tanh output on a 2 mm clamp
    p = torch.tensor([list(cochlea.defaults.values())], requires_grad=True)
    m.predict_torch(p).sum().backward()
    assert torch.isfinite(p.grad).all()


@pytest.mark.skipif(sdmnn.nn.shipped_model_path() is None, reason="no shipped model")
def test_shipped_model_is_accurate_on_held_out_parameters(cochlea):
    """Against the exact SDM on parameters it never saw (a seed no training design used)."""
    from sdmnn.dataset import design_points
    from sdmnn.nn.metrics import sdm_errors

    model = sdmnn.load_model()
    assert model.family.name == "cochlea" and model.grid == cochlea.grid
    for vector in design_points("random:3", cochlea, seed=123):
        e = sdm_errors(model.predict(vector), sdmnn.exact_sdm(cochlea.mesh(vector), cochlea.grid))
        assert e["mae"] < 0.08 and e["band_mae"] < 0.1 and e["wrong_sign"] < 0.01, e


def test_online_buffer_fills_in_the_background_and_training_runs_with_it(tiny_data, tmp_path):
    import time

    from sdmnn.nn.train import _OnlineBuffer

    buffer = _OnlineBuffer("cochlea", TINY, seed=0, workers=1, capacity=4)
    deadline = time.time() + 120
    while buffer.count < 6 and time.time() < deadline:  # more than the capacity: the ring wraps
        time.sleep(0.2)
    buffer.stop.set()
    assert buffer.count >= 6 and len(buffer.x) == 4
    x, y = buffer.sample(np.random.default_rng(0), 3)
    assert x.shape == (3, 4) and tuple(y.shape) == (3, *TINY.shape)
    result = train(TrainConfig(data=[str(tiny_data)], online=True, steps=3, batch=2, channels=TINY_CHANNELS, hidden=32,
                               out=str(tmp_path / "o")), progress=False)
    assert result["steps"] == 3


def test_training_on_online_samples_only(tmp_path):
    result = train(TrainConfig(data=[], online=True, steps=2, batch=1, channels=TINY_CHANNELS, hidden=32,
                               out=str(tmp_path / "online")), progress=False)
    assert result["steps"] == 2
    meta = json.loads((tmp_path / "online" / "model.json").read_text())
    assert meta["training"]["samples_seen"] == 2 and meta["training"]["config"]["online"] is True


def test_device_auto_runs_on_the_cpu_here_and_a_missing_gpu_is_one_sentence(tiny_model):
    from sdmnn.runtime import resolve_device

    net = load_model(tiny_model, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert net.device.type == expected
    assert net.predict(net.family.defaults).shape == net.grid.shape
    with pytest.raises(SdmnnError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SdmnnError, match="no CUDA GPU"):
            load_model(tiny_model, device="cuda")
        r = subprocess.run([sys.executable, "-m", "sdmnn.cli", "sdm", "cochlea", "--forward", "sdmnn", "--device", "cuda",
                            "-o", "x.nii.gz"], capture_output=True, text=True, timeout=120, cwd=tiny_model)
        assert r.returncode == 2 and "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr


def test_hard_example_sampling_draws_cases_in_proportion_to_their_loss(tiny_data, tmp_path):
    """The priorities are each case's weighted_mse (from the first pass, then from training steps), and the hard share of
    a batch is drawn in proportion to them."""
    from sdmnn.dataset import open_dataset
    from sdmnn.nn.train import _HardCases, _batch

    ds = open_dataset(tiny_data)
    cfg = TrainConfig(near_weight=20, near_scale=0.15, sign_weight=0.05)
    torch.manual_seed(0)
    net = SDMNN(SDMNNConfig(n_params=4, out_shape=TINY.shape, channels=TINY_CHANNELS, hidden=32))
    hard = _HardCases(net, ds.x, ds.sdm, cfg, torch.device("cpu"), batch=4)  # batches of 4 over 6 cases: a ragged end
    with torch.no_grad():
        each = [weighted_mse(net(ds.x[i : i + 1]), ds.sdm[i : i + 1], 20, 0.15, 0.05).item() for i in range(len(ds.x))]
    assert np.allclose(hard.loss, each, rtol=1e-5)
    hard.loss[:] = [1, 0, 0, 3, 0, 0]
    rng = np.random.default_rng(0)
    drawn = np.concatenate([_batch(ds.x, ds.sdm, None, rng, 8, hard, 0.5)[2][:4] for _ in range(500)])
    assert set(drawn) == {0, 3} and abs(np.mean(drawn == 3) - 0.75) < 0.05
    x, y, idx = _batch(ds.x, ds.sdm, None, rng, 8, hard, 0.5)
    assert torch.equal(x, ds.x[idx]) and torch.equal(y, ds.sdm[idx])
    hard.update(np.array([1, 2]), torch.tensor([0.5, 0.25]))
    assert list(hard.loss) == [1, 0.5, 0.25, 3, 0, 0]
    result = train(TrainConfig(data=[str(tiny_data)], hard=0.5, steps=3, batch=4, channels=TINY_CHANNELS, hidden=32,
                               out=str(tmp_path / "h")), progress=False)
    assert result["steps"] == 3
    for bad in (dict(hard=1.5), dict(hard=0.5, arch="deepsdf")):
        with pytest.raises(SdmnnError, match="--hard"):
            train(TrainConfig(data=[str(tiny_data)], steps=1, batch=2, out=str(tmp_path / "bad"), **bad), progress=False)


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_adaptive_threads_leave_two_collapsed_threads_for_one_and_come_back_when_they_are_fast_again():
    from sdmnn.runtime import AdaptiveThreads

    clock = _Clock()
    policy = AdaptiveThreads(2, start=2, clock=clock)
    for _ in range(5):  # quiet: two threads, no try of one before FIRST_PROBE
        assert policy.choose() == 2
        policy.record(2, 0.005)
    clock.now = 1.0
    assert policy.choose() == 1  # the try of one thread is due: it loses, and the next is twice as far away
    policy.record(1, 0.008)
    assert policy.current == 2 and policy.wait == 2.0
    clock.now = 2.9
    assert policy.choose() == 2
    policy.record(2, 0.35)  # the cores became busy: two spinning threads collapse
    assert policy.choose() == 1
    policy.record(1, 0.015)
    assert policy.current == 1 and policy.wait == AdaptiveThreads.FIRST_PROBE
    policy.record(1, 0.05)  # a slow call on one thread alone does not make it try two
    assert policy.choose() == 1
    for k in range(6):  # while two threads keep losing, they are tried at doubling intervals, up to LAST_PROBE
        clock.now = policy.next_probe
        assert policy.choose() == 2
        policy.record(2, 0.35)
        assert policy.current == 1 and policy.wait == min(2 ** (k + 1), AdaptiveThreads.LAST_PROBE)
    clock.now = policy.next_probe  # the load is gone: two threads beat one's last call and take over
    policy.record(1, 0.008)
    assert policy.choose() == 2
    policy.record(2, 0.005)
    assert policy.current == 2
    assert AdaptiveThreads(1, start=1, clock=clock).choose() == 1  # one core: nothing to choose


def test_predict_keeps_given_threads_and_adapts_without(tiny_model):
    m = load_model(tiny_model, threads=1)
    x = m.family.defaults
    m.predict(x)
    assert torch.get_num_threads() == 1 and m.threads == 1 and m._adaptive is None
    m.threads = None  # the default: per call
    m._adaptive.next_probe = 0.0  # a try of the count not in use is due
    m._adaptive.current = 2
    m.predict(x)
    assert torch.get_num_threads() == 1 and 1 in m._adaptive.recent
    for bad in (0, "x", 1.5):
        with pytest.raises(SdmnnError, match="threads must be an integer >= 1"):
            m.threads = bad


def test_predict_runs_the_traced_inference_network_for_every_batch_size(tiny_model):
    """The trace is made at the first call (batch 1 here) and must compute what InferenceSDMNN computes at any batch
    size, on a grid the network pads and crops."""
    m = load_model(tiny_model, threads=1, precision="float32")
    rng = np.random.default_rng(0)
    x = rng.uniform(m.family.space.low, m.family.space.high, (5, len(m.family.space)))
    first = m.predict(x[0])
    assert isinstance(m._traced, torch.jit.ScriptModule)
    with torch.no_grad():
        eager = m._fast(m.normalise_torch(torch.tensor(x, dtype=torch.float32))).numpy()
    assert np.allclose(first, eager[0], rtol=1e-5, atol=1e-6)  # float rounding differs between batch sizes
    assert np.allclose(m.predict(x, batch_size=3), eager, rtol=1e-5, atol=1e-6)  # batches of 3 and 2


def test_a_refused_training_leaves_no_folder_and_a_resume_names_what_differs(tiny_model, tiny_data, tmp_path):
    base = dict(data=[str(tiny_data)], steps=1, batch=2, hidden=32)
    with pytest.raises(SdmnnError, match="--init"):  # wider than the model it starts from
        train(TrainConfig(**base, channels=(16, 16, 16), init=str(tiny_model), out=str(tmp_path / "wide")), progress=False)
    assert not (tmp_path / "wide").exists()
    train(TrainConfig(**base, channels=TINY_CHANNELS, out=str(tmp_path / "run")), progress=False)
    from sdmnn.io import _umask

    for name in ("model.safetensors", "last.safetensors", "model.json"):  # readable like any output
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o666 & ~_umask(), name
    with pytest.raises(SdmnnError, match=r"differs from this one \(channels \[8, 8, 8\] there, \[8, 8, 4\] here\)"):
        train(TrainConfig(**{**base, "steps": 2}, channels=(8, 8, 4), out=str(tmp_path / "run")), progress=False)


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_an_interrupted_training_keeps_its_steps_and_the_same_command_resumes(tiny_data, tmp_path, monkeypatch, capsys, name):
    """Ctrl-C (SIGINT), or a batch system's SIGTERM, during training ends the step it interrupts, writes the
    resumable checkpoint and stops; the rerun's log holds each step once."""
    import signal

    import sdmnn.nn.train as training

    calls = {"n": 0}
    real = training._batch

    def interrupted_at_the_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), getattr(signal, name))
        return real(*args, **kwargs)

    cfg = TrainConfig(data=[str(tiny_data)], steps=5, batch=2, channels=TINY_CHANNELS, hidden=32, eval_every=1,
                      out=str(tmp_path / "run"))
    before = signal.getsignal(getattr(signal, name))  # (SIGINT: SIG_IGN where the tests run as a background job)
    monkeypatch.setattr(training, "_batch", interrupted_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert "interrupted at step 3" in capsys.readouterr().out and (tmp_path / "run" / "last.json").exists()
    assert signal.getsignal(getattr(signal, name)) is before  # the usual handling again
    with open(tmp_path / "run" / "train.jsonl", "a") as f:  # steps logged after the checkpoint, as a kill leaves them
        f.write('{"step": 4, "loss": 1.0}\n')
    monkeypatch.setattr(training, "_batch", real)
    assert train(cfg, progress=False)["steps"] == 5
    assert "at step 3" in capsys.readouterr().out  # "resuming ... at step 3"
    log = (tmp_path / "run" / "train.jsonl").read_text()
    assert [json.loads(line)["step"] for line in log.splitlines()] == [1, 2, 3, 4, 5, 5]  # 5 twice: the final line
    assert train(cfg, progress=False)["complete"] and "is complete at step 5" in capsys.readouterr().out
    assert (tmp_path / "run" / "train.jsonl").read_text() == log  # a finished run rerun: nothing trained or written


def test_a_resume_with_other_training_settings_says_which(tiny_data, tmp_path):
    base = dict(data=[str(tiny_data)], batch=2, channels=TINY_CHANNELS, hidden=32, out=str(tmp_path / "run"))
    train(TrainConfig(**base, steps=1, lr=1e-3), progress=False)
    with pytest.warns(UserWarning, match=r"other training settings than its last run \(lr 0.001 there, 0.0005 here\): "
                                         r"they apply from step 1 on"):
        train(TrainConfig(**base, steps=2, lr=5e-4), progress=False)
    import warnings

    with warnings.catch_warnings():  # a longer run, reported more often, its data named another way: nothing to say
        warnings.simplefilter("error")
        train(TrainConfig(**{**base, "data": [os.path.relpath(tiny_data)]}, steps=3, lr=5e-4, eval_every=1), progress=False)
