"""Training of SDMNN: static stores plus an optional online stream, a time-based cosine schedule,
a near-surface-weighted MSE, validation, resumable checkpoints, a JSONL log, and DDP under torchrun.
"""
from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import SdmnnError
from ..io import atomic_path, check_output, make_folder
from .checkpoint import ARCHITECTURES, model_meta, read_checkpoint, save_checkpoint
from .metrics import sdm_errors
from .deepsdf import DeepSDF, DeepSDFConfig, sample_points
from .model import SDMNN, SDMNNConfig


DEFAULT_CHANNELS = (32, 32, 24)


@dataclass
class TrainConfig:
    family: str = "cochlea"
    data: list[str] = field(default_factory=list)  # static dataset stores
    val: str | None = None  # a held-out store for validation
    online: bool = False  # add fresh random SDMs computed in background processes
    online_workers: int = 1
    online_buffer: int = 512  # most recent online samples kept for sampling
    minutes: float | None = 60.0  # wall-clock budget (the schedule follows it)
    steps: int | None = None  # or a fixed number of steps (whichever ends first)
    batch: int = 8
    lr: float = 2e-3
    warmup: int = 100
    near_weight: float = 4.0  # loss weight 1 + near_weight * exp(-|d| / near_scale)
    near_scale: float = 0.5  # mm
    sign_weight: float = 0.0  # plus sign_weight * the same-weighted mean of |prediction| where its sign is wrong (mm)
    peak_weight: float = 0.0  # plus peak_weight * (|error| - peak_tol) at each voxel whose error exceeds peak_tol (see weighted_mse)
    peak_tol: float = 0.05  # mm
    hard: float = 0.0  # share of each batch drawn from the static sets in proportion to each case's loss when last seen
    init: str | None = None  # start from this model's weights (a model folder, or "shipped"); fresh optimiser and schedule
    arch: str = "sdmnn"  # or "deepsdf", the baseline
    channels: tuple[int, ...] | None = None  # SDMNN widths; None: those of the --init model, else DEFAULT_CHANNELS
    hidden: int = 256
    points: int = 4096  # deepsdf: SDF samples per shape and step
    clamp: float = 2.0  # deepsdf: clamp of the distance (mm)
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # cpu, cuda (cuda:N) or auto: CUDA when torch sees a GPU
    eval_every: int = 250
    out: str = "runs/cochlea"

    def to_dict(self) -> dict:
        return asdict(self)


def weighted_mse(pred, target, near_weight, near_scale, sign_weight=0.0, peak_weight=0.0, peak_tol=0.05):
    """The SDMNN loss: MSE weighted by 1 + near_weight * exp(-|d| / near_scale), plus, with ``sign_weight``, a
    sign-aware term: the same-weighted mean of |prediction| over voxels where its sign is wrong (a hinge at zero), whose
    gradient does not fade as the error shrinks, so it keeps pushing the zero level set across those voxels; plus, with
    ``peak_weight``, a term on the largest errors only: peak_weight * (|error| - peak_tol) at each voxel where |error| >
    peak_tol (mm), not weighted towards the surface, summed and divided like the rest by the sum of the MSE's weights (so
    a larger near_weight dilutes it): it leaves the many small errors to the MSE and pulls on the few voxels that make
    the maximum error wherever they are. A hinge, not its square: its pull per voxel is bounded, so a burst of large
    errors (a loss spike) does not feed itself (with the square at weight 100, one fine-tuning run blew up 500-fold at
    step 1686 and took a hundred steps to recover)."""
    terms, w = _loss_terms(pred, target, near_weight, near_scale, sign_weight, peak_weight, peak_tol)
    return terms.sum() / w.sum()


def _loss_terms(pred, target, near_weight, near_scale, sign_weight, peak_weight, peak_tol):
    """The per-voxel terms of ``weighted_mse`` and their weights (its value is terms.sum() / weights.sum())."""
    w = 1 + near_weight * torch.exp(-target.abs() / near_scale)
    terms = w * (pred - target) ** 2
    if sign_weight:
        terms = terms + sign_weight * w * torch.relu(-pred * torch.sign(target))
    if peak_weight:
        terms = terms + peak_weight * torch.relu((pred - target).abs() - peak_tol)
    return terms, w


def _cfg_loss_terms(pred, target, cfg):
    """``_loss_terms`` with a TrainConfig's weights."""
    return _loss_terms(pred, target, cfg.near_weight, cfg.near_scale, cfg.sign_weight, cfg.peak_weight, cfg.peak_tol)


class _HardCases:
    """Online hard-example sampling over the static sets: each case's priority is its loss when last seen (one pass over
    every case at the start gives the first), and a share of each batch is drawn in proportion to it, so that the cases
    the network gets most wrong are met again until their loss falls like the others'."""

    def __init__(self, net, X, Y, cfg, device, batch=16):
        net.eval()
        with torch.no_grad():
            self.loss = torch.cat([_case_losses(*_cfg_loss_terms(net(X[s : s + batch].to(device)), Y[s : s + batch].to(device), cfg)).cpu()
                                   for s in range(0, len(X), batch)]).double().numpy()
        net.train()

    def draw(self, rng, n):
        return rng.choice(len(self.loss), n, p=self.loss / self.loss.sum())

    def update(self, idx, losses):
        self.loss[idx] = losses.cpu().double().numpy()


def _case_losses(terms, w):
    """``weighted_mse`` of each case of a batch, from its terms and weights."""
    return terms.detach().flatten(1).sum(1) / w.flatten(1).sum(1)


def _distributed(device):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


class _OnlineBuffer:
    """A background thread fills a ring buffer from an OnlineSDMs stream; training samples from what
    is there and never waits for it."""

    def __init__(self, family, grid, seed, workers, capacity):
        from ..stream import OnlineSDMs

        self.stream = OnlineSDMs(family, grid, seed=seed, workers=workers)
        self.x, self.y, self.capacity, self.count = [], [], capacity, 0
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._fill, daemon=True)
        self.thread.start()

    def _fill(self):
        for x, y in self.stream:
            with self.lock:
                if len(self.x) < self.capacity:
                    self.x.append(x), self.y.append(y)
                else:
                    self.x[self.count % self.capacity], self.y[self.count % self.capacity] = x, y
                self.count += 1
            if self.stop.is_set():
                return

    def sample(self, rng, n):
        with self.lock:
            if not self.x:
                return None
            idx = rng.integers(0, len(self.x), n)
            return torch.stack([self.x[i] for i in idx]), torch.stack([self.y[i] for i in idx])


def check_settings(cfg: TrainConfig) -> None:
    """Refuse settings no run can use, before any data is read or folder made: one sentence naming the option."""
    for option, value in (("--sign-weight", cfg.sign_weight), ("--peak-weight", cfg.peak_weight), ("--peak-tol", cfg.peak_tol),
                          ("--near-weight", cfg.near_weight)):
        if not (value >= 0 and math.isfinite(value)):
            raise SdmnnError(f"{option} must be a number >= 0, got {value}")
    for option, value in (("--lr", cfg.lr), ("--near-scale", cfg.near_scale), ("--minutes", cfg.minutes)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise SdmnnError(f"{option} must be a number > 0, got {value}")
    for option, value in (("--steps", cfg.steps), ("--batch", cfg.batch), ("--threads", cfg.threads), ("--eval-every", cfg.eval_every),
                          ("--online-workers", cfg.online_workers), ("--hidden", cfg.hidden), ("--points", cfg.points)):
        if value is not None and value < 1:
            raise SdmnnError(f"{option} must be at least 1, got {value}")
    if not 0 <= cfg.hard <= 1:
        raise SdmnnError(f"--hard is a share of each batch, between 0 and 1, got {cfg.hard}")
    if cfg.hard and (cfg.arch != "sdmnn" or not cfg.data):
        raise SdmnnError("--hard draws from the static datasets (--data) and applies to --arch sdmnn only")
    if cfg.arch == "deepsdf" and (cfg.sign_weight or cfg.peak_weight):
        raise SdmnnError("--sign-weight and --peak-weight shape the SDMNN's loss; --arch deepsdf trains on clamped L1")
    default = {name: f.default for name, f in TrainConfig.__dataclass_fields__.items()}
    if cfg.arch == "deepsdf" and cfg.channels is not None:
        raise SdmnnError("--channels sets the SDMNN's decoder; --arch deepsdf has none (its width is --hidden)")
    if cfg.arch == "sdmnn" and cfg.points != default["points"]:
        raise SdmnnError("--points sets the SDF samples of --arch deepsdf; the SDMNN learns whole SDMs")
    if not cfg.online and cfg.online_workers != default["online_workers"]:
        raise SdmnnError("--online-workers sets the processes of --online, which is not given")
    check_output(cfg.out, what="folder")


def train(cfg: TrainConfig, progress: bool = True, command: str | None = None) -> dict:
    """Train (or resume) an SDMNN model; writes ``cfg.out``/model.{json,safetensors}, a resumable
    checkpoint and train.jsonl. Returns the steps, seconds and final validation metrics (``complete``: True where the
    run had already finished and nothing was trained)."""
    from ..dataset import open_dataset
    from ..shapes import get_family, require_valid

    from ..runtime import resolve_device, usable_cores

    check_settings(cfg)
    device = torch.device(resolve_device(cfg.device))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per torchrun process
    rank, world = _distributed(device)
    # every core unless told otherwise: a model loaded earlier in this process may have left torch on one thread
    torch.set_num_threads(cfg.threads or usable_cores())
    family = get_family(cfg.family)
    require_valid(family)
    if not cfg.data and not cfg.online:
        raise SdmnnError("give at least one dataset (--data) or --online")
    sets = [open_dataset(p, family=family) for p in cfg.data]
    grid = sets[0].grid if sets else family.grid
    for p, s in zip(cfg.data, sets):
        if s.grid != grid:
            raise SdmnnError(f"{p} is on another grid than {cfg.data[0]}")
        if len(s) < s.meta["count"] and rank == 0:
            warnings.warn(f"{p} holds {len(s)} of its design's {s.meta['count']} samples (an interrupted `sdmnn dataset "
                          "make`; its same command finishes it): training on those", UserWarning, stacklevel=2)
    X = torch.cat([s.x for s in sets]) if sets else torch.empty(0, len(family.space))
    Y = torch.cat([s.sdm for s in sets]) if sets else torch.empty(0, *grid.shape)
    val = open_dataset(cfg.val, family=family, grid=grid) if cfg.val else None

    if cfg.arch not in ARCHITECTURES:
        raise SdmnnError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {cfg.arch!r}")
    source = _init_source(cfg.init, family, grid, cfg.arch) if cfg.init else None
    torch.manual_seed(cfg.seed)
    if cfg.arch == "deepsdf":
        mcfg = DeepSDFConfig(n_params=len(family.space), out_shape=grid.shape, hidden=cfg.hidden, clamp=cfg.clamp)
        net = DeepSDF(mcfg)
        if val is not None:  # a full-volume prediction costs ~1 s per shape: validate on the first 8
            val.x, val.sdm = val.x[:8], val.sdm[:8]
    else:
        try:
            channels = cfg.channels or (source.net.config.channels if source is not None else DEFAULT_CHANNELS)
            mcfg = SDMNNConfig(n_params=len(family.space), out_shape=grid.shape, channels=tuple(channels), hidden=cfg.hidden)
        except ValueError as e:
            raise SdmnnError(f"the network cannot be built: {e}") from None
        net = SDMNN(mcfg).to(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    out = Path(cfg.out)
    state = {"step": 0, "seconds": 0.0, "samples_seen": 0}
    resuming = (out / "last.json").exists()
    if source is not None and not resuming:
        _init_from(net, source, cfg.init, mcfg, cfg.arch, announce=rank == 0)
    if resuming:
        meta, tensors = read_checkpoint(out, "last")
        differ = _differences(meta, {"family": family.name, "arch": cfg.arch, **json.loads(json.dumps(mcfg.to_dict()))})
        if differ:
            raise SdmnnError(f"{out} holds a run that differs from this one ({differ}): give the options it was "
                             "started with to resume it, or choose another --out")
        changed = _changed_training(meta.get("training", {}).get("config", {}), cfg.to_dict())
        if changed and rank == 0:
            warnings.warn(f"resuming {out} with other training settings than its last run ({changed}): they apply from "
                          f"step {meta['state']['step']} on", UserWarning, stacklevel=2)
        net.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("opt.")})
        _load_optimizer(opt, tensors, meta["optimizer"])
        state = meta["state"]
        if rank == 0:
            print(f"resuming {out} at step {state['step']} ({state['seconds'] / 60:.1f} min trained)", flush=True)
    budget = (cfg.minutes or math.inf) * 60
    total_steps = cfg.steps or math.inf
    if resuming and max(state["step"] / total_steps, state["seconds"] / budget) >= 1 and (out / "model.json").exists():
        if rank == 0:  # nothing to train: leave the run's model and log as they are
            print(f"{out} is complete at step {state['step']} ({state['seconds'] / 60:.1f} min trained): give a larger "
                  "--steps or --minutes to train on", flush=True)
        return {"steps": state["step"], "seconds": state["seconds"], "complete": True}
    if rank == 0:
        make_folder(out)  # once the settings are known to work: a refused run leaves no folder
    net = net.to(device)
    _optimizer_to(opt, device)
    model = (torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
             if world > 1 else net)
    online = _OnlineBuffer(family, grid, cfg.seed * 1000 + rank, cfg.online_workers, cfg.online_buffer) if cfg.online else None
    if cfg.hard and rank == 0:
        print(f"--hard: the loss of each of the {len(X)} training cases, one pass ...", flush=True)
    hard = _HardCases(net, X, Y, cfg, device) if cfg.hard else None

    rng = np.random.default_rng([cfg.seed, rank, state["step"]])
    if rank == 0 and not resuming and (out / "train.jsonl").exists():
        print(f"{out} holds a log but no checkpoint (a run stopped before its first): starting over", flush=True)
    log = _log_from(out / "train.jsonl", state["step"]) if rank == 0 else None
    from tqdm.auto import tqdm

    bar = tqdm(total=1000, disable=not progress or rank != 0, bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
    t_start = time.perf_counter() - state["seconds"]
    last_save, last_metrics = time.perf_counter(), {}
    interrupted = _Interrupt()
    warmup = min(cfg.warmup, max(1, cfg.steps // 10)) if cfg.steps else cfg.warmup  # a short run reaches its --lr too
    with interrupted:
        while True:
            elapsed = time.perf_counter() - t_start
            frac = max(state["step"] / total_steps, elapsed / budget)
            stop = torch.tensor(float(frac >= 1.0 or interrupted.asked), device=device)
            if world > 1:
                torch.distributed.all_reduce(stop, op=torch.distributed.ReduceOp.MAX)
            if stop.item():
                break
            lr = cfg.lr * min(1.0, (state["step"] + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
            for g in opt.param_groups:
                g["lr"] = lr
            xb, yb, idx = _batch(X, Y, online, rng, cfg.batch, hard, cfg.hard)
            xb = xb.to(device, non_blocking=True)
            if cfg.arch == "deepsdf":  # L1 on clamped SDF samples, near the surface and uniform
                pts, target = sample_points(yb, torch.arange(len(yb)), cfg.points, cfg.clamp, rng)
                pred = model(xb, net.coords[pts.to(device)])
                loss = (pred - target.to(device).clamp(-cfg.clamp, cfg.clamp)).abs().mean()
            else:
                terms, w = _cfg_loss_terms(model(xb), yb.to(device, non_blocking=True), cfg)
                loss = terms.sum() / w.sum()
                if hard is not None:  # the static cases are the batch's last rows
                    hard.update(idx, _case_losses(terms, w)[len(xb) - len(idx):])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            state["samples_seen"] += len(xb) * world
            state["seconds"] = time.perf_counter() - t_start
            bar.n = int(1000 * min(frac, 1.0))
            if rank == 0 and (state["step"] % cfg.eval_every == 0):
                last_metrics = validate(net, val) if val else {}
                record = {"step": state["step"], "seconds": round(state["seconds"], 1), "loss": loss.item(), "lr": lr,
                          "online_samples": online.count if online else 0, **{f"val_{k}": v for k, v in last_metrics.items()}}
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.set_postfix_str(f"step {state['step']} loss {loss.item():.4g} lr {lr:.2g}" + (f" val MAE {last_metrics['mae']:.4f} mm" if last_metrics else ""))
            if rank == 0 and time.perf_counter() - last_save > 300:
                _save(out, net, opt, family, grid, mcfg, cfg, state, command, name="last")
                last_save = time.perf_counter()
    bar.close()
    metrics = {}
    if rank == 0:
        _save(out, net, opt, family, grid, mcfg, cfg, state, command, name="last")
        if interrupted.asked:  # Ctrl-C: what was trained is kept, at a step's end, for the same command to resume
            print(f"\ninterrupted at step {state['step']}: saved {out}/last.*; rerun the same command to resume", flush=True)
        else:
            metrics = validate(net, val) if val else {}
            _save(out, net, None, family, grid, mcfg, cfg, state, command, name="model", accuracy={"validation": metrics})
            log.write(json.dumps({"step": state["step"], "seconds": round(state["seconds"], 1), "final": True,
                                  **{f"val_{k}": v for k, v in metrics.items()}}) + "\n")
        log.close()
    if online:
        online.stop.set()
    if interrupted.asked:
        raise KeyboardInterrupt
    if world > 1:
        torch.distributed.barrier()
    return {"steps": state["step"], "seconds": state["seconds"], **metrics}


def _batch(X, Y, online, rng, n, hard=None, hard_share=0.0):
    """A training batch and the indices of its static cases (its last rows): from the static sets, with half from the
    online buffer when it has samples, and ``hard_share`` of the static part drawn by ``hard`` in proportion to loss."""
    n_online = n // 2 if online is not None and len(X) else (n if online is not None else 0)
    parts = []
    if n_online:
        got = online.sample(rng, n_online)
        if got is None:
            n_online = 0
            if not len(X):  # online only, nothing computed yet: wait for the first samples
                while (got := online.sample(rng, n)) is None:
                    time.sleep(0.2)
                return got[0], got[1].contiguous(), np.empty(0, dtype=np.int64)
        else:
            parts.append(got)
    n_hard = round(hard_share * (n - n_online)) if hard is not None else 0
    idx = np.concatenate([hard.draw(rng, n_hard) if n_hard else np.empty(0, dtype=np.int64),
                          rng.integers(0, len(X), n - n_online - n_hard)])
    t = torch.from_numpy(idx)
    parts.append((X[t], Y[t]))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), idx


@torch.no_grad()
def validate(net, val, batch: int = 16) -> dict:
    net.eval()
    device = next(net.parameters()).device
    pred = torch.cat([net(val.x[s : s + batch].to(device)).cpu() for s in range(0, len(val), batch)]).numpy()
    net.train()
    return sdm_errors(pred, val.sdm.numpy(), voxel=max(val.grid.spacing), model_error=True)


def _init_source(init, family, grid, arch):
    """The model ``init`` (a folder, or "shipped") a run starts from, checked: same architecture, family and grid."""
    from .checkpoint import check_trained_for, load_model

    source = load_model(None if init == "shipped" else init, family=family, arch=arch)
    if source.arch != arch:
        raise SdmnnError(f"--init {init}: that model's architecture is {source.arch}, this run's {arch}")
    check_trained_for(source, family, f"--init {init}: that model")
    if source.grid != grid:
        raise SdmnnError(f"--init {init}: that model was trained on another grid than this run's "
                         f"({'x'.join(map(str, source.grid.shape))} against {'x'.join(map(str, grid.shape))} voxels)")
    return source


def _init_from(net, source, init, mcfg, arch, announce=True):
    """Load ``source``'s weights into ``net``: the same architecture, or, for an SDMNN, a wider one of the same depth and
    hidden width, narrowed to ``net``'s channels (``prune.narrowed``)."""
    from .prune import narrowed

    theirs, ours = source.meta["config"], json.loads(json.dumps(mcfg.to_dict()))
    if theirs == ours:
        net.load_state_dict(source.net.state_dict())
        return
    if arch != "sdmnn":
        raise SdmnnError(f"--init {init}: that model's settings {theirs} differ from this run's {ours}; give the same ones")
    same_rest = {k: v for k, v in theirs.items() if k != "channels"} == {k: v for k, v in ours.items() if k != "channels"}
    same_depth = len(theirs["channels"]) == len(ours["channels"])
    if not (same_rest and same_depth and all(a >= b for a, b in zip(theirs["channels"], ours["channels"]))):
        raise SdmnnError(f"--init {init}: that model has channels {tuple(theirs['channels'])} and hidden {theirs['hidden']}; "
                         f"give as many --channels, none wider (narrower ones start from its most useful channels), and "
                         f"the same --hidden (this run: channels {mcfg.channels}, hidden {mcfg.hidden})")
    net.load_state_dict(narrowed(source.net, mcfg.channels).state_dict())
    if announce:
        print(f"--init {init}: narrowed from channels {tuple(theirs['channels'])} to {mcfg.channels}, keeping the channels "
              "that contribute most", flush=True)


def _optimizer_to(opt, device):
    """Move a (resumed) optimizer's state to ``device``."""
    for state in opt.state.values():
        for k, v in state.items():
            if torch.is_tensor(v) and k != "step":
                state[k] = v.to(device)


def _log_from(path: Path, step: int):
    """train.jsonl opened for appending, holding the lines of steps up to ``step`` (the checkpoint the run goes on
    from; 0: none) alone: a run stopped after its last checkpoint, or before its first, had logged steps that the
    rerun trains again."""
    if path.exists():
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", math.inf) <= step:
                    kept.append(line + "\n")
            except (ValueError, AttributeError):
                pass
        with atomic_path(path) as tmp:
            tmp.write_text("".join(kept))
    return open(path, "a")


class _Interrupt:
    """Within ``with``: the first Ctrl-C (SIGINT) or SIGTERM (a batch system's time limit) sets ``asked``, for the
    training loop to stop at the end of its step (every rank stops with the first that was asked, through the loop's
    stop flag); a second one acts at once. Outside the main thread, where no signal handler can be set, they act at
    once. (Under torchrun, when a rank dies, the others' SIGTERM waits in the step's collective for torchrun's SIGKILL.)"""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.asked = False
        self._before = {}

    def _ask(self, signum, frame):
        import signal

        self.asked = True
        for name, before in self._before.items():  # a second one: at once
            signal.signal(getattr(signal, name), before or signal.SIG_DFL)

    def __enter__(self):
        import signal

        from ..runtime import can_handle_signals

        if can_handle_signals():
            self._before = {name: signal.signal(getattr(signal, name), self._ask) for name in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        import signal

        for name, before in self._before.items():
            signal.signal(getattr(signal, name), before if before is not None else signal.SIG_DFL)
        return False


def _listed(there: dict, now: dict, keys, same=lambda k, a, b: a == b) -> str:
    """Those of ``keys`` whose values differ (by ``same``) between a checkpoint (``there``) and this run (``now``),
    e.g. "channels [32, 32, 24] there, [32, 32, 16] here"; '' when none do."""
    return "; ".join(f"{k} {there.get(k)} there, {now.get(k)} here" for k in keys if not same(k, there.get(k), now.get(k)))


def _differences(meta: dict, now: dict) -> str:
    """What differs between a checkpoint's ``meta`` and this run's family, architecture and network settings
    (``now``); '' when nothing does."""
    there = {"family": meta.get("family"), "arch": meta.get("arch"), **meta.get("config", {})}
    return _listed(there, now, {**there, **now})


#: Training settings a resumed run may give other values without a word: its length, machine and reporting, the
#: weights it started from (a resumed run starts from its own), and the network's settings (which ``_differences``
#: compares in the checkpoint's own terms).
_RESUME_FREE = {"minutes", "steps", "threads", "device", "eval_every", "online_workers", "out", "init",
                "family", "arch", "channels", "hidden", "points", "clamp"}


def _changed_training(there: dict, now: dict) -> str:
    """The training settings (data, schedule, loss, ...) of a resumed run that differ from its last run's, e.g.
    "lr 7e-05 there, 0.0003 here"; '' when none do. Paths are compared resolved."""
    def same(k, a, b):
        if k in ("data", "val") and a is not None and b is not None:
            as_paths = lambda v: [str(Path(p).resolve()) for p in ([v] if isinstance(v, str) else v)]
            return as_paths(a) == as_paths(b)
        return a == b

    return _listed(there, now, [k for k in now if k not in _RESUME_FREE and k in there], same)


def _save(out, net, opt, family, grid, mcfg, cfg, state, command, name, accuracy=None):
    training = {"config": cfg.to_dict(), "steps": state["step"], "seconds": round(state["seconds"], 1),
                "samples_seen": state["samples_seen"], "command": command,
                "threads": torch.get_num_threads(), "torch": torch.__version__}
    meta = model_meta(family, grid, cfg.arch, mcfg.to_dict(), training)
    meta["state"] = state
    if accuracy is not None:
        meta["accuracy"] = accuracy
    extra = {}
    if opt is not None:
        extra, meta["optimizer"] = _optimizer_tensors(opt)
    save_checkpoint(out, net, meta, extra, name=name)


def _optimizer_tensors(opt):
    """AdamW state as flat tensors (safetensors cannot hold nested dicts) plus its JSON-able rest."""
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v for i, s in sd["state"].items() for k, v in s.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt, tensors, meta):
    state = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


if __name__ == "__main__":  # ``torchrun --nproc_per_node=2 -m sdmnn.nn.train FAMILY ...``: the ``sdmnn train`` command
    from ..cli import main

    sys.argv = [sys.argv[0], "train", *sys.argv[1:]]
    main()
