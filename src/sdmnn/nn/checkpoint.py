"""Checkpoints: a folder with ``model.safetensors`` (weights) and ``model.json`` (what they are).

The JSON names the family, its parameters and ranges, the grid, the normalisation, the architecture,
the training data and steps, the package version, the measured accuracy and the SHA-256 of the
weights. Loading refuses a checkpoint whose JSON does not match its weights or the family. Never pickle.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..checks import is_integer
from ..errors import FileError, ModelError, ParameterError, SdmnnError
from ..grid import Grid
from ..io import atomic_path, usual_permissions
from ..shapes import Family
from ..shapes.registry import stored_family
from .deepsdf import DeepSDF, DeepSDFConfig
from .model import SDMNN, InferenceSDMNN, SDMNNConfig

#: The forward-model architectures a checkpoint may hold: name -> (module class, config dataclass).
ARCHITECTURES = {"sdmnn": (SDMNN, SDMNNConfig), "deepsdf": (DeepSDF, DeepSDFConfig)}
#: The models shipped inside the package, one folder ``{family}-{arch}`` each.
MODELS = Path(__file__).resolve().parent.parent / "models"

FORMAT = 1
NORMALISATION = "u = 2 * (x - low) / (high - low) - 1, per parameter, from the family's declared ranges"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(folder, model: torch.nn.Module, meta: dict, extra_tensors: dict | None = None, name: str = "model") -> Path:
    """Write ``{name}.safetensors`` and ``{name}.json`` (atomically) into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors.update({k: v.detach().contiguous().cpu() for k, v in (extra_tensors or {}).items()})
    weights = folder / f"{name}.safetensors"
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp))
        usual_permissions(tmp)  # safetensors writes a private file anew
    meta = {**meta, "format": FORMAT, "sdmnn_version": __version__, "weights": weights.name, "weights_sha256": _sha256(weights)}
    with atomic_path(folder / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def read_checkpoint(folder, name: str = "model") -> tuple[dict, dict]:
    """(meta, tensors) of a checkpoint folder, after checking the weights against the JSON."""
    from safetensors.torch import load_file

    folder = Path(folder)
    js, weights = folder / f"{name}.json", folder / f"{name}.safetensors"
    if not js.is_file() or not weights.is_file():
        raise FileError(f"{folder}: not a model folder (needs {name}.json and {name}.safetensors)")
    try:
        meta = json.loads(js.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{js}: not a readable model description ({e})") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{js}: not a model description (a JSON object), but a JSON {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise ModelError(f"{js}: unknown checkpoint format {meta.get('format')!r}")
    if meta.get("weights_sha256") != _sha256(weights):
        raise ModelError(f"{weights} does not match the checksum in {js.name}: the weights are truncated or were changed")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error kinds on a damaged file
        raise ModelError(f"{weights}: cannot be read as safetensors ({e})") from None
    return meta, tensors


def model_meta(family: Family, grid: Grid, arch: str, config: dict, training: dict) -> dict:
    return {
        "arch": arch, "config": config, "family": family.name, "family_source": family.source, "parameters": family.space.to_dict(),
        "grid": grid.to_dict(), "normalisation": NORMALISATION, "training": training,
    }


def check_meta(meta: dict, folder) -> tuple[Family, Grid]:
    """The family and grid a checkpoint was trained on; refuses one whose family no longer matches."""
    try:
        family = stored_family(meta, folder)
        grid = Grid.from_dict(meta["grid"])
    except (KeyError, TypeError) as e:
        raise ModelError(f"{folder}: the model description lacks {e}") from None
    if meta.get("parameters") != family.space.to_dict():
        raise ModelError(f"{folder}: the model was trained on other parameters or ranges than the {family.name} family declares")
    return family, grid


def check_trained_for(net, family: Family, what: str = "the model") -> None:
    """Refuse (one sentence naming ``what``) a model trained for another family than ``family``: by name, or one of
    the same name whose parameters or ranges are not the ones it declares now (a family file edited after the
    training: the network would answer for the old shapes). Its grid may differ from the family's: a model trained on
    a dataset of another grid answers on that one (``net.grid``)."""
    trained = net.family
    source = f" ({family.source})" if family.source else ""
    if trained.name != family.name:
        raise ModelError(f"{what} was trained for the {trained.name} family, not {family.name}")
    if trained.space.to_dict() != family.space.to_dict():
        raise ModelError(f"{what} was trained on other parameters or ranges than the {family.name} family{source} "
                         "declares: train a model for the family as it is now (sdmnn train)")


class Predictor:
    """A trained forward model: ``predict(params)`` -> SDM(s) in mm on ``grid``; ``predict_torch`` is differentiable
    with respect to the (unnormalised) parameters, or without gradients the faster float32 path."""

    def __init__(self, net: torch.nn.Module, family: Family, grid: Grid, meta: dict, path=None, device: str = "cpu",
                 threads: int | None = None, precision: str = "float32"):
        self.device = torch.device(device)
        self.threads = threads
        self.net = net.to(self.device).eval()
        #: ``predict`` runs an SDMNN as an ``InferenceSDMNN`` (the same function within 0.001 mm inside the parameter
        #: box, faster), its convolutions in this precision ("bfloat16" or "float32"); ``predict_torch`` (the fit's)
        #: runs the network as trained, or in float32 without gradients.
        self.precision = precision
        self._fast = self.net
        if isinstance(self.net, SDMNN):
            self._fast = InferenceSDMNN(self.net, torch.bfloat16 if precision == "bfloat16" else torch.float32).eval()
        self._traced = None
        self._fast32 = None  # predict_torch's without gradients, made at its first use
        self.family, self.grid, self.meta, self.path = family, grid, meta, path
        space = family.space
        self._low = torch.tensor(space.low, dtype=torch.float32, device=self.device)
        self._span = torch.tensor(space.high - space.low, dtype=torch.float32, device=self.device)

    @property
    def threads(self) -> int:
        """torch threads of ``predict`` on the CPU: a number given at load (or set here) is kept; by default
        (None) each call takes what ``runtime.AdaptiveThreads`` chooses from the times of the calls before it, starting
        with every core on a quiet machine and one thread when the load average shows the cores busy."""
        return self._threads or self._adaptive.current

    @threads.setter
    def threads(self, threads: int | None) -> None:
        from ..runtime import AdaptiveThreads, torch_threads, usable_cores

        if threads is not None and not (is_integer(threads) and threads >= 1):
            raise SdmnnError(f"threads must be an integer >= 1 (or None: chosen per call), got {threads!r}")
        self._threads = threads
        self._adaptive = None if threads else AdaptiveThreads(usable_cores(), start=torch_threads())

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    def normalise_torch(self, params: torch.Tensor) -> torch.Tensor:
        return 2 * (params - self._low) / self._span - 1

    def _check_shape(self, params):
        if params.ndim != 2 or params.shape[1] != len(self.family.space):
            raise ParameterError(f"expected parameters of shape (B, {len(self.family.space)}), got {tuple(params.shape)}")

    def predict_torch(self, params: torch.Tensor, differentiable: bool = True) -> torch.Tensor:
        """(B, d) parameters in the family's units (a tensor, not checked against the ranges as ``predict`` checks
        them: the fit keeps its own inside the box) -> (B, nx, ny, nz) SDMs (mm), on the model's device, float32.
        ``differentiable``: through the network as trained (gradients flow to ``params``); False: without gradients,
        for an SDMNN through its inference form in float32 whatever ``precision`` says (the same function within
        0.001 mm inside the parameter box, faster; every network SDM of the fit)."""
        self._check_shape(params)
        x = self.normalise_torch(params.float().to(self.device))
        if differentiable:
            return self.net(x)
        if self._fast32 is None:
            self._fast32 = (InferenceSDMNN(self.net, torch.float32).eval() if isinstance(self.net, SDMNN) and self.precision != "float32"
                            else self._fast)
        with torch.no_grad():
            return self._fast32(x)

    def _inference(self, x: torch.Tensor) -> torch.Tensor:
        """The network ``predict`` runs on normalised parameters: on the CPU, the InferenceSDMNN traced into TorchScript
        at the first call (the same operators without Python between them: 3.7 against 4.3 ms at batch 1 on this
        project's 2 cores; one trace serves every batch size), elsewhere (or once torch drops ``jit.trace``, which it
        has deprecated) the module itself."""
        if self._traced is None:
            self._traced = self._fast
            if self.device.type == "cpu" and isinstance(self._fast, InferenceSDMNN) and hasattr(torch.jit, "trace"):
                with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                    # its deprecation, and the tracer's note on GroupNorm's check of the input's size (a check, not
                    # a value in the trace): tests/test_nn.py compares the trace with the module at other batch sizes
                    warnings.simplefilter("ignore")
                    self._traced = torch.jit.trace(self._fast, x.clone(), check_trace=False)
        return self._traced(x)

    def predict(self, params, batch_size: int = 16) -> np.ndarray:
        """A mapping or a (d,) vector -> one SDM; a (B, d) array or list of mappings -> (B, nx, ny, nz). float32, mm."""
        if not (is_integer(batch_size) and batch_size >= 1):
            raise SdmnnError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        x = torch.from_numpy(self.family.space.matrix(params).astype(np.float32))  # checks what params are first
        single = self.family.space.is_single(params)
        self._check_shape(x)
        cpu, adaptive = self.device.type == "cpu", self._adaptive
        out = []
        with torch.inference_mode():
            for s in range(0, len(x), batch_size):
                chunk = x[s : s + batch_size]
                threads = self._threads or adaptive.choose()
                if cpu and threads != torch.get_num_threads():
                    torch.set_num_threads(threads)
                t0 = time.perf_counter()
                out.append(self._inference(self.normalise_torch(chunk.to(self.device))).float().cpu().numpy())
                if cpu and adaptive is not None:
                    adaptive.record(threads, (time.perf_counter() - t0) / len(chunk))
        sdm = np.concatenate(out)
        return sdm[0] if single else sdm


def shipped_model_path(family="cochlea", arch: str = "sdmnn") -> Path | None:
    """The folder of the model shipped in the package for ``family`` (a name or a built-in Family), or None."""
    if isinstance(family, Family):
        if family.source is not None:
            return None
        family = family.name
    path = MODELS / f"{family}-{arch}"
    return path if (path / "model.json").exists() else None


PRECISIONS = ("auto", "float32", "bfloat16")


def load_model(path=None, family="cochlea", arch: str = "sdmnn", device: str = "cpu", threads: int | None = None,
               precision: str = "auto") -> Predictor:
    """A trained model: ``load_model()`` is the shipped cochlea SDMNN; ``load_model(folder)`` another. ``device``:
    cpu, cuda (cuda:N) or auto (CUDA when torch sees a GPU). ``threads``: torch threads of ``predict`` on the CPU
    (default: chosen per call from the calls' times, see ``Predictor.threads``).
    ``precision`` of ``predict``: float32, bfloat16 (the SDMNN's convolution stages; see docs/bench/nn.md for what it
    costs in accuracy), or auto: bfloat16 on a CPU whose oneDNN has native bfloat16 (AVX512-BF16 or AMX), else float32."""
    from ..runtime import resolve_device

    if precision not in PRECISIONS:
        raise SdmnnError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = resolve_device(device)
    if path is None:
        path = shipped_model_path(family, arch)
        if path is None:
            name = family.name if isinstance(family, Family) else family
            raise SdmnnError(f"no {arch} model is shipped for the {name} family: train one with `sdmnn train` and give its "
                             "folder (--model), or use the exact forward model (--forward exact)")
    meta, tensors = read_checkpoint(path)
    fam, grid = check_meta(meta, path)
    if meta.get("arch") not in ARCHITECTURES:
        raise SdmnnError(f"{path}: unknown architecture {meta.get('arch')!r} in model.json")
    model_cls, config_cls = ARCHITECTURES[meta["arch"]]
    try:
        net = model_cls(config_cls(**meta["config"]))
    except (TypeError, ValueError) as e:
        raise SdmnnError(f"{path}: the architecture in model.json is not valid ({e})") from None
    if tuple(net.config.out_shape) != grid.shape:
        raise SdmnnError(f"{path}: the network's output shape {net.config.out_shape} does not match its grid {grid.shape}")
    try:
        net.load_state_dict(tensors)
    except RuntimeError as e:  # torch's first line says only "Error(s) in loading state_dict"; the next, which tensor
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise SdmnnError(f"{path}: the weights do not match the architecture in model.json "
                         f"({(lines[1:] or lines or ['?'])[0]:.300})") from None
    if meta["arch"] == "sdmnn":
        net = net.to(memory_format=torch.channels_last_3d)
    cpu = torch.device(device).type == "cpu"
    native = cpu and torch.ops.mkldnn._is_mkldnn_bf16_supported()  # bfloat16 in the CPU's own instructions
    if precision == "auto":
        precision = "bfloat16" if native and meta["arch"] == "sdmnn" else "float32"
    elif precision == "bfloat16" and meta["arch"] != "sdmnn":
        raise SdmnnError(f"precision bfloat16 is for the sdmnn architecture, not {meta['arch']}")
    elif precision == "bfloat16" and cpu and not native:
        warnings.warn("precision bfloat16 on a CPU without native bfloat16 (AVX512-BF16 or AMX) is emulated: about 100x "
                      "slower than float32 (which precision auto picks on this CPU)", stacklevel=2)
    return Predictor(net, fam, grid, meta, path, device, threads, precision)
