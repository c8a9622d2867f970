"""What the viewer shows, computed: a family's SDM (the network's or the exact one) for a state of the sliders,
on three orthogonal slices of the display grid, as a surface, or as files to download.

The display grid is the image's own grid when an image is open (so every slice is a plane of its voxels and
every position is in its world millimetres, LPS), else the fit's grid, else the family's grid. The shape is
built in the family's model frame and placed in the world by the pose: the fit's MAP pose moved by the pose
sliders (``rx, ry, rz`` radians about the world axes through the shape's centre, ``tx, ty, tz`` mm), as in
``sdmnn.fit``; the identity without a fit.
"""
from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..checks import is_integer, is_number
from ..errors import FileError, SdmnnError
from ..fitting import POSE_NAMES, Pose
from ..grid import Grid, sample_channels, sdm_channels

FORWARDS = ("sdmnn", "exact")
#: How far the pose sliders move the fitted pose: radians for the rotations, mm for the shifts.
POSE_RANGE = {"rx": 0.5, "ry": 0.5, "rz": 0.5, "tx": 5.0, "ty": 5.0, "tz": 5.0}


@dataclass(frozen=True)
class FitSummary:
    """What the viewer takes from a fit folder's result.json (written by ``FitResult.save``)."""

    folder: Path
    family: str  # its name
    family_ref: str  # what finds it again: the family file (FILE.py:NAME) of a user family, else the name
    params: dict  # MAP shape parameters
    intervals: dict  # name -> (low, high), the 90 % posterior intervals (shape and pose)
    pose: np.ndarray  # (4, 4) model -> world at the MAP
    pose_centre: np.ndarray  # (3,) model-frame point the rotations turn about
    has_pose: bool  # whether the pose was fitted (pose="rigid")
    grid: Grid  # the fitted image's grid
    target: str | None  # the fitted image, where it still is (else None)
    quality: dict

    @staticmethod
    def _image_of(folder: Path, r: dict) -> str | None:
        """The fitted image where it still is: at its path, else at its path from the results' folder (both moved)."""
        for there in (r.get("target"), r.get("target_from_results") and str(folder / r["target_from_results"])):
            if there and Path(there).exists():
                return there
        return None

    @classmethod
    def read(cls, folder) -> "FitSummary":
        folder = Path(folder)
        path = folder / "result.json"
        if not path.is_file():
            raise FileError(f"{folder} is not a fit folder: it has no result.json (write one with `sdmnn fit -o {folder}`)")
        try:
            r = json.loads(path.read_text())
            return cls(folder, r["family"], r.get("family_source") or r["family"], dict(r["map"]), {k: tuple(v) for k, v in r["interval_90"].items()},
                       np.array(r["pose"], float).reshape(4, 4), np.array(r["pose_centre"], float).reshape(3),
                       "rx" in r["names"], Grid.from_dict(r["grid"]), cls._image_of(folder, r),
                       {k: v for k, v in r.get("quality", {}).items() if isinstance(v, (int, float, str))})
        except (ValueError, KeyError, TypeError) as e:
            raise FileError(f"{path} cannot be read as a fit's result ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class State:
    """Where the sliders are: the shape parameters (the family's order), the pose step (``POSE_NAMES``, zeros
    without a fit) and the forward model."""

    params: tuple[float, ...]
    pose: tuple[float, ...] = (0.0,) * 6
    forward: str = "sdmnn"


class Scene:
    """A family (and optionally its network, an image and a fit) and everything the viewer computes from a
    ``State``. Computations are serialised (one user, one browser) and the latest few are cached, so that moving a
    slice, after moving a parameter, costs only the slicing."""

    def __init__(self, family, model=None, image=None, fit: FitSummary | None = None):
        from ..shapes import get_family

        self.family = get_family(family)
        self.fit = fit
        if fit is not None and fit.family != self.family.name:
            raise SdmnnError(f"the fit in {fit.folder} is of the {fit.family} family, not {self.family.name}")
        self.net, self.no_network = _network(self.family, model)
        self.image = None
        if image is not None:
            self.image, self.grid = image
            self.image = np.asarray(self.image)
        else:
            self.grid = fit.grid if fit is not None else self.family.grid
        self._lock = threading.Lock()
        self._centre = None  # centre(), once
        # The network always runs on this one thread: torch keeps a team of worker threads per calling thread, and
        # requests arrive on the server's threads; with teams on several threads spinning on 2 cores, a prediction
        # was markedly slower than from a single thread (docs/bench/view.md).
        self._torch_thread = ThreadPoolExecutor(1, thread_name_prefix="sdmnn-view-torch")
        self._network_sdm = lru_cache(maxsize=4)(self._network_sdm_uncached)
        self._network_channels = lru_cache(maxsize=4)(self._network_channels_uncached)
        self._mesh = lru_cache(maxsize=4)(self._mesh_uncached)
        self._slice = lru_cache(maxsize=48)(self._slice_uncached)
        if self.net is not None:  # the first prediction pays torch's warm-up: not the user's first move
            self._network_sdm(self.state(self.initial()).params)

    # -- the state -------------------------------------------------------------------------------
    @property
    def pose_names(self) -> tuple[str, ...]:
        """The pose sliders: those of a fit with a fitted pose, else none."""
        return POSE_NAMES if self.fit is not None and self.fit.has_pose else ()

    def initial(self) -> dict:
        """The sliders' first positions: the fit's MAP, else the family's defaults."""
        return dict(self.fit.params) if self.fit is not None else dict(self.family.defaults)

    def state(self, params: dict, pose=None, forward: str = "sdmnn") -> State:
        """A checked ``State`` from a full parameter mapping (missing ones are refused by the family's checks)."""
        if forward not in FORWARDS:
            raise SdmnnError(f"forward must be one of {', '.join(FORWARDS)}, got {forward!r}")
        if forward == "sdmnn" and self.net is None:
            raise SdmnnError(self.no_network)
        vector = self.family.space.vector(params)
        # none, or [] (what /api/info lists as the pose of a scene without one): no step
        step = np.zeros(6) if pose is None or (not self.pose_names and isinstance(pose, (list, tuple)) and not pose) else None
        if step is None and isinstance(pose, (list, tuple, np.ndarray)) and all(is_number(v) for v in pose):
            with contextlib.suppress(OverflowError):  # an integer past float's range
                step = np.asarray(pose, float)
        if step is None or step.shape != (6,) or not np.all(np.isfinite(step)):
            raise SdmnnError(f"the pose step is six finite numbers ({', '.join(POSE_NAMES)}), got {pose!r}")
        if not self.pose_names and np.any(step):
            raise SdmnnError("a pose step needs a fit with a fitted pose (--fit of `sdmnn fit --pose rigid`)")
        limits = np.array([POSE_RANGE[n] for n in POSE_NAMES])
        if np.any(np.abs(step) > limits):
            raise SdmnnError("the pose step lies within " + ", ".join(f"{n} ±{POSE_RANGE[n]:g}" for n in POSE_NAMES) +
                             f" (rad, mm), got {step.tolist()}")
        return State(tuple(float(v) for v in vector), tuple(float(v) for v in step), forward)

    def pose(self, state: State) -> np.ndarray:
        """The 4x4 model -> world matrix of ``state``."""
        if self.fit is None:
            return np.eye(4)
        m, c = self.fit.pose, self.fit.pose_centre
        fitted = Pose(m[:3, :3], m[:3, :3] @ c + m[:3, 3], c)
        return fitted.moved(state.pose).matrix()

    # -- volumes ---------------------------------------------------------------------------------
    def _network_sdm_uncached(self, params: tuple) -> np.ndarray:
        return self._torch_thread.submit(self.net.predict, np.array(params)).result()

    def _network_channels_uncached(self, params: tuple):
        """The network's SDM with its second differences (``sdm_channels``), computed once for all slices."""
        import torch

        return sdm_channels(torch.from_numpy(np.asarray(self._network_sdm(params), np.float32)[None]))

    def _mesh_uncached(self, params: tuple, pose: tuple):
        mesh = self.family.mesh(np.array(params))
        return mesh.apply_transform(self.pose(State(params, pose)))

    def sdm_on(self, grid: Grid, state: State, forward: str | None = None) -> np.ndarray:
        """The SDM of ``state`` (mm, negative inside) on any ``grid`` in world mm: the exact one of the posed
        mesh, or the network's, sampled (``sample_sdm``) at the voxels mapped into the model frame (beyond its
        model grid: the border value plus the distance to it, as in ``sdmnn.fit``)."""
        forward = forward or state.forward
        if forward == "exact":
            from ..sdm import exact_sdm

            return exact_sdm(self._mesh(state.params, state.pose), grid)
        import torch

        world = grid.to_world(np.indices(grid.shape).reshape(3, -1).T)
        model = (world - self.pose(state)[:3, 3]) @ self.pose(state)[:3, :3]  # inverse rigid map
        index = torch.from_numpy(self.net.grid.to_index(model)[None].astype(np.float32))  # in the network's own float32
        return sample_channels(self._network_channels(state.params), index, self.net.grid.spacing)[0].numpy().reshape(grid.shape)

    def centre(self) -> list[int]:
        """The display-grid voxel nearest the deepest point of the first shape (the minimum of its exact SDM on
        the family grid, posed): slices through it cut the shape, whatever its form. Computed once."""
        if self._centre is None:
            self._centre = self._deepest()
        return self._centre

    def _deepest(self) -> list[int]:
        from ..sdm import exact_sdm

        state = self.state(self.initial(), forward="exact")
        sdm = exact_sdm(self.family.mesh(np.array(state.params)), self.family.grid)
        deepest = self.family.grid.to_world(np.array(np.unravel_index(np.argmin(sdm), sdm.shape), float))
        pose = self.pose(state)
        index = np.rint(self.grid.to_index(pose[:3, :3] @ deepest + pose[:3, 3])).astype(int)
        return np.clip(index, 0, np.array(self.grid.shape) - 1).tolist()

    def slice_grid(self, axis: int, index: int) -> Grid:
        """The one-voxel-thick grid of plane ``index`` along ``axis`` of the display grid."""
        shape = list(self.grid.shape)
        if not 0 <= index < shape[axis]:
            raise SdmnnError(f"slice {index} along axis {'ijk'[axis]} lies outside the grid (0 to {shape[axis] - 1})")
        corner = np.zeros(3)
        corner[axis] = index
        shape[axis] = 1
        return Grid(tuple(shape), self.grid.spacing, tuple(self.grid.to_world(corner)), self.grid.direction)

    def _slice_uncached(self, state: State, axis: int, index: int, forward: str) -> np.ndarray:
        plane = self.slice_grid(axis, index)  # checks the index
        if forward == "sdmnn" and self.grid == self.net.grid and np.array_equal(self.pose(state), np.eye(4)):
            return np.take(self._network_sdm(state.params), index, axis=axis).astype(np.float32)  # no resampling
        return np.squeeze(self.sdm_on(plane, state, forward), axis=axis).astype(np.float32)

    def slices(self, state: State, positions, difference: bool = False) -> list[dict]:
        """The three planes through ``positions`` (i, j, k; None: ``centre``): for each, its axis, index and ``sdm`` (2-D, the
        first remaining voxel axis first), and with ``difference`` the network's minus the exact SDM; with an
        image, its voxels there too."""
        if positions is None:
            positions = self.centre()
        if (not isinstance(positions, (list, tuple)) or len(positions) != 3
                or not all(is_integer(p) for p in positions)):
            raise SdmnnError(f"slice positions are three voxel indices (i, j, k), integers, got {positions!r}")
        if difference and self.net is None:
            raise SdmnnError(self.no_network)
        out = []
        with self._lock:
            for axis, index in enumerate(int(p) for p in positions):
                plane = {"axis": axis, "index": index, "sdm": self._slice(state, axis, index, state.forward)}
                if difference:
                    plane["difference"] = self._slice(state, axis, index, "sdmnn") - self._slice(state, axis, index, "exact")
                if self.image is not None:
                    plane["image"] = np.take(self.image, index, axis=axis).astype(np.float32)
                out.append(plane)
        return out

    def volume(self, state: State) -> np.ndarray:
        """The SDM of ``state`` on the whole display grid (for the download)."""
        with self._lock:
            return self.sdm_on(self.grid, state).astype(np.float32)

    def surface(self, state: State):
        """The surface shown, as a trimesh in world mm: the posed family mesh for the exact SDM; the zero level
        set of the network's SDM (marching cubes on its model grid) for the network. Empty when the network's
        SDM has no zero crossing."""
        import trimesh

        with self._lock:
            if state.forward == "exact":
                return self._mesh(state.params, state.pose).copy()
            from skimage.measure import marching_cubes

            volume = self._network_sdm(state.params)
            if not volume.min() < 0 < volume.max():
                return trimesh.Trimesh()
            V, F, _, _ = marching_cubes(volume, 0.0)  # faces outward, towards larger SDM (in index space)
            if np.linalg.det(self.net.grid.affine[:3, :3]) < 0:  # a mirrored grid turns index space inside out
                F = F[:, ::-1]
            pose = self.pose(state)
            V = self.net.grid.to_world(V) @ pose[:3, :3].T + pose[:3, 3]
            return trimesh.Trimesh(V, F, process=False)

    def describe(self) -> dict:
        """What the page needs to build itself: parameters, first values, fit intervals, pose sliders, the
        forward models available, the display grid and the image's intensity window."""
        g = self.grid
        info = {
            "family": self.family.name,
            "parameters": [{"name": p.name, "unit": p.unit, "low": p.low, "high": p.high, "default": p.default,
                            "description": p.description} for p in self.family.space.parameters],
            "values": self.initial(),
            "pose": [{"name": n, "unit": "rad" if n.startswith("r") else "mm", "low": -POSE_RANGE[n],
                      "high": POSE_RANGE[n]} for n in self.pose_names],
            "network": self.net is not None, "no_network": self.no_network,
            "grid": {"shape": list(g.shape), "spacing": list(g.spacing), "origin": list(g.origin),
                     "affine": g.affine.tolist()},
            "centre": self.centre(),
            "image": None, "fit": None,
        }
        if self.image is not None:
            sample = self.image.ravel()[:: max(1, self.image.size // 200_000)]
            lo, hi = np.percentile(sample, [0.5, 99.5])
            info["image"] = {"window": [float(lo), float(hi) if hi > lo else float(lo) + 1.0]}
        if self.fit is not None:
            info["fit"] = {"folder": str(self.fit.folder), "params": self.fit.params,
                           "intervals": {k: list(v) for k, v in self.fit.intervals.items()}, "quality": self.fit.quality}
        return info


def _network(family, model):
    """(the network for ``family`` or None, the sentence saying why there is none)."""
    from ..nn.checkpoint import check_trained_for, load_model, shipped_model_path

    if model is None:
        if shipped_model_path(family) is None:
            return None, (f"no network for the {family.name} family is shipped; only the exact SDM is shown "
                          f"(train one with `sdmnn train {family.name}` and open it with --model)")
        net = load_model(family=family)
    else:
        net = load_model(model)
    check_trained_for(net, family, f"the model {model}" if model is not None else "the shipped model")
    return net, ""


def load_scene(family: str | None = None, model=None, image=None, fit=None) -> Scene:
    """A ``Scene`` from paths, as ``sdmnn view`` takes them: the family defaults to the fit's, then to the
    model's, then to the cochlea; the image defaults to the fit's own (its ``target``) when that file (or DICOM folder) is still there."""
    from ..io import load_volume

    summary = FitSummary.read(fit) if fit is not None else None
    if family is None and summary is not None:
        family = summary.family_ref
    elif family is None and model is not None:
        from ..nn.checkpoint import read_checkpoint
        from ..shapes.registry import stored_family

        family = stored_family(read_checkpoint(model)[0], model)
    elif family is None:
        family = "cochlea"
    if image is None and summary is not None and summary.target:  # (one that is still there)
        image = summary.target
    volume = load_volume(image) if image is not None else None
    return Scene(family, model=model, image=volume, fit=summary)
