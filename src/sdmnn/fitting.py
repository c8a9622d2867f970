"""Bayesian fitting of a family's shape parameters, and of an unknown rigid pose, to an observed image.

The image is taken as it comes: any grid (flipped, oblique, anisotropic; ``Grid``), in world millimetres.
Its voxels are compared with the SDM d(x) of the posed shape at their world positions x:

* ``labels`` (a segmentation; ``label`` picks one value of a multi-label map, needed where it holds several):
  Bernoulli with p(inside) = sigmoid(-d' / tau), the logistic shape model;
* ``sdm`` (an observed SDM in mm): Gaussian noise of scale sigma on the distances;
* ``intensity`` (a CT-like image): I = b + (a - b) B + Gaussian noise of scale sigma, B the voxel's share of
  the inside tissue, Phi(-d' / s) with s the voxel box's spread along the surface's normal, blurred by a
  Gaussian point-spread function: two tissue intensities blended by partial volume and blur. Thick voxels are
  split into near-cubic sub-voxels, where the forward model gives the SDM, blurred there and averaged. a, b and
  sigma are profiled out (closed-form least squares at every evaluation), so the user gives no thresholds.

d' is the SDM as the voxel sees it: shifted by the surface's curvature across the voxel's box (a convex surface
fills less than half of the voxel its centre lies on); see ``_VoxelTerms``.

tau (labels), the blur (intensity) and sigma are estimated at the MAP, and tau never below ``h / (2 pi)`` with
h the voxel size: the logistic whose spread matches a surface known only to within one voxel.

Pose: a rigid map from the model frame (where the family builds its mesh) to the world, about the model
shape's centre ``c``: x_world = R (x_model - c) + p. It starts from the image itself (the principal axes of
a label map or of an SDM's inside; for an intensity image, rotations near the model's orientation, and where that
fit's R^2 is below AUTO_ALL_R2 and its residuals more than noise, or AUTO_ALL_PINNED of its parameters lie at their
range's ends, 360 spread over all of them, each at every shift within 5 mm of a ``centre`` hint or
of where a coarse search of the whole image puts the shape), with a screen of shapes, then is fitted jointly with the
shape. Its posterior is over small
rotations about the world axes at the MAP (``rx, ry, rz``, radians) and shifts (``tx, ty, tz``, mm).

Forward models (the SDM at the voxels, for given shape and pose):
* ``exact``: the family's mesh, posed, and its exact SDM on the image's own grid (exact for any affine);
* ``sdmnn`` (or ``deepsdf``): the network's SDM on its model grid, sampled at the voxels mapped into the
  model frame (trilinear with a second-order correction, ``sdmnn.grid.sample_sdm``: plain trilinear shrinks
  thin tubes; beyond the model grid, the border value plus the distance to it, a sound upper bound of the
  distance there);
* ``hybrid`` (the default): the network's search, then Levenberg-Marquardt on the exact likelihood, first
  with the network's shape Jacobian (one exact SDM a step; two more per thick axis, ``THICK_AXIS``, with the pose
  free), then with the exact one by finite differences.

Posterior: a Gaussian at the MAP. Residuals of real images are spatially correlated (blur, partial volume,
the mesh's own discretisation), so the Laplace approximation (Gauss-Newton Hessian) has its log-likelihood
divided by the number of voxels per independent one: the volume of the residuals' autocorrelation (summed
over the lags where it is significant); where the cluster-robust sandwich is wider (a model wrong in ways
its noise does not say), it is used instead, direction by direction. Samples come from that Gaussian, the
shape truncated to the prior box.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checks import is_integer, is_number
from .errors import FileError, FitError, FitWarning, ImageError
from .grid import Grid, block_mean, sample_gradient, sample_sdm
from .runtime import check_device
from .shapes import get_family

#: The forward models a fit can use: the SDMNN network, the exact SDM, the network's search with an exact
#: polish, and the DeepSDF-style baseline.
FORWARD_MODELS = ("hybrid", "sdmnn", "exact", "deepsdf")
OBSERVED_KINDS = ("labels", "sdm", "intensity")
POSES = ("none", "rigid")
TURNS = ("auto", "near", "all")
POSE_NAMES = ("rx", "ry", "rz", "tx", "ty", "tz")
#: Scales of the pose's parameters in the optimisers (radians, mm): steps of one unit move the surface
#: by about a voxel's fraction alike.
POSE_SCALE = np.array([0.1, 0.1, 0.1, 1.0, 1.0, 1.0])
#: The exact model's pose Jacobian differentiates its SDM along a grid axis over two SDMs of the grid shifted by half the
#: finest spacing where that axis's spacing is over THICK_AXIS times the finest, not over the neighbouring voxels: on
#: label maps of 0.3 x 0.3 x 1.0 mm (``python bench/thick_slices_probe.py 0.3,0.3,1.0 rigid 12``) 45 of 48 intervals
#: covered the truth, against 41 of 48 with the 2 mm central differences; at 0.3 x 0.3 x 0.6 mm 46 of 48 against 48, one
#: fit of 12 reaching another optimum (docs/discussion.md, thick slices).
THICK_AXIS = 1.5
#: A fit warns where more than this share of its surface lies outside the image (a shape the image cuts off).
OUTSIDE_WARNING = 0.01
#: A shape parameter whose posterior variance with the pose free is over this many times its variance with the pose
#: known moves the shape much as the pose does (a family's own tilt or shift): the image cannot tell the two apart.
#: The capsule family of the tests' (its tilt and shift) gave 74-2100, the cochlea's parameters 1.0-8.3 (label maps
#: and CT-like images at 0.3 mm, three each; at most 4.3 on six maps of 0.3x0.3x0.6 to 0.4x0.4x0.8 and 1.0 mm slices).
CONFOUNDED_WITH_POSE = 50.0
#: With a window (intensities LOW..HIGH), an intensity fit leaves out the voxels outside it and those within this many
#: mm of them along each axis (a box; at least a voxel's largest side): a third tissue (air beside the bone of a CT)
#: and the partial-volume voxels of its border.
WINDOW_MARGIN_MM = 1.0
#: An intensity fit's default window ("auto") leaves out air where the image holds it as a CT in Hounsfield units does:
#: the voxels below AIR_HU (smoothed by half a voxel), in an image where some smoothed voxel is below AIR_SURE_HU (air
#: reads -1000 HU; fat, the lowest of the body's tissues, about -100; no image without such voxels is windowed).
AIR_HU, AIR_SURE_HU = -400.0, -900.0
#: The labels a fitted shape makes (its voxels more than half inside: the written labels volume, and the Dice of a label
#: map's fit) are read from at most about this many sub-voxels over the shape's box (fewer to a voxel on larger boxes).
LABEL_SUBVOXELS = 2_000_000
#: Quality below which a fit is said to explain the image poorly: the Dice of the labels, and the share of the
#: intensities' variance within NEAR_MM of the fitted surface that the fit explains.
MIN_DICE, MIN_R2, NEAR_MM = 0.8, 0.3, 1.0
#: An intensity fit whose two tissues differ by less than this many times the noise separates no two tissues of the
#: image (a window that left one of the shape's tissues out, say); the fit study's CT-like images lie far above it.
MIN_CONTRAST_TO_NOISE = 3.0
#: Without a label map's or an SDM's inside to start from (an intensity image), the pose's search tries rotations near
#: the model's orientation or SEARCH_TURNS spread over all of them (``fit``'s ``turns``), each at every shift within
#: SEARCH_SHIFT_MM of the centre (given, or where ``_locate`` puts the shape).
SEARCH_SHIFT_MM, SEARCH_TURNS = 5.0, 360
#: Without a centre given, an intensity image is first searched whole (``_locate``) at about LOCATE_MM voxels, with
#: the middle shape of the box, for where the shape is; that search then runs about it.
LOCATE_MM, LOCATE_VOXELS = 1.0, 2_000_000
#: The rotations that search tries: those near the model's orientation, or (turns "all") LOCATE_TURNS spread over all.
LOCATE_TURNS = 72
#: The screen of that many rotations runs in two rounds: every rotation with one shape (the middle of the screen's
#: shapes), then the best SEARCH_KEEP of them with every shape of the screen.
SEARCH_KEEP = 24
#: The network's screen of a label map or an SDM (no shift search) runs a second round: the best SCREEN_AGAIN_ROTATIONS
#: rotations of the first with SCREEN_AGAIN_SHAPES more shapes (the Sobol sequence's next points), each rotation's best
#: of both rounds kept: on label maps of 1 mm slices a start turned half round had won the first round alone
#: (``python bench/thick_slices_probe.py 0.3,0.3,1.0 rigid 12 hybrid``). The exact screen has none: its fit polishes its
#: best pick alone, and from a second round's picks it took longer on isotropic label maps (docs/discussion.md, thick
#: slices).
SCREEN_AGAIN_ROTATIONS, SCREEN_AGAIN_SHAPES = 3, 24
#: turns="auto" searches all orientations after the near ones where that fit's R^2 is below AUTO_ALL_R2 (a warning's
#: MIN_R2 lets wrong orientations through: R^2 0.48 against 0.82 for the right one, a CT-like phantom turned by
#: 120 degrees), unless its residuals look like the image's noise alone: correlated over at most NOISE_VOLUME voxels
#: and their sigma at most NOISE_RATIO times the image's own noise (``_image_noise``). A noisy image fitted right has
#: a low R^2 too (0.54 and 0.59 in the fit study, where the second search doubled the time); on 19 CT-like phantoms
#: fitted right the residuals' correlation volume was 1.6-2.7 voxels and their sigma 0.97-1.01 times the noise, on
#: 5 turned more than 70 degrees and fitted 169-180 degrees off with R^2 0.37-0.59, 14-105 voxels and 1.04-1.28 times
#: (``python bench/turns_probe.py``). It searches them too where AUTO_ALL_PINNED or more shape parameters of the
#: MAP lie within PINNED_EDGE of their range's ends (the likelihood asks for a shape the box does not hold), whatever
#: the R^2: with air beside the cochlea, a phantom turned far from the model's orientation was fitted wrong with R^2
#: 0.71 (0.87 right), a, alpha and b at their ends (case 6 of ``python bench/air_probe.py hybrid 20``, fitted with
#: turns "near" and "all"); no MAP of the fit study has any. Not the residuals' correlation alone: it told that fit
#: (69 voxels, 2.5 right), but noise correlated as a scanner's reads 36-87 voxels on fits that are right.
AUTO_ALL_R2, NOISE_VOLUME, NOISE_RATIO, AUTO_ALL_PINNED, PINNED_EDGE = 0.6, 4.0, 1.02, 2, 0.005
#: Levenberg-Marquardt (``_levenberg_marquardt``) ends a phase where the Gauss-Newton step predicts a gain under
#: LM_STOP_NATS (the negative log-likelihood's units; along the flattest direction of a label map's fit, phi, about
#: 0.1 % of its range), and a phase before the last hands over after LM_HANDOVER_TRIES rejected steps in a row: each
#: trial is an exact SDM, and damping climbed from 1e-9 to 1e8 in up to 17 of them before either.
LM_STOP_NATS, LM_HANDOVER_TRIES = 1e-4, 3
#: What an intensity fit whose tissue intensity lies beyond every voxel's is told (``_quality``), and how
#: ``_standing`` recognises that warning.
_BEYOND = "beyond the values of the voxels fitted"
#: The share of the voxels' range by which a tissue intensity may lie beyond it unflagged: right fits of thin cochleae
#: in the fit study's CT-like phantoms (noise a tenth of the contrast) had their inside intensity 0.17-0.22 of the
#: range beyond the darkest voxel; the wrong turn of the tests, 1.1.
BEYOND_RANGE = 0.3
#: What a poor intensity fit is told, with where the search reaches.
_INTENSITY_HINT = (f"the search of an intensity image reaches {SEARCH_SHIFT_MM:g} mm from its centre (centre, --centre; "
                   "default: where a coarse search of the whole image puts the shape), and a window of the two tissues' "
                   "intensities (window, --window LOW,HIGH) can leave out a third tissue near the shape (by default, air in "
                   "an image in Hounsfield units; for a shape whose own tissue is air, keep it: window None, --window none); "
                   "where other tissues lie within its reach (a whole head), a mask of the region about the shape (mask, "
                   "--mask) keeps them out")


def check_forward(forward: str) -> str:
    """``forward`` if it names a forward model; the old name ``nn`` is refused with a hint."""
    if forward == "nn":
        raise FitError("the network's forward model is called 'sdmnn' now; use forward='sdmnn' (--forward sdmnn)")
    if forward not in FORWARD_MODELS:
        raise FitError(f"forward must be one of {', '.join(FORWARD_MODELS)}, got {forward!r}")
    return forward


# ---------------------------------------------------------------------------------------------
# the result
# ---------------------------------------------------------------------------------------------

@dataclass
class FitResult:
    family: str
    names: tuple[str, ...]  # the shape parameters, then the pose's (with pose="rigid")
    params: dict  # MAP of the shape parameters
    pose: np.ndarray  # (4, 4) model -> world (mm) at the MAP
    pose_centre: np.ndarray  # (3,) the model-frame point the pose's rotations turn about (mm)
    mean: dict
    std: dict
    samples: np.ndarray  # (S, len(names)) posterior samples: shape in the family's units, pose as in the module notes
    seconds: float
    evaluations: dict  # forward evaluations by model: {"sdmnn": ..., "exact": ...}
    forward: str
    observed_kind: str
    noise: dict  # tau / sigma, appearance (intensities), the learned model's error, the correlation volume
    quality: dict  # dice (labels, sdm), mislabelled_voxels (labels), dice_nearer_tissue and r2 (intensity), rms_mm (sdm), residual statistics,
    # surface_outside_image, pose_inflation (pose rigid: each shape parameter's variance over its variance given the pose), warning
    grid: Grid  # the observed image's grid
    log_posterior: float
    covariance: np.ndarray = field(repr=False, default=None)
    #: Where a family of one's own was loaded from (FILE.py:NAME...), None for the built-in ones.
    family_source: str | None = None
    #: The network's folder and its weights' SHA-256 ({"path": ..., "weights_sha256": ...}), None for an exact fit.
    model: dict | None = None
    #: The window the fit applied ({"low", "high" (None: no upper bound), "auto", "left_out_voxels" of the part of the
    #: image fitted}: auto where the default window found air), None where it applied none (window None, or "auto" on
    #: an image without air, or not an intensity image).
    window: dict | None = None

    def interval(self, level: float = 0.9) -> dict:
        """Central posterior interval of each parameter (shape and pose) from the samples."""
        lo, hi = np.quantile(self.samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return {n: (float(a), float(b)) for n, a, b in zip(self.names, lo, hi)}

    def mesh(self):
        """The fitted surface (MAP shape at the MAP pose) as a trimesh in world mm."""
        mesh = get_family(self.family_source or self.family).mesh(self.params)
        return mesh.apply_transform(self.pose)

    def sdm(self, grid: Grid | None = None) -> np.ndarray:
        """The exact SDM of the fitted surface on ``grid`` (default: the observed image's grid), mm."""
        from .sdm import exact_sdm

        return exact_sdm(self.mesh(), grid or self.grid)

    def save(self, folder, image: np.ndarray | None = None, target: str | None = None,
             volume_format: str = ".nii.gz") -> list[str]:
        """Write the fit for a clinician's tools: result.json (parameters, intervals, pose, quality...),
        mesh.stl (the fitted surface, world mm), sdm and labels volumes on the image's own grid (in ``volume_format``:
        one of ``io.WRITTEN_VOLUME_FORMATS``), samples.npy, corner.png and, given the ``image``, overlay.png (its
        slices around the shape with the fitted contour). All or none: a failure leaves ``folder`` as it was. Into
        an earlier fit's folder (one holding a result.json), that fit's files this one does not write (its volumes
        in another format, its overlay) are removed. Returns the names written."""
        from .io import WRITTEN_VOLUME_FORMATS, atomic_folder

        if volume_format not in WRITTEN_VOLUME_FORMATS:
            raise FileError(f"a fit's volumes are written as {', '.join(WRITTEN_VOLUME_FORMATS)}, got {volume_format!r}")
        earlier = (Path(folder) / "result.json").is_file()
        with atomic_folder(folder) as tmp:
            written = self._write(tmp, image, target, volume_format, destination=folder)
        if earlier:
            stale = [f"{name}{suffix}" for name in ("sdm", "labels") for suffix in WRITTEN_VOLUME_FORMATS] + ["overlay.png"]
            for name in set(stale) - set(written):
                if (Path(folder) / name).is_file():
                    (Path(folder) / name).unlink()
        return written

    def _write(self, folder: Path, image: np.ndarray | None, target: str | None, volume_format: str,
               destination=None) -> list[str]:
        from .io import atomic_path, save_mesh, save_volume, write_json
        from .viz import save_corner, save_slices

        # the image's absolute path (the viewer opens it from wherever it is started), and its path from the results'
        # folder (for both moved together)
        where = {"target": str(Path(target).resolve()) if target else None,
                 "target_from_results": os.path.relpath(Path(target).resolve(), Path(destination).resolve())
                 if target and destination else None}
        write_json(folder / "result.json", {**where, **self.to_dict()})
        mesh = self.mesh()
        save_mesh(folder / "mesh.stl", mesh)
        sdm = self.sdm()
        save_volume(folder / f"sdm{volume_format}", sdm, self.grid)
        save_volume(folder / f"labels{volume_format}", fitted_labels(mesh, self.grid), self.grid)
        with atomic_path(folder / "samples.npy") as tmp:
            np.save(tmp, self.samples)
        save_corner(folder / "corner.png", self.samples, self.names,
                    map_point=[self.params.get(n, 0.0) for n in self.names])
        written = ["result.json", "mesh.stl", f"sdm{volume_format}", f"labels{volume_format}", "samples.npy", "corner.png"]
        if image is not None:
            lo, hi = _index_box(self.grid, mesh.bounds[0], mesh.bounds[1], 2.0)
            view = crop(self.grid, lo, hi)
            lo = np.clip(lo, 0, np.array(self.grid.shape) - 1)
            sl = tuple(slice(a, a + n) for a, n in zip(lo, view.shape))
            shown = {"labels": "label map value", "intensity": "image intensity"}.get(self.observed_kind)
            save_slices(folder / "overlay.png", np.asarray(image, np.float32)[sl], view, others={"fitted surface": sdm[sl]},
                        title=f"{target or 'image'}: the fitted {self.family} ({self.forward})", image_label=shown,
                        offset=tuple(int(a) for a in lo))
            written.append("overlay.png")
        return written

    def to_dict(self) -> dict:
        return {
            "family": self.family, "family_source": self.family_source, "forward": self.forward, "model": self.model,
            "observed": self.observed_kind, "window": self.window, "map": self.params,
            "pose": self.pose.tolist(), "pose_centre": self.pose_centre.tolist(), "mean": self.mean, "std": self.std,
            "interval_90": {k: list(v) for k, v in self.interval(0.9).items()}, "quality": self.quality,
            "noise": self.noise, "seconds": self.seconds, "evaluations": self.evaluations,
            "log_posterior": self.log_posterior, "grid": self.grid.to_dict(),
            "covariance": self.covariance.tolist() if self.covariance is not None else None, "names": list(self.names),
        }


# ---------------------------------------------------------------------------------------------
# the observed image
# ---------------------------------------------------------------------------------------------

def check_observed(observed: np.ndarray, kind: str, label: int | None = None) -> np.ndarray:
    """The observation as float32: labels as 0/1 (``label``: which value is inside; without it, the map's one non-zero
    value)."""
    if kind not in OBSERVED_KINDS:
        raise FitError(f"observed_kind must be one of {', '.join(OBSERVED_KINDS)}, got {kind!r}")
    observed = np.asarray(observed)
    if observed.ndim != 3:
        raise ImageError(f"the observed image must be a 3-D volume, got {observed.ndim} dimensions")
    if observed.size == 0:
        raise ImageError(f"the observed image is empty: its shape is {observed.shape}")
    if (not np.issubdtype(observed.dtype, np.number) and observed.dtype != bool) or np.iscomplexobj(observed):
        raise ImageError(f"the observed image must hold real numbers, got {observed.dtype}")
    if not np.all(np.isfinite(observed)):
        raise ImageError("the observed image holds NaN or infinite values")
    if kind == "labels":
        if label is not None:
            if label == 0:
                raise ImageError("label 0 is a label map's background (outside the shape); give the shape's own value")
            if not np.any(observed == label):
                values = np.unique(observed)[:8].tolist()
                raise ImageError(f"the label map holds no voxel of label {label}; it holds {values}")
            y = observed == label
        else:
            y = observed != 0
            values = np.unique(observed[y])
            fractions = values[values != np.round(values)]
            if len(fractions):
                raise ImageError(f"the label map holds values that are not whole numbers (such as {fractions[0]:g}): "
                               "a label map holds 0 outside and the shape's label inside; threshold a probability map "
                               "first, and fit " + ("an SDM (negative inside) as one (observed_kind sdm, --observed sdm)"
                                                    if values[0] < 0 else
                                                    "a CT or MR image as one (observed_kind intensity, --observed intensity)"))
            if len(values) > 1:
                shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
                raise ImageError(f"the label map holds {len(values)} labels ({shown}): give the shape's value with label (--label N)"
                               + (", or fit a CT or MR image as one (observed_kind intensity, --observed intensity)"
                                  if len(values) > 8 else ""))
        if y.all() or not y.any():
            raise ImageError("the label map is all " + ("ones" if y.all() else "zeros") + ": there is no shape boundary to fit"
                           + (" (an SDM or an intensity image? choose observed_kind / --observed sdm or intensity; a "
                              "multi-label map: --label)" if y.all() else " (an empty segmentation)"))
        return y.astype(np.float32)
    if kind == "sdm" and not (observed.min() < 0 < observed.max()):
        labels = observed.min() >= 0 and np.array_equal(observed, np.round(observed))
        raise ImageError("the observed SDM has no zero crossing (no voxel inside or none outside)"
                       + ("; it holds whole numbers >= 0, as a label map does: fit it as one (observed_kind labels, "
                          "--observed labels)" if labels else "; an SDM is negative inside the shape and positive outside"))
    if kind == "intensity" and not observed.max() > observed.min():
        raise ImageError("the observed image is constant: there is no contrast to fit")
    return observed.astype(np.float32)


def crop(grid: Grid, lo, hi) -> Grid:
    """The sub-grid of voxels ``lo`` .. ``hi`` (inclusive index triples, clipped to the grid)."""
    lo = np.clip(np.asarray(lo, int), 0, np.array(grid.shape) - 1)
    hi = np.clip(np.asarray(hi, int), lo, np.array(grid.shape) - 1)
    return Grid(tuple(int(n) for n in hi - lo + 1), grid.spacing, tuple(grid.to_world(lo).tolist()), grid.direction)


def _index_box(grid: Grid, world_lo, world_hi, margin_mm: float):
    """The voxel index box of ``grid`` covering a world box plus a margin."""
    corners = np.array([[x, y, z] for x in (world_lo[0], world_hi[0]) for y in (world_lo[1], world_hi[1])
                        for z in (world_lo[2], world_hi[2])])
    idx = grid.to_index(corners)
    pad = margin_mm / np.array(grid.spacing)
    return np.floor(idx.min(0) - pad).astype(int), np.ceil(idx.max(0) + pad).astype(int)


@dataclass
class _Observation:
    """The observed voxels the fit uses (a crop of the image around the shape), as flat arrays, and the points
    where the forward models give the SDM: the voxel centres, or for intensity images with anisotropic voxels
    their near-cubic sub-voxels (``model_grid``; each voxel split ``sub`` times along each axis), whose shares
    of the inside the voxel averages."""

    kind: str
    grid: Grid  # the crop
    y: np.ndarray  # (N,) float64
    mask: np.ndarray  # (N,) float64, 1 where used
    h: float  # voxel size (geometric mean of the spacing), mm
    offset: np.ndarray  # the crop's first voxel in the full image
    sub: tuple[int, int, int] = (1, 1, 1)
    model_grid: Grid = None
    points: np.ndarray = None  # (model_grid.size, 3) world positions (mm) of the model grid
    beyond: np.ndarray = None  # (N,) float64, 1 where a window puts the voxel outside the shape's tissues (mask 0 there;
    # the likelihood counts it as the outside tissue: ``_appearance``)

    @classmethod
    def of(cls, kind, image, mask, grid: Grid, lo, hi, beyond=None):
        crop_grid = crop(grid, lo, hi)
        lo = np.clip(np.asarray(lo, int), 0, np.array(grid.shape) - 1)
        sl = tuple(slice(a, a + n) for a, n in zip(lo, crop_grid.shape))
        y = image[sl].astype(np.float64).ravel()
        m = np.ones_like(y) if mask is None else mask[sl].astype(np.float64).ravel()
        q = np.zeros_like(y) if beyond is None else beyond[sl].astype(np.float64).ravel()
        h = np.array(crop_grid.spacing)
        # at most 4 sub-voxels along an axis: the forward model's cost grows with their number
        sub = tuple(int(k) for k in np.clip(np.round(h / h.min()), 1, 4)) if kind == "intensity" else (1, 1, 1)
        model_grid = crop_grid if sub == (1, 1, 1) else crop_grid.split(sub)
        return cls(kind, crop_grid, y, m, float(np.prod(h)) ** (1 / 3), lo, sub, model_grid, model_grid.points(), q)

    def coarse(self, v) -> np.ndarray:
        """Values on the model grid (model_grid.size,) averaged over each voxel's sub-voxels: (N,)."""
        if self.sub == (1, 1, 1):
            return v
        return block_mean(v.reshape(self.model_grid.shape), self.sub).ravel()


# ---------------------------------------------------------------------------------------------
# poses
# ---------------------------------------------------------------------------------------------

def rotation(rotvec) -> np.ndarray:
    """The rotation matrix of a rotation vector (axis * angle in radians)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(rotvec, float)).as_matrix()


@dataclass
class Pose:
    """x_world = R (x_model - centre) + position: a rigid pose about the model shape's centre."""

    R: np.ndarray
    position: np.ndarray
    centre: np.ndarray

    def matrix(self) -> np.ndarray:
        """The 4x4 model -> world matrix."""
        m = np.eye(4)
        m[:3, :3] = self.R
        m[:3, 3] = self.position - self.R @ self.centre
        return m

    def moved(self, step) -> "Pose":
        """The pose after a small rotation ``step[:3]`` (radians, about world axes through the shape's
        centre) and shift ``step[3:]`` (mm)."""
        return Pose(rotation(step[:3]) @ self.R, self.position + np.asarray(step[3:], float), self.centre)

    def to_world(self, V: np.ndarray) -> np.ndarray:
        return (V - self.centre) @ self.R.T + self.position


def _principal_axes(points: np.ndarray, weights=None):
    """(centroid, axes as columns sorted by decreasing spread) of a point set."""
    w = np.ones(len(points)) if weights is None else weights
    c = (w[:, None] * points).sum(0) / w.sum()
    cov = ((points - c).T * w) @ (points - c) / w.sum()
    val, vec = np.linalg.eigh(cov)
    vec = vec[:, ::-1].copy()
    if np.linalg.det(vec) < 0:  # a right-handed frame, so that frames map onto each other by rotations
        vec[:, 2] *= -1
    return c, vec


def _rotation_candidates(model_axes, image_axes, n_spin: int = 12) -> list[np.ndarray]:
    """Rotations that map the model's least-spread axis onto the image's (either way), each spun about it
    in ``n_spin`` steps: the two other axes are often too alike in spread to be matched reliably."""
    out = []
    for flip in (1.0, -1.0):
        base = image_axes.copy()
        base[:, 2] *= flip
        base[:, 1] = np.cross(base[:, 2], base[:, 0])  # keep it a rotation
        for k in range(n_spin):
            spin = rotation(base[:, 2] * (2 * math.pi * k / n_spin))
            out.append(spin @ base @ model_axes.T)
    return out


def _near_identity(max_degrees: float = 30.0) -> list[np.ndarray]:
    """The identity and rotations of ``max_degrees`` * 2/3 about each axis, both ways: every rotation within
    ``max_degrees`` lies within 24 degrees of one of them (measured over 20,000 random such rotations)."""
    angle = math.radians(max_degrees) * 2 / 3
    return [np.eye(3)] + [rotation(s * angle * e) for e in np.eye(3) for s in (1.0, -1.0)]


def _all_turns(n: int = SEARCH_TURNS) -> list[np.ndarray]:
    """``n`` rotations spread evenly over all of them: a super-Fibonacci spiral of unit quaternions (Alexa, CVPR 2022).
    With 360, every rotation lies within 32 degrees of one of them (99 % within 27 degrees; measured over 20,000 random
    rotations), about the reach of the local optimisation that follows the screen."""
    phi, psi = math.sqrt(2.0), 1.533751168755204288118041  # psi^4 = psi + 4
    i = np.arange(n) + 0.5
    s = i / n
    r, R = np.sqrt(s), np.sqrt(1 - s)
    alpha, beta = 2 * math.pi * i / phi, 2 * math.pi * i / psi
    w, x, y, z = r * np.sin(alpha), r * np.cos(alpha), R * np.sin(beta), R * np.cos(beta)  # unit quaternions
    return list(np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1))


# ---------------------------------------------------------------------------------------------
# observation models
# ---------------------------------------------------------------------------------------------

def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def tau_floor(h: float) -> float:
    """The least label softness a voxel of size ``h`` mm allows: a logistic with the spread (standard
    deviation) of a surface position known only to within the voxel, h / sqrt(12)."""
    return h / (2 * math.pi)


class _VoxelTerms:
    """What a voxel's box does to the SDM ``d`` at its centre (on the whole crop): along the surface's normal n
    (the SDM's gradient, in the voxel axes) the box spreads the surface's position with standard deviation
    ``spread`` = sqrt(sum n_i^2 h_i^2 / 12), and a curved surface moves the box's half-full level by half the
    Laplacian's trace against the box's covariance: ``shifted(d)`` = d + 1/2 sum_i (h_i^2 / 12) d_ii (a convex
    surface fills less than half of the voxel its centre lies on). The shift is bounded by one spread: the
    expansion does not hold across the SDM's kinks."""

    def __init__(self, d, grid: Grid):
        h = np.array(grid.spacing)
        v = d.reshape(grid.shape)
        grad = np.stack(np.gradient(v, *h), -1).reshape(-1, 3)
        norm = np.linalg.norm(grad, axis=1, keepdims=True)
        n2 = np.where(norm > 1e-9, grad / np.maximum(norm, 1e-9), 1 / math.sqrt(3)) ** 2
        self.spread = np.sqrt(n2 @ (h**2 / 12))  # (N,) mm
        self.shift = np.clip(self._curvature(v, grid).ravel(), -self.spread, self.spread)
        self.bounded = np.abs(self.shift) < self.spread  # where the shift follows d
        self.grid = grid

    @staticmethod
    def _curvature(v, grid: Grid):
        """1/2 sum_i (h_i^2 / 12) v_ii = sum_i (v[i-1] - 2 v[i] + v[i+1]) / 24 (zero on the crop's faces)."""
        out = np.zeros_like(v)
        for axis in range(3):
            inner = [slice(None)] * 3
            inner[axis] = slice(1, -1)
            lo, mid, hi = (np.take(v, range(k, v.shape[axis] - 2 + k), axis=axis) for k in (0, 1, 2))
            out[tuple(inner)] += (lo - 2 * mid + hi) / 24
        return out

    def shifted(self, d) -> np.ndarray:
        return d + self.shift

    def linear(self, J) -> np.ndarray:
        """The derivative of ``shifted`` applied to the columns of J (N, k)."""
        return np.stack([J[:, j] + self.bounded * self._curvature(J[:, j].reshape(self.grid.shape), self.grid).ravel()
                         for j in range(J.shape[1])], 1)


def _blur(values, grid: Grid, blur: float) -> np.ndarray:
    """``values`` (N,) on the whole crop blurred by a Gaussian of standard deviation ``blur`` mm: per axis, the
    discrete Gaussian exp(-t) I_n(t) (t = (blur / h)^2 voxels^2), whose variance is exactly t, also at the half-voxel
    widths of thick slices, where a sampled Gaussian is a fifth too narrow."""
    from scipy.ndimage import correlate1d
    from scipy.special import ive

    v = values.reshape(grid.shape)
    for axis, h in enumerate(grid.spacing):
        t = (blur / h) ** 2
        if t > 1e-6:
            n = np.arange(-int(math.ceil(4 * math.sqrt(t) + 2)), int(math.ceil(4 * math.sqrt(t) + 2)) + 1)
            w = ive(n, t)
            v = correlate1d(v, w / w.sum(), axis=axis, mode="nearest")
    return v.ravel()


class _Likelihood:
    """The observation model of one kind: negative log-likelihood of SDM values ``d`` at the observed voxels,
    its noise estimate, and its Gauss-Newton gradient and Hessian. ``scale`` is tau (labels: the label
    softness), sigma (SDMs: the noise) or the blur (intensity: the point-spread function's standard deviation,
    mm). On the whole crop, labels and intensities see the SDM as the voxel does (``_VoxelTerms``): labels are
    Bernoulli with p = sigmoid(-d' / tau), d' the SDM shifted for the surface's curvature across the voxel;
    intensities blend by the voxel's share of the inside, Phi(-d' / s) with s the box's spread along the
    normal, blurred by the point-spread function."""

    def __init__(self, obs: _Observation, scale: float | None):
        self.obs, self.kind = obs, obs.kind
        self.fixed = scale is not None
        self.floor = tau_floor(obs.h) if obs.kind != "sdm" else 1e-3
        if scale is not None:
            self.scale = scale
        else:
            self.scale = {"labels": 0.5 * obs.h, "sdm": 0.2, "intensity": 0.5 * obs.h}[obs.kind]
        self.appearance = None  # (a inside, b outside, sigma) for intensity images
        self._terms = (None, None)  # (d, its _VoxelTerms)

    def terms(self, d) -> _VoxelTerms | None:
        """The voxel terms of a whole-crop SDM (cached for the last one), None for a subset of the voxels."""
        if np.ndim(d) != 1 or len(d) != self.obs.model_grid.size:
            return None
        if self._terms[0] is not d:
            self._terms = (d, _VoxelTerms(d, self.obs.model_grid))
        return self._terms[1]

    def blended(self, d, blur=None):
        """Intensity images: the share of the inside tissue at each voxel, Phi(-d' / spread) blurred by the
        point-spread function. On a subset of the voxels (the search's screen) the blur is folded into the spread
        of the mean voxel instead (the same variance), which holds for surfaces flat at its scale."""
        from scipy.special import ndtr

        blur = self.scale if blur is None else blur
        t = self.terms(d)
        if t is None:
            return ndtr(-d / math.sqrt(self.obs.h**2 / 12 + blur**2))
        return self.obs.coarse(_blur(ndtr(-t.shifted(d) / t.spread), self.obs.model_grid, blur))

    def nll(self, d, scale=None, every: int = 1):
        """-log p(observed | d) up to a constant, at the current (or the given) scale: a float for d (N,),
        one per row for d (B, N); ``every``: d holds every n-th voxel only."""
        s = self.scale if scale is None else scale
        y, m = self.obs.y[::every], self.obs.mask[::every]
        if self.kind == "labels":
            t = self.terms(d)
            z = d / s if t is None else t.shifted(d) / s
            v = np.sum(m * (y * _softplus(z) + (1 - y) * _softplus(-z)), axis=-1)
        elif self.kind == "sdm":
            v = 0.5 * np.sum(m * (d - y) ** 2, axis=-1) / s**2 + m.sum() * math.log(s)
        else:
            _, _, sigma = _appearance(self.blended(d, s), y, m, self.obs.beyond[::every])
            v = m.sum() * np.log(sigma)
        return float(v) if np.ndim(v) == 0 else v

    def estimate(self, d) -> None:
        """Set tau, sigma or the blur (and the intensities) to their MLE at the SDM ``d`` (unless given)."""
        from scipy.optimize import minimize_scalar

        if not self.fixed:
            if self.kind == "sdm":
                m = self.obs.mask
                self.scale = max(float(np.sqrt(np.sum(m * (d - self.obs.y) ** 2) / max(m.sum(), 1))), self.floor)
            elif self.kind == "labels":
                r = minimize_scalar(lambda lt: self.nll(d, math.exp(lt)), method="bounded",
                                    bounds=(math.log(self.floor), math.log(max(4 * self.obs.h, 2.0))))
                self.scale = max(float(math.exp(r.x)), self.floor)
            else:
                r = minimize_scalar(lambda s: self.nll(d, s), method="bounded", bounds=(0.0, max(4 * self.obs.h, 2.0)))
                self.scale = float(r.x)
        if self.kind == "intensity":
            self.appearance = _appearance(self.blended(d), self.obs.y, self.obs.mask, self.obs.beyond)

    def gauss_newton(self, d, J, scores: bool = False):
        """(gradient (k,), Gauss-Newton (Fisher) Hessian (k, k)) of the NLL for SDM Jacobian J (N, k) on the whole
        crop; with ``scores``, also each voxel's gradient (N, k)."""
        s, y, m = self.scale, self.obs.y, self.obs.mask
        if self.kind == "labels":
            t = self.terms(d)
            J = t.linear(J)
            p = _sigmoid(-t.shifted(d) / s)
            g_d, w = m * (y - p) / s, m * p * (1 - p) / s**2
        elif self.kind == "sdm":
            g_d, w = m * (d - y) / s**2, m / s**2
        else:
            Jr, r, sigma = self._intensity_jacobian(d, J)
            w = m + self.obs.beyond
            out = Jr.T @ (w * r) / sigma**2, Jr.T @ (w[:, None] * Jr) / sigma**2
            return (*out, Jr * (w * r / sigma**2)[:, None]) if scores else out
        out = J.T @ g_d, J.T @ (w[:, None] * J)
        return (*out, J * g_d[:, None]) if scores else out

    def _intensity_jacobian(self, d, J):
        """(residual Jacobian (N, k), residuals r (N,), sigma) of an intensity image: r = y - b - (a - b) B with
        B = coarse(blur(Phi(-d' / spread))), linear in d' and d' linear in d (and y = b where a window left out a
        third tissue: ``_appearance``)."""
        B = self.blended(d)
        a, b, sigma = _appearance(B, self.obs.y, self.obs.mask, self.obs.beyond)
        t = self.terms(d)
        z = -t.shifted(d) / t.spread
        dB = (np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) / t.spread)[:, None] * t.linear(J)
        Jr = (a - b) * np.stack([self.obs.coarse(_blur(dB[:, j], self.obs.model_grid, self.scale)) for j in range(J.shape[1])], 1)
        return Jr, self._intensity_residuals(B, a, b), sigma

    def _intensity_residuals(self, B, a, b) -> np.ndarray:
        """y - b - (a - b) B at every voxel of the crop, with y = b where a window left out a third tissue."""
        return np.where(self.obs.beyond > 0, b, self.obs.y) - b - (a - b) * B

    def error_sensitivity(self, d, J) -> np.ndarray:
        """(N, k): how each voxel's gradient of the NLL moves when the SDM moves by one mm there (an error of
        the forward model, e.g. a network's): the Fisher weight of d at the voxel times its Jacobian row."""
        m = self.obs.mask
        if self.kind == "labels":
            t = self.terms(d)
            p = _sigmoid(-t.shifted(d) / self.scale)
            return t.linear(J) * (m * p * (1 - p) / self.scale**2)[:, None]
        if self.kind == "sdm":
            return J * (m / self.scale**2)[:, None]
        Jr, _, sigma = self._intensity_jacobian(d, np.concatenate([J, np.ones((len(J), 1))], 1))
        return Jr[:, :-1] * ((m + self.obs.beyond) * Jr[:, -1] / sigma**2)[:, None]

    def residuals(self, d) -> np.ndarray:
        """Standardised residuals per voxel (0 where unused), for the correlation volume."""
        s, y, m = self.scale, self.obs.y, self.obs.mask
        if self.kind == "labels":
            p = _sigmoid(-self.terms(d).shifted(d) / s)
            var = p * (1 - p)
            near = var > 1e-4  # voxels that carry information on the surface
            return np.where(near & (m > 0), (y - p) / np.sqrt(np.maximum(var, 1e-12)), 0.0)
        if self.kind == "sdm":
            return m * (d - y) / s
        p, q = self.blended(d), self.obs.beyond
        a, b, sigma = _appearance(p, y, m, q)
        return (m + q) * self._intensity_residuals(p, a, b) / sigma


def _appearance(p, y, m, q=None):
    """Weighted least-squares intensities inside (a) and outside (b), and the noise sigma, for
    y ~ b + (a - b) p over the voxels where m > 0; p (N,) or (B, N) gives scalars or (B,) arrays. The voxels where
    q > 0 (a third tissue a window left out) count as observed at the outside tissue's intensity b: the shape's
    inside there costs ((a - b) p)^2 each, in the sum of squares, not in the count of voxels sigma divides."""
    n, sy, syy = m.sum(), np.sum(m * y), np.sum(m * y * y)
    sp, spp, spy = np.sum(m * p, -1), np.sum(m * p * p, -1), np.sum(m * p * y, -1)
    if q is not None:
        spp = spp + np.sum(q * p * p, -1)
    det = np.maximum(spp * n - sp * sp, 1e-12 * n * n)
    slope = (spy * n - sp * sy) / det  # a - b
    b = (sy - slope * sp) / n
    rss = syy - 2 * b * sy - 2 * slope * spy + n * b * b + 2 * b * slope * sp + slope * slope * spp
    sigma = np.sqrt(np.maximum(rss / n, 1e-12 * (syy / n + 1e-12)))
    if np.ndim(sigma) == 0:
        return float(b + slope), float(b), float(sigma)
    return b + slope, b, sigma


def _image_noise(obs: _Observation) -> float | None:
    """The image's own noise (standard deviation) in the fit's crop, from differences of neighbouring voxels: their
    median absolute deviation, the least over the three axes (a difference across the shape's surface is an outlier
    there; noise correlated between voxels reads low, which makes a fit's residuals look larger than noise). None
    where the crop has too few pairs of voxels."""
    y, used = obs.y.reshape(obs.grid.shape), obs.mask.reshape(obs.grid.shape) > 0
    best = math.inf
    for axis in range(3):
        both = np.take(used, range(1, y.shape[axis]), axis) & np.take(used, range(y.shape[axis] - 1), axis)
        diff = np.diff(y, axis=axis)[both]
        if diff.size >= 10:
            best = min(best, 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / math.sqrt(2))
    return best if math.isfinite(best) else None


def _explains_poorly(quality: dict, temper: float, pinned: int = 0) -> bool:
    """Whether a fit near the model's orientation calls for the search over all of them (turns "auto"): a warning,
    an R^2 below AUTO_ALL_R2 with residuals that are more than the image's noise alone (see NOISE_VOLUME), or
    ``pinned`` (``_pinned``) at least AUTO_ALL_PINNED."""
    noise_alone = temper <= NOISE_VOLUME and quality.get("sigma_over_image_noise", math.inf) <= NOISE_RATIO
    return (bool(quality.get("warning")) or not (quality.get("r2", 1.0) >= AUTO_ALL_R2 or noise_alone)
            or pinned >= AUTO_ALL_PINNED)


def _pinned(vector, low, high) -> int:
    """How many of the shape parameters ``vector`` lie within PINNED_EDGE of their range's ends (low, high)."""
    u = (np.asarray(vector, float) - low) / (high - low)
    return int(np.sum((u < PINNED_EDGE) | (u > 1 - PINNED_EDGE)))


def correlation_volume(residuals: np.ndarray, shape, max_lag: int = 6) -> float:
    """The number of voxels per independent residual: the sum of the residuals' autocorrelation over the
    lags (up to ``max_lag`` voxels along each axis) where it is significantly positive (above twice the
    standard error of a correlation estimated from that lag's pairs), at least 1."""
    r = residuals.reshape(shape)
    used = (r != 0).astype(np.float64)
    if used.sum() < 10:
        return 1.0
    size = [2 * n for n in shape]
    axes = tuple(range(r.ndim))
    fr, fu = np.fft.rfftn(r, size, axes), np.fft.rfftn(used, size, axes)
    ac = np.fft.irfftn(fr * np.conj(fr), size, axes)
    pairs = np.fft.irfftn(fu * np.conj(fu), size, axes)
    lags = [np.r_[0 : max_lag + 1, -max_lag:0] for _ in shape]
    sub = np.ix_(*lags)
    ac, pairs = ac[sub], np.round(pairs[sub])
    var = ac.flat[0] / pairs.flat[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(pairs >= 10, ac / np.maximum(pairs, 1) / var, 0.0)
        significant = rho > 2 / np.sqrt(np.maximum(pairs, 1))
    return float(max(1.0, np.sum(rho[significant])))


# ---------------------------------------------------------------------------------------------
# forward models
# ---------------------------------------------------------------------------------------------

class _Exact:
    """The exact SDM of the posed mesh at the observed voxels."""

    def __init__(self, family, obs: _Observation, evals):
        self.family, self.obs, self.evals = family, obs, evals

    def __call__(self, vector, pose: Pose) -> np.ndarray:
        return self._sdm(self._posed(vector, pose), self.obs.model_grid)

    def _posed(self, vector, pose: Pose):
        import trimesh

        mesh = self.family.mesh(np.clip(vector, self.family.space.low, self.family.space.high))
        return trimesh.Trimesh(pose.to_world(mesh.vertices), mesh.faces, process=False)

    def _sdm(self, posed, grid: Grid) -> np.ndarray:
        from .sdm import exact_sdm

        self.evals["exact"] += 1
        return exact_sdm(posed, grid).astype(np.float64).ravel()

    def jacobian(self, vector, pose: Pose, d, low, high, free_pose: bool, h: float = 5e-3) -> np.ndarray:
        """d SDM / d (unit-box shape, rotation / POSE_SCALE, shift / POSE_SCALE), (N, k): the shape's columns
        by forward differences of ``h`` of each range (one exact SDM each; 0.5 %, wider than the ripples the moving
        mesh vertices leave in the exact likelihood, where a 0.1 % step had Levenberg-Marquardt stop early), the
        pose's from the SDM's gradient."""
        span = high - low
        u = (vector - low) / span
        cols = []
        for i in range(len(u)):
            e = np.zeros(len(u))
            e[i] = h if u[i] + h <= 1 else -h
            cols.append((self(low + (u + e) * span, pose) - d) / e[i])
        J = np.stack(cols, 1)
        return np.concatenate([J, self.pose_jacobian(vector, pose, d)], 1) if free_pose else J

    def pose_jacobian(self, vector, pose: Pose, d) -> np.ndarray:
        """``_pose_jacobian`` from the gradient of the SDM ``d`` (of ``vector`` at ``pose``) at the observed points
        (``obs.model_grid``: the voxels, or an intensity image's sub-voxels): along each grid axis, central
        differences over the neighbouring points, or, along an axis more than THICK_AXIS times the finest spacing
        (thick slices: 1 mm steps span tubes a few tenths of a millimetre thick), over the SDMs of the grid shifted by
        half the finest spacing each way (two exact SDMs per such axis)."""
        g = self.obs.model_grid
        grad_index = np.stack(np.gradient(d.reshape(g.shape), *g.spacing), -1).reshape(-1, 3)
        direction, step = np.array(g.direction), min(g.spacing) / 2
        thick = [axis for axis in range(3) if g.spacing[axis] > THICK_AXIS * min(g.spacing)]
        posed = self._posed(vector, pose) if thick else None
        for axis in thick:
            plus, minus = (self._sdm(posed, Grid(g.shape, g.spacing, tuple(g.to_world(np.eye(3)[axis] * s * step / g.spacing[axis])),
                                                 g.direction)) for s in (1, -1))
            grad_index[:, axis] = (plus - minus) / (2 * step)
        return _pose_jacobian(grad_index @ direction.T, self.obs.points, pose)


def _pose_jacobian(grad, points, pose: Pose) -> np.ndarray:
    """d SDM / d (rotation / POSE_SCALE, shift / POSE_SCALE) at ``points`` (N, 3, world mm), (N, 6), from the SDM's
    world gradient there (N, 3): moving the shape by a small rigid motion moves its distance field along with it."""
    arm = points - pose.position
    return np.concatenate([-np.cross(arm, grad), -grad], 1) * POSE_SCALE


class _Network:
    """A learned model's SDM (on its model grid) at the observed voxels mapped into the model frame."""

    def __init__(self, net, obs: _Observation, evals):
        import torch

        self.torch, self.net, self.obs, self.evals = torch, net, obs, evals
        g = net.grid
        self.origin = torch.tensor(g.origin, dtype=torch.float32)
        self.spacing = torch.tensor(g.spacing, dtype=torch.float32)
        self.points = torch.tensor(obs.points, dtype=torch.float32)

    def volumes(self, vectors):
        """(B, d) shape vectors -> (B, nx, ny, nz) SDMs on the model grid."""
        torch = self.torch
        self.evals[self.net.arch] += len(vectors)
        return self.net.predict_torch(torch.as_tensor(np.asarray(vectors), dtype=torch.float32), differentiable=False).cpu()

    def sample(self, volumes, poses, every: int = 1, corrected: bool = True) -> np.ndarray:
        """SDMs (B, nx, ny, nz) at every ``every``-th observed point mapped into the model frame by ``poses``
        (one each; one Pose object repeated: its points found once and all volumes read in one lookup): (B, N), by
        ``sample_sdm`` (trilinear, ``corrected`` to second order; beyond the model grid, the border value plus the
        distance to it)."""
        with self.torch.no_grad():
            return sample_sdm(volumes, self._index(poses, every), self.spacing, corrected).double().numpy()

    @contextmanager
    def reading_at(self, points):
        """Within: the observed points are ``points`` (N, 3, world mm; None: as they are) instead of the observation's
        (a screen's voxel centres, or a coarser grid's); restored on leaving."""
        before = self.points
        if points is not None:
            self.points = self.torch.tensor(points, dtype=self.torch.float32)
        try:
            yield self
        finally:
            self.points = before

    def _index(self, poses, every: int = 1):
        """Every ``every``-th observed point mapped into the model frame by each of ``poses``, in voxels of the model
        grid: (B, N, 3), or (1, N, 3) where ``poses`` repeats one Pose object."""
        torch = self.torch
        if all(p is poses[0] for p in poses):
            poses = poses[:1]
        R = torch.tensor(np.stack([p.R for p in poses]), dtype=torch.float32)
        P = torch.tensor(np.stack([p.position for p in poses]), dtype=torch.float32)
        x = torch.einsum("bji,bnj->bni", R, self.points[::every][None] - P[:, None, :])  # R^T (x - p): model frame
        x = x + torch.tensor(poses[0].centre, dtype=torch.float32) - self.origin  # mm from the first voxel
        return x / self.spacing

    def pose_jacobian(self, volume, pose: Pose) -> np.ndarray:
        """``_pose_jacobian`` from the gradient of an SDM (1, nx, ny, nz) on the model grid, read at the observed points
        (``sample_gradient``: the model grid's central differences, whatever the image's voxels; beyond the model grid,
        its border's) and turned into the world frame."""
        with self.torch.no_grad():
            grad_model = sample_gradient(volume, self._index([pose]), self.spacing)[0].double().numpy()
        return _pose_jacobian(grad_model @ pose.R.T, self.obs.points, pose)

    def __call__(self, vector, pose: Pose) -> np.ndarray:
        """The network's SDM at the observed voxels, (N,)."""
        return self.sample(self.volumes(np.asarray(vector)[None]), [pose])[0]

    def jacobian(self, vector, pose: Pose, d, low, high, free_pose: bool, h: float = 5e-3) -> np.ndarray:
        """d SDM / d (unit-box shape, rotation / POSE_SCALE, shift / POSE_SCALE): the shape's columns by forward
        differences of one network SDM per shape parameter and one at ``vector``, in one batch (steps of ``h`` of each
        range, inward at the box's edges), the pose's from the gradient of the SDM at ``vector`` (``pose_jacobian``)."""
        span = high - low
        u = (np.asarray(vector) - low) / span
        k = len(u)
        steps = np.eye(k) * np.where(u + h <= 1, h, -h)
        vols = self.volumes(np.concatenate([np.asarray(vector)[None], low + (u + steps) * span]))
        samples = self.sample(vols, [pose] * (k + 1))
        J = ((samples[1:] - samples[0]) / np.diag(steps)[:, None]).T
        return np.concatenate([J, self.pose_jacobian(vols[:1], pose)], 1) if free_pose else J


# ---------------------------------------------------------------------------------------------
# the fit
# ---------------------------------------------------------------------------------------------

def fit(observed, grid: Grid, family: str = "cochlea", observed_kind: str = "labels", forward: str = "hybrid",
        pose: str = "none", seed: int = 0, model=None, prior: dict | None = None, tau: float | None = None,
        sigma: float | None = None, band: float | None = None, label: int | None = None, mask=None, centre=None,
        n_shapes: int = 8, n_starts: int = 3, n_samples: int = 4000, max_exact: int = 40, threads: int | None = None,
        device: str = "auto", progress=None, turns: str = "auto", window="auto", radius: float | None = None) -> FitResult:
    """Posterior over a family's shape parameters (and, with ``pose="rigid"``, a rigid pose) given an image.

    Parameters
    ----------
    observed : (nx, ny, nz) ndarray
        A label map, an SDM (mm, negative inside) or a CT-like intensity image, on ``grid``.
    grid : Grid
        The image's grid (any spacing and direction), world mm.
    family : str or Family
    observed_kind : {"labels", "sdm", "intensity"}
    forward : {"hybrid", "sdmnn", "exact", "deepsdf"}
        The forward model (see the module notes); the learned ones use ``model`` (default: the shipped one).
    pose : {"none", "rigid"}
        "none": the model frame is the world frame; "rigid": fit a rotation and a shift too.
    prior : dict, optional
        name -> (low, high) sub-ranges of the uniform prior (default: the family's ranges).
    tau, sigma : float, optional
        Label softness or blur length (mm) / noise (mm for SDMs); estimated when not given.
    band : float, optional
        For SDM targets: use only voxels with |observed| <= band mm.
    label : int, optional
        The value of the shape in a multi-label map (needed where the map holds more than one non-zero value).
    mask : ndarray, optional
        Non-zero where voxels may be used (on ``grid``).
    centre : (3,) world mm, optional
        Where the shape is about (the search starts there; default: the image's own estimate).
    radius : float, optional
        With ``centre``: only the voxels within this many mm of it are fitted, as with a mask of that ball (and
        ``mask``, if given): other tissues of a whole head kept out of the fit.
    threads : int, optional
        Threads for the network (default: every core on a quiet machine, one when the cores are busy).
    device : {"auto", "cpu", "cuda"}
        Where the shipped network runs when ``model`` is not given (a given model runs on its own device); auto:
        a CUDA GPU when torch sees one.
    progress : callable, optional
        Called with a short text at each stage.
    turns : {"auto", "near", "all"}
        The rotations the pose's search tries in an intensity image (a label map's or an SDM's come from its
        inside's axes): "near" the model's orientation (within about 30 degrees), "all" of them (SEARCH_TURNS spread
        evenly), or "auto": near, then all where that fit's R^2 is below AUTO_ALL_R2 and its residuals are more than
        the image's noise (NOISE_VOLUME), or AUTO_ALL_PINNED of its shape parameters lie at their range's ends (the
        better of the two is kept).
    window : (low, high), "auto" or None
        Intensity images: leave out the voxels outside these intensities (judged on the image smoothed by half a
        voxel) and those within WINDOW_MARGIN_MM (or a voxel's largest side) of them along each axis: a third tissue
        near the shape (air beside the bone of a CT) and its partial-volume border, which the model's two tissues
        cannot explain; those outside count as the outside tissue (``_appearance``). "auto" (the default): in an image holding air as a CT in Hounsfield units does, the voxels below
        AIR_HU (the window AIR_HU..inf); in any other, none. None: every voxel. The result's ``window`` says what
        was left out.
    """
    call = dict(locals())  # the arguments, for the search over all rotations of turns="auto"
    t0 = time.perf_counter()
    fam = get_family(family)
    check_forward(forward)
    if pose not in POSES:
        raise FitError(f"pose must be one of {', '.join(POSES)}, got {pose!r}")
    if not isinstance(grid, Grid):
        raise FitError(f"grid must be an sdmnn.Grid (the image's geometry), got {type(grid).__name__}")
    for name, value in (("tau", tau), ("sigma", sigma), ("band", band)):
        if value is not None and not (is_number(value) and math.isfinite(value) and value > 0):
            raise FitError(f"{name} must be a number > 0 mm, got {value!r}")
    for name, value, least in (("n_shapes", n_shapes, 1), ("n_starts", n_starts, 1), ("n_samples", n_samples, 1),
                               ("max_exact", max_exact, 1), ("seed", seed, 0), ("threads", 1 if threads is None else threads, 1)):
        if not (is_integer(value) and value >= least):
            raise FitError(f"{name} must be an integer >= {least}, got {value!r}")
    check_device(device)
    if observed_kind != "sdm" and (sigma is not None or band is not None):
        raise FitError(f"sigma and band (--sigma, --band) apply to an SDM target (observed_kind sdm), not {observed_kind}")
    if turns not in TURNS:
        raise FitError(f"turns must be one of {', '.join(TURNS)}, got {turns!r}")
    if turns != "auto" and (observed_kind != "intensity" or pose != "rigid"):
        raise FitError(f"turns (--turns) applies to an intensity image fitted with pose rigid (a label map's or an SDM's "
                       f"search turns the model to its inside's axes); got observed_kind {observed_kind} (--observed), pose {pose} (--pose)")
    if progress is not None and not callable(progress):
        raise FitError(f"progress is a function of one text, got {type(progress).__name__}")
    if centre is not None:
        try:
            centre = np.asarray(centre, dtype=float)
        except (TypeError, ValueError):
            centre = None
        if centre is None or centre.shape != (3,) or not np.all(np.isfinite(centre)):
            raise FitError("centre must be three finite numbers (world mm)")
    if radius is not None:
        if centre is None:
            raise FitError("radius (--radius) is the reach about centre (--centre) of the voxels fitted: give the centre")
        if not (is_number(radius) and math.isfinite(radius) and radius > 0):
            raise FitError(f"radius (--radius) must be a number > 0 mm, got {radius!r}")
    y_full = check_observed(observed, observed_kind, label)
    if y_full.shape != grid.shape:
        raise FitError(f"the observed image's shape {y_full.shape} does not match its grid {grid.shape}")
    mask_full = None
    if mask is not None:
        mask_full = np.asarray(mask) != 0
        if mask_full.shape != grid.shape:
            raise FitError(f"the mask's shape {mask_full.shape} does not match the image's {grid.shape}")
    if radius is not None:
        ball = _ball(grid, centre, radius)
        if not ball.any():
            raise FitError(f"no voxel of the image lies within {radius:g} mm (radius, --radius) of the centre (--centre)")
        mask_full = ball if mask_full is None else mask_full & ball
    user_mask = mask_full  # where the shape may be (the band and the window only choose the voxels fitted)
    if band is not None and observed_kind == "sdm":
        near = np.abs(y_full) <= band
        mask_full = near if mask_full is None else mask_full & near
    say = progress or (lambda text: None)
    kept, beyond, windowed = _within_window(y_full, grid, window, observed_kind)
    if beyond is not None and user_mask is not None:
        beyond = beyond & user_mask  # no voxel outside the mask is used
    if kept is not None:
        mask_full = kept if mask_full is None else mask_full & kept
        top = windowed["high"]
        say(f"left out {windowed['left_out_voxels']} voxels outside the window {windowed['low']:g}.."
            f"{'' if top is None else f'{top:g}'} and near them")
    low, high = _prior_box(fam, prior)
    network = "deepsdf" if forward == "deepsdf" else "sdmnn"
    evals = {network: 0, "exact": 0} if forward != "exact" else {"exact": 0}
    net = None
    if forward != "exact":
        from .nn.checkpoint import check_trained_for, load_model

        net = model or load_model(family=fam, arch=network, device=device)
        check_trained_for(net, fam, f"the model {net.path}" if getattr(net, "path", None) else "the model")
        if net.arch != network:
            raise FitError(f"forward {forward} (--forward) runs a network of the {network} architecture; the model "
                           f"given is of the {net.arch} architecture")

    if net is not None:
        import torch

        from .runtime import torch_threads

        threads_before = torch.get_num_threads()
        torch.set_num_threads(threads or torch_threads())
    try:
        # 1. where the shape is: a crop of the image, the model's centre and the starting rotations
        centre_model, model_axes, model_radius = _model_frame(fam)
        foreground = {"labels": y_full, "sdm": (y_full < 0).astype(np.float32)}.get(observed_kind)
        if foreground is not None and user_mask is not None:  # the shape is where the mask lets the fit look
            foreground = foreground * user_mask
            if not foreground.any():
                raise FitError("no labelled (inside) voxel lies within the mask")
        if foreground is None and pose == "rigid" and centre is None:
            if mask_full is not None and mask_full.sum() < 8:
                raise FitError("the mask (and window) leave fewer than 8 voxels of the image to fit")
            centre = _locate(net, fam, evals, y_full, mask_full, grid, tau, centre_model,
                             _all_turns(LOCATE_TURNS) if turns == "all" else _near_identity(), (low + high) / 2, say)
        lo, hi, anchor, image_axes = _region(foreground, grid, centre, model_radius)
        if pose == "none":
            at = grid.to_index(centre_model)
            if np.any(at < np.maximum(lo, 0) - 0.5) or np.any(at > np.minimum(hi, np.array(grid.shape) - 1) + 0.5):
                raise FitError(f"with pose none the shape stays where the model's frame puts it (its centre at "
                               f"{np.round(centre_model, 1).tolist()} mm), outside the part of the image it would be fitted "
                               f"to (about {np.round(anchor, 1).tolist()} mm): fit its pose too (pose rigid, --pose rigid)")
        obs = _Observation.of(observed_kind, y_full, mask_full, grid, lo, hi, beyond)
        if obs.mask.sum() < 8:
            raise FitError("the mask (and window) leave fewer than 8 voxels of the image to fit")
        if pose == "rigid":
            rotations = (_rotation_candidates(model_axes, image_axes) if image_axes is not None
                         else _all_turns() if turns == "all" else _near_identity())
            position, search_shift = anchor, foreground is None
        else:
            rotations, position, search_shift = [np.eye(3)], centre_model, False
        like = _Likelihood(obs, tau if observed_kind != "sdm" else sigma)

        # 2. the search: a screen of rotations, shifts and shapes, then a joint local optimisation
        shapes, more = _sobol((n_shapes, SCREEN_AGAIN_SHAPES), low, high, seed)  # more: the sequence's next points
        if net is not None:
            say(f"searching {len(rotations)} rotations x {n_shapes} shapes" + (" x shifts" if search_shift else "")
                + " with the network")
            picks = _screen(_Network(net, obs, evals), like, rotations, position, centre_model, shapes, search_shift,
                            more_shapes=more)[:n_starts]
            # the starts' local optimisation needs only the voxels near them, far fewer than the search's crop (on an
            # intensity image, the model's reach about the image's centre)
            like.obs = _recrop(obs, y_full, mask_full, grid, fam, [(v, p) for _, p, v in picks], like, beyond)
            vector, best_pose = _best_of(_Network(net, like.obs, evals), like, picks, low, high, pose == "rigid")
        else:
            say(f"searching {len(rotations)} rotations x {n_shapes} shapes" + (" x shifts" if search_shift else "")
                + " with the exact SDM")
            picks = _screen(_exact_table(fam, obs, evals), like, rotations, position, centre_model, shapes, search_shift)
            _, best_pose, vector = picks[0]

        # 3. re-crop the search's crop around the found shape (the polish needs only the voxels near its surface)
        obs = _recrop(obs, y_full, mask_full, grid, fam, [(vector, best_pose)], like, beyond)
        if kept is not None:  # what the window left out of the part of the image fitted, not of the whole image
            fitted_part = tuple(slice(a, a + n) for a, n in zip(obs.offset, obs.grid.shape))
            windowed = {**windowed, "left_out_voxels": int(np.sum(~kept[fitted_part]))}
        exact = _Exact(fam, obs, evals)
        like.obs = obs

        # 4. the final model's MAP and the Gauss-Newton Hessian in (unit-box shape, rotation, shift)
        span = high - low
        free_pose = pose == "rigid"
        if forward == "hybrid":
            say("polishing with the exact SDM")
            nnet = _Network(net, obs, evals)

            def hybrid_jacobian(vector, pose, d, low, high, free_pose):  # the network's shape columns, the exact pose's
                J = nnet.jacobian(vector, pose, None, low, high, False)
                return np.concatenate([J, exact.pose_jacobian(vector, pose, d)], 1) if free_pose else J

            vector, best_pose, d, J = _levenberg_marquardt(exact, [(hybrid_jacobian, 50), (exact.jacobian, 10)], like, vector,
                                                           best_pose, low, high, max_exact, free_pose)
            model_error = None
        elif forward == "exact":
            say("polishing with the exact SDM")
            vector, best_pose, d, J = _levenberg_marquardt(exact, [(exact.jacobian, 50)], like, vector, best_pose, low, high,
                                                           max_exact, free_pose)
            model_error = None
        else:
            say("refining with the network")
            nnet = _Network(net, obs, evals)
            vector, best_pose, d, J = _levenberg_marquardt(nnet, [(nnet.jacobian, 20)], like, vector, best_pose, low, high,
                                                           40, free_pose)
            model_error = _model_error(net)
        like.estimate(d)
        scale_used = like.scale
        temper = correlation_volume(like.residuals(d), obs.grid.shape)
        _, H, scores = like.gauss_newton(d, J, scores=True)
        scales = np.concatenate([span, POSE_SCALE if free_pose else []])
        cov_unit = _posterior_covariance(H, scores, obs.grid.shape, temper)
        if model_error:  # the network's own error near the surface, correlated over patches of its measured volume
            rms, patch_mm3 = model_error
            side = np.maximum(1, np.round(patch_mm3 ** (1 / 3) / np.array(obs.grid.spacing))).astype(int)
            G = _block_sums(like.error_sensitivity(d, J), obs.grid.shape, side)
            H_inv = _inverse(H)
            cov_unit = cov_unit + rms**2 * H_inv @ (G.T @ G) @ H_inv
        cov = cov_unit * np.outer(scales, scales)
        centre_theta = np.concatenate([vector, np.zeros(6) if free_pose else []])
        samples = _truncated_gaussian(np.random.default_rng(seed), centre_theta, cov, low, high, n_samples)

        # 5. quality
        surface = fam.mesh(vector).apply_transform(best_pose.matrix())  # world mm
        fitted = fitted_labels(surface, obs.grid).ravel() > 0 if observed_kind == "labels" else None
        quality = _quality(like, d, obs, fitted)
        quality["surface_outside_image"] = _outside(surface, grid)
        if free_pose:
            quality["pose_inflation"] = dict(zip(fam.names, map(float, _pose_inflation(cov_unit, len(fam.names)))))
        names = tuple(fam.names) + (POSE_NAMES if free_pose else ())
        result = FitResult(
            family=fam.name, family_source=fam.source, names=names, params=dict(zip(fam.names, map(float, vector))),
            model=_model_record(net), window=windowed,
            pose=best_pose.matrix(),
            pose_centre=np.asarray(best_pose.centre, float),
            mean=dict(zip(names, map(float, samples.mean(0)))), std=dict(zip(names, map(float, samples.std(0)))),
            samples=samples, seconds=time.perf_counter() - t0, evaluations=evals, forward=forward,
            observed_kind=observed_kind,
            noise={{"sdm": "sigma", "labels": "tau", "intensity": "blur"}[observed_kind]: scale_used,
                   "tau_floor": like.floor if observed_kind == "labels" else None,
                   "appearance": dict(zip(("inside", "outside", "sigma"), like.appearance)) if like.appearance else None,
                   "model_error": dict(zip(("near_rms_mm", "correlation_mm3"), model_error)) if model_error else None,
                   "correlation_volume": temper},
            quality=quality, grid=grid, log_posterior=-like.nll(d) / temper, covariance=cov,
        )
        pinned = _pinned(vector, low, high)
        if _explains_poorly(quality, temper, pinned) and turns == "auto" and image_axes is None and pose == "rigid":
            why = ("a warning" if quality.get("warning") else f"{pinned} parameters at their range's ends"
                   if pinned >= AUTO_ALL_PINNED else "its residuals more than the image's noise")
            say(f"the fit explains the image poorly (R^2 {quality.get('r2', 0.0):.2f}, {why}): searching all orientations "
                f"({SEARCH_TURNS})")
            again = {**call, "turns": "all", "model": net, "threads": torch.get_num_threads() if net is not None else threads}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FitWarning)
                    wide = fit(**again)
            except FitError:  # (a shape found outside the searched crop, say): the first fit stands
                wide = None
            if wide is not None:
                if _standing(wide.quality) < _standing(quality):
                    result, quality = wide, wide.quality
                result.evaluations = {k: evals[k] + wide.evaluations[k] for k in evals}  # both searches
            result.seconds = time.perf_counter() - t0
        if quality.get("warning"):
            warnings.warn(quality["warning"], FitWarning, stacklevel=2)
        if quality["surface_outside_image"] > OUTSIDE_WARNING:
            warnings.warn(f"{quality['surface_outside_image']:.0%} of the fitted surface lies outside the image: the image "
                          "cuts the shape off, and there the fitted shape is the model's, not the image's", FitWarning, stacklevel=2)
        confounded = {k: v for k, v in quality.get("pose_inflation", {}).items() if v > CONFOUNDED_WITH_POSE}
        if confounded:
            names, many = " and ".join(confounded), len(confounded) > 1
            warnings.warn(f"with the pose free, {names} {'are' if many else 'is'} "
                          + " and ".join(f"{math.sqrt(v):.0f}x" if v < 1e8 else "over 10000x" for v in confounded.values())
                          + f" less certain (standard deviation) than with it known: the {fam.name} family's {names} "
                          f"{'move' if many else 'moves'} the shape much as the pose does, so the image cannot tell "
                          f"them apart and {'their MAPs and intervals say' if many else 'its MAP and interval say'} "
                          f"little; fit with the pose known (pose none, --pose none) or a family without "
                          f"{'them' if many else 'it'}", FitWarning, stacklevel=2)
        return result
    finally:
        if net is not None:
            torch.set_num_threads(threads_before)


def fitted_labels(mesh, grid: Grid) -> np.ndarray:
    """The label map a shape makes on ``grid`` (uint8): 1 where a voxel is more than half inside ``mesh`` (world mm),
    read from sub-voxels (``sdm.inside_fraction``; about LABEL_SUBVOXELS at most) over the voxels of the mesh's box
    alone."""
    from .sdm import inside_fraction

    labels = np.zeros(grid.shape, np.uint8)
    lo, hi = _index_box(grid, mesh.bounds[0], mesh.bounds[1], 0.0)
    lo, hi = np.maximum(lo - 1, 0), np.minimum(hi + 1, np.array(grid.shape) - 1)
    if np.any(hi < lo):  # the shape lies outside the grid
        return labels
    box = crop(grid, lo, hi)
    most = max(2, int((LABEL_SUBVOXELS / box.size) ** (1 / 3)))
    labels[tuple(slice(a, a + n) for a, n in zip(lo, box.shape))] = inside_fraction(mesh, box, most=most) > 0.5
    return labels


def _within_window(image, grid: Grid, window, kind: str):
    """The voxels of an image a fit may use given ``window`` ((low, high), "auto" or None), and what was left out:
    (kept, beyond, record): kept and beyond bool (the image's shape) or None, record {"low", "high", "auto",
    "left_out_voxels"} or None. A voxel is outside the window (``beyond``) where the image smoothed by half a voxel
    (``_smoothed``) is; those outside and those within WINDOW_MARGIN_MM (at least a voxel's largest side) of one along
    each axis are left out (not ``kept``): a third tissue (air beside the bone of a CT) and the partial-volume voxels
    of its border. The window holds the shape's two tissues, so a voxel beyond it is not the shape's inside: the fit
    counts it as observed at the outside tissue's intensity (``_appearance``), and a shape that reaches into air
    pays for it. "auto": of an intensity image holding air as a CT in Hounsfield units does (smoothed, below
    AIR_SURE_HU), the voxels below AIR_HU; of any other image, none."""
    from scipy.ndimage import maximum_filter1d

    auto = isinstance(window, str) and window == "auto"
    if window is None or auto and kind != "intensity":
        return None, None, None
    if kind != "intensity":
        raise FitError("window (--window) leaves out a third tissue of an intensity image; a label map or an SDM has none")
    if auto:
        low, high = AIR_HU, math.inf
    else:
        try:
            low, high = np.asarray(window, float).reshape(2)
        except (TypeError, ValueError):
            low = high = math.nan
        if not (low < high and not math.isnan(low) and not math.isnan(high)):
            raise FitError(f"window (--window) is two intensities LOW < HIGH, or auto, got {window!r}")
    if auto and np.min(image) >= AIR_SURE_HU:  # nor will its smoothed voxels be below
        return None, None, None
    grid.check_memory(bytes_per_voxel=16, what=f"the window (--window) of {grid.shape[0]}x{grid.shape[1]}x{grid.shape[2]} "
                                               f"voxels needs", advice="crop the image, or raise SDMNN_MAX_BYTES"
                                                                       + (", or keep every voxel (--window none)" if auto else ""))
    smooth = _smoothed(image)
    if auto and not (smooth < AIR_SURE_HU).any():
        return None, None, None
    beyond = outside = (smooth < low) | (smooth > high)
    record = {"low": float(low), "high": float(high) if math.isfinite(high) else None, "auto": auto}  # JSON: no inf
    if not outside.any():
        return None, None, {**record, "left_out_voxels": 0}
    reach = np.floor(max(WINDOW_MARGIN_MM, max(grid.spacing)) / np.array(grid.spacing) + 1e-9).astype(int)
    for axis, r in enumerate(reach):  # within the margin along each axis: a box about each voxel outside
        outside = maximum_filter1d(outside, 2 * r + 1, axis=axis)
    kept = ~outside
    if kept.sum() < 8:
        hint = " (an image of air alone? --window none keeps every voxel)" if auto else ""
        raise FitError(f"the window {low:g}..{high:g} (--window) leaves fewer than 8 voxels of the image to fit{hint}")
    return kept, beyond, {**record, "left_out_voxels": int(outside.sum())}


def _ball(grid: Grid, centre, radius: float) -> np.ndarray:
    """Bool (the grid's shape): the voxels whose centres lie within ``radius`` mm of ``centre`` (world mm); the squared
    distance summed along the voxel axes (4 bytes a voxel, not the points' 24)."""
    along = np.array(grid.direction).T @ (np.asarray(centre, float) - np.array(grid.origin))  # mm along each voxel axis
    parts = [((np.arange(n) * h - a) ** 2).astype(np.float32) for n, h, a in zip(grid.shape, grid.spacing, along)]
    return parts[0][:, None, None] + parts[1][None, :, None] + parts[2][None, None, :] <= np.float32(radius) ** 2


def _smoothed(image) -> np.ndarray:
    """``image`` smoothed by a Gaussian of half a voxel (weights 0.11, 0.79, 0.11 along each axis), float32: its noise
    halved (a voxel of noise 100 alone does not reach -400 from 0), while a single voxel of air (-1000) in tissue (0)
    still reads -490, a sheet of one voxel -790."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(image, np.float32), 0.5, truncate=2.0, mode="nearest")


def _model_frame(fam):
    """The centre and principal axes of the solid shape at the centre of the family's box (its voxels
    inside, as a label map's are), and the radius (mm) of the family's grid."""
    from .sdm import exact_sdm

    g = fam.grid
    inside = exact_sdm(fam.mesh((fam.space.low + fam.space.high) / 2), g) < 0
    centre, axes = _principal_axes(g.to_world(np.argwhere(inside)))
    radius = float(np.linalg.norm((g.bounds[1] - g.bounds[0]) / 2))
    return centre, axes, radius


def _one_structure(foreground, idx, grid: Grid, radius) -> None:
    """Refuse a foreground of separate structures (a segmentation of both ears, say), which no one shape explains:
    its connected parts of at least a tenth of the largest's voxels, joined where their centres lie within the model's
    extent (twice ``radius``, mm; a thin shape's label map can break into pieces), must form one group, and together
    reach no farther than that extent (a voxel's diagonal aside): the family's grid holds each of its shapes."""
    from scipy import ndimage
    from scipy.cluster.hierarchy import fcluster, linkage

    lo, hi = idx.min(0), idx.max(0) + 1
    parts, n = ndimage.label(foreground[tuple(slice(a, b) for a, b in zip(lo, hi))] > 0.5, structure=np.ones((3, 3, 3)))
    if n == 0:
        return
    counts = np.bincount(parts.ravel())[1:]
    big = np.flatnonzero(counts >= 0.1 * counts.max()) + 1
    if len(big) > 1:
        centres = grid.to_world(np.array(ndimage.center_of_mass(parts > 0, parts, big)) + lo)
        groups = fcluster(linkage(centres, "single"), t=2 * radius, criterion="distance")
        apart = f"more than {2 * radius:.0f} mm apart (the model's extent)"
    if len(big) == 1 or groups.max() < 2:  # one group: how far it reaches
        span = _span(grid.to_world(np.argwhere(np.isin(parts, big)) + lo))
        if span <= 2 * radius + float(np.linalg.norm(grid.spacing)):  # a voxel's diagonal beyond the model's extent
            return
        if len(big) == 1:
            raise FitError(f"the labelled structure is {span:.0f} mm across, farther than the family's grid reaches "
                           f"({2 * radius:.0f} mm, its diagonal; it holds each of the family's shapes): does it hold more "
                           "than the shape? Give a mask of the shape (mask=, --mask), or its own label (label=, --label)")
        groups = fcluster(linkage(centres, "single"), t=2, criterion="maxclust")  # the two farthest apart
        apart = f"together {span:.0f} mm across, farther than the family's grid reaches ({2 * radius:.0f} mm)"
    weights = counts[big - 1]
    where = [np.average(centres[groups == k], axis=0, weights=weights[groups == k]) for k in range(1, groups.max() + 1)]
    raise FitError(f"the image holds {len(where)} separate structures {apart}, "
                   f"about {', '.join(str(np.round(w, 1).tolist()) for w in where)} mm (world): no one shape explains them; "
                   "fit one at a time, giving its centre (centre=, --centre X,Y,Z) or a mask of it (mask=, --mask)")


def _span(points: np.ndarray) -> float:
    """The largest distance between two of ``points`` (N, 3), mm: between the vertices of their convex hull."""
    from scipy.spatial import ConvexHull, QhullError
    from scipy.spatial.distance import pdist

    if len(points) < 2:
        return 0.0
    try:
        return float(pdist(points[ConvexHull(points).vertices]).max())
    except (QhullError, ValueError):  # all in a plane or a line
        return _widest(points)


def _widest(points: np.ndarray, n: int = 600) -> float:
    """The largest width of ``points`` over ``n`` directions spread over the sphere: their span, or a little less
    (within 0.3 % for 600), never more."""
    i = np.arange(n) + 0.5
    z, phi = 1 - 2 * i / n, np.pi * (1 + 5**0.5) * i
    directions = np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], 1)
    points = points[:: max(1, len(points) // 100_000)]  # (fewer points: still never over the span)
    widest = 0.0
    for chunk in np.array_split(directions, max(1, n // 100)):  # at most about 160 MB at a time
        projected = points @ chunk.T
        widest = max(widest, float((projected.max(0) - projected.min(0)).max()))
    return widest


def _region(foreground, grid: Grid, centre, radius):
    """The crop to search in (index box), the anchor point (world) and the image's principal axes (or None).

    With a foreground (a label map's labels, an SDM's inside): its voxels plus 2 mm, its centroid and axes
    (near the hint, when one is given). Otherwise: a box of the model's radius plus 5 mm about the hint or
    the image's centre."""
    if foreground is not None and centre is None:
        idx = np.argwhere(foreground > 0.5)
        _one_structure(foreground, idx, grid, radius)
        anchor, axes = _principal_axes(grid.to_world(idx))
        pad = np.ceil(2.0 / np.array(grid.spacing)).astype(int) + 2
        return idx.min(0) - pad, idx.max(0) + pad, anchor, axes
    anchor = np.asarray(centre, float) if centre is not None else grid.to_world((np.array(grid.shape) - 1) / 2)
    if anchor.shape != (3,) or not np.all(np.isfinite(anchor)):
        raise FitError(f"centre must be three world coordinates in mm, got {centre!r}")
    half = radius + SEARCH_SHIFT_MM
    lo, hi = _index_box(grid, anchor - half, anchor + half, 1.0)
    if np.any(hi < 0) or np.any(lo >= np.array(grid.shape)):
        raise FitError(f"the centre {np.round(anchor, 2).tolist()} mm lies outside the image")
    if foreground is None:
        return lo, hi, anchor, None
    sub = crop(grid, lo, hi)  # a hint on a label map: the labels near it
    lo_c = np.clip(lo, 0, np.array(grid.shape) - 1)
    idx = np.argwhere(foreground[tuple(slice(a, a + n) for a, n in zip(lo_c, sub.shape))] > 0.5)
    if len(idx) < 4:
        raise FitError("no labelled (inside) voxel lies near the given centre")
    return lo, hi, anchor, _principal_axes(sub.to_world(idx))[1]


def _locate(net, fam, evals, image, mask, grid: Grid, tau, centre_model, rotations, shape, say):
    """Where the shape is about (world mm) in an intensity image, with no hint: the placement of ``shape``, at each of
    ``rotations``, whose share of the inside best explains the image within a box about it that holds it at any
    turn: the largest R^2 of a local fit I = alpha + beta p, for every shift at once by FFT (sums of I, I^2 and the
    template over that box), on the image block-averaged to about LOCATE_MM voxels (at most LOCATE_VOXELS of them).
    Local, not the fit of the whole image: that finds the region whose mean differs most from the image's (air
    outside the head), this one the region shaped like the model, whatever lies elsewhere."""
    from scipy.special import ndtr

    # the image in blocks of k voxels a side
    full = np.array(grid.shape)
    k = np.clip(np.round(LOCATE_MM / np.array(grid.spacing)), 1, full).astype(int)
    if np.prod(full // k) > LOCATE_VOXELS:
        k = np.minimum(np.ceil(k * (np.prod(full // k) / LOCATE_VOXELS) ** (1 / 3)), full).astype(int)
    n = full // k
    if mask is None:
        M, I = np.ones(n), block_mean(np.asarray(image, np.float32), k).astype(np.float64)
    else:
        M = block_mean(mask.astype(np.float32), k).astype(np.float64)
        I = block_mean(np.where(mask, np.asarray(image, np.float32), 0), k).astype(np.float64) / np.maximum(M, 1e-12)
    coarse = Grid(tuple(int(v) for v in n), tuple(np.array(grid.spacing) * k), tuple(grid.to_world((k - 1) / 2)), grid.direction)
    # the box: the model's grid at any turn, about the image's centre; the FFTs padded by it, so that nothing wraps
    reach = np.linalg.norm(np.array(fam.grid.shape) * np.array(fam.grid.spacing)) / 2
    m = 2 * np.ceil(reach / np.array(coarse.spacing)).astype(int) + 1
    at = np.round((n - 1) / 2).astype(int)
    first = at - m // 2  # the box's first voxel, unshifted
    size = tuple(int(v) for v in n + m)
    axes = (0, 1, 2)
    F = lambda v: np.fft.rfftn(v, size, axes)  # noqa: E731
    corr = lambda Ft, Fa: np.fft.irfftn(np.conj(Ft) * Fa, size, axes)  # noqa: E731  # c(u) = sum_x t(x) a(x + u)
    F_M, F_MI, F_MII = F(M), F(M * I), F(M * I * I)
    F_W = F(np.ones(m))
    count, S_I, S_II = corr(F_W, F_M), corr(F_W, F_MI), corr(F_W, F_MII)
    # shifts u (the box's first voxel) that keep its centre in the image
    u = np.stack(np.meshgrid(*(np.arange(-(mi // 2), ni - mi // 2) for ni, mi in zip(n, m)), indexing="ij"), -1).reshape(-1, 3)
    idx = tuple((u % np.array(size)).T)
    count, S_I, S_II = count[idx], S_I[idx], S_II[idx]
    var_I = count * S_II - S_I**2
    # placements whose box holds at least half the voxels the best placed one does (an image thinner than the box
    # holds a box's worth nowhere)
    usable = (count >= 0.5 * count.max()) & (var_I > 1e-9 * np.maximum(count * S_II, 1e-300))
    box_points = coarse.to_world(np.stack(np.meshgrid(*(np.arange(f, f + mi) for f, mi in zip(first, m)), indexing="ij"), -1).reshape(-1, 3))
    table = _Network(net, _Points(box_points), evals) if net is not None else _exact_table(fam, _Points(box_points), evals)
    vols = table.volumes(shape[None])
    h = float(np.prod(coarse.spacing)) ** (1 / 3)
    spread = math.sqrt(h**2 / 12 + (tau or 0.0) ** 2)
    say(f"locating the shape in the whole image ({len(rotations)} rotations; voxels of "
        + " x ".join(f"{v:.2g}" for v in coarse.spacing) + " mm)")
    best = (-np.inf, None)
    for R in rotations:
        pose = Pose(R, coarse.to_world(at), centre_model)
        P = ndtr(-table.sample(vols, [pose])[0] / spread).reshape(m)
        F_P, F_PP = F(P), F(P * P)
        S_p, S_pp, S_pI = (corr(F_P, F_M)[idx], corr(F_PP, F_M)[idx], corr(F_P, F_MI)[idx])
        var_p = count * S_pp - S_p**2
        ok = usable & (var_p > 1e-9 * np.maximum(count * S_pp, 1e-300))
        if not ok.any():
            continue
        r2 = np.where(ok, (count * S_pI - S_p * S_I) ** 2 / np.where(ok, var_p * var_I, 1.0), -np.inf)
        j = int(np.argmax(r2))
        if r2[j] > best[0]:
            best = (float(r2[j]), coarse.to_world(at + u[j] - first))
    if best[1] is None:  # no placement with the shape and its box in the image
        return None
    return best[1]


@dataclass
class _Points:
    """World points (N, 3) where a ``_Network`` samples SDMs, in an ``_Observation``'s place."""

    points: np.ndarray


def _screen(table: _Network, like: _Likelihood, rotations, position, centre_model, shapes, search_shift: bool,
            max_shift: float = SEARCH_SHIFT_MM, voxels: int = 60000, more_shapes=None):
    """Score every (rotation, shape) pair at ``position``, or with ``search_shift`` at its best shift within
    ``max_shift`` mm of it, with a model's SDMs (``table``) on at most ~``voxels`` voxels. Returns
    [(score, Pose, shape vector)], best first, one per rotation (its best shape and shift). Of more than
    SEARCH_KEEP rotations with shifts, every one is scored with the middle of the shapes' box, and the best SEARCH_KEEP
    of them with every shape (a rotation's score moves far more with the rotation than with the shape). Without shifts,
    ``more_shapes`` (if given) are scored at the best SCREEN_AGAIN_ROTATIONS rotations too, a second round."""
    if search_shift:
        if len(rotations) > SEARCH_KEEP:
            middle = (np.min(shapes, 0) + np.max(shapes, 0)) / 2
            first = _shift_screen(table, like, table.volumes(middle[None]), rotations, position, centre_model,
                                  middle[None], max_shift)
            rotations = [pose.R for _, pose, _ in first[:SEARCH_KEEP]]
        return _shift_screen(table, like, table.volumes(shapes), rotations, position, centre_model, shapes, max_shift)
    every = max(1, int(round(len(like.obs.y) / voxels)))

    def best_per_rotation(rotations, shapes):
        vols = table.volumes(shapes)
        out = []
        for R in rotations:
            pose = Pose(R, np.asarray(position, float), centre_model)
            # plain trilinear: a ranking of candidates whose interpolation bias is alike
            scores = like.nll(table.sample(vols, [pose] * len(shapes), every, corrected=False), every=every)
            i = int(np.argmin(scores))
            out.append((float(scores[i]), pose, shapes[i]))
        return out  # in the order of ``rotations``

    by_score = lambda picks: sorted(picks, key=lambda t: t[0])  # noqa: E731
    # scored at the voxels' centres, as on any subset of the voxels, not at their sub-voxels
    with table.reading_at(like.obs.grid.points() if like.obs.sub != (1, 1, 1) else None):
        out = by_score(best_per_rotation(rotations, shapes))
        if more_shapes is not None:
            top, rest = out[:SCREEN_AGAIN_ROTATIONS], out[SCREEN_AGAIN_ROTATIONS:]
            again = best_per_rotation([pose.R for _, pose, _ in top], more_shapes)
            out = by_score([min(first, second, key=lambda t: t[0]) for first, second in zip(top, again)] + rest)
    return out


def _shift_screen(table, like, vols, rotations, position, centre_model, shapes, max_shift):
    """_screen's shift search for intensity images, every integer voxel shift at once: with the intensities
    profiled out, the residual sum of squares of a shifted template p = Phi(-d / s) needs only its
    correlation with the image, one FFT per (rotation, shape), on the crop at half resolution."""
    obs = like.obs
    g, image, mask = obs.grid, obs.y.reshape(obs.grid.shape), obs.mask.reshape(obs.grid.shape)
    n2 = np.array(g.shape) // 2
    if np.any(n2 < 2):
        n2, factor = np.array(g.shape), 1
    else:
        factor = 2
    half = lambda v: block_mean(v, (factor,) * 3)  # noqa: E731
    coarse = Grid(tuple(int(n) for n in n2), tuple(np.array(g.spacing) * factor),
                  tuple(g.to_world(np.full(3, (factor - 1) / 2))), g.direction)
    I, M, A = half(image), half(mask), half(obs.beyond.reshape(g.shape))
    centre = coarse.to_world((n2 - 1) / 2)
    n, SI, SII = M.sum(), (M * I).sum(), (M * I * I).sum()
    axes = (0, 1, 2)
    F_MI, F_M = np.fft.rfftn(M * I, n2, axes), np.fft.rfftn(M, n2, axes)
    F_A = np.fft.rfftn(A, n2, axes) if A.any() else None  # a third tissue: observed at the outside's intensity
    reach = np.floor(max_shift / np.array(coarse.spacing)).astype(int)
    shifts = np.stack(np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij"), -1).reshape(-1, 3)
    at = tuple((shifts % n2).T)  # circular indices of the shifts
    out = []
    with table.reading_at(coarse.points()):
        for R in rotations:
            pose = Pose(R, centre + (np.asarray(position) - centre), centre_model)
            template = like.blended(table.sample(vols, [pose] * len(shapes), corrected=False)).reshape(len(shapes), *n2)
            best = None
            for s, p in enumerate(template):
                FP, FPP = np.fft.rfftn(p, n2, axes), np.fft.rfftn(p * p, n2, axes)
                SpI = np.fft.irfftn(F_MI * np.conj(FP), n2, axes)[at]  # sum over x of M I p(x - shift)
                Sp = np.fft.irfftn(F_M * np.conj(FP), n2, axes)[at]
                Spp = np.fft.irfftn(F_M * np.conj(FPP), n2, axes)[at]
                if F_A is not None:
                    Spp = Spp + np.fft.irfftn(F_A * np.conj(FPP), n2, axes)[at]
                det = np.maximum(n * Spp - Sp * Sp, 1e-12 * n * n)
                rss = np.maximum(SII - (Spp * SI**2 - 2 * Sp * SI * SpI + n * SpI**2) / det, 1e-12 * SII)
                k = int(np.argmin(rss))
                score = 0.5 * n * math.log(rss[k] / n)
                if best is None or score < best[0]:
                    shift = coarse.to_world(shifts[k]) - coarse.to_world(np.zeros(3))
                    best = (score, Pose(R, np.asarray(position, float) + shift, centre_model), shapes[s])
            out.append(best)
    return sorted(out, key=lambda t: t[0])


def _best_of(nnet: _Network, like: _Likelihood, picks, low, high, free_pose):
    """Levenberg-Marquardt with the network from each pick, the noise scale (label softness, blur or sigma, unless
    given) estimated afresh at each step, as in the polish (held at its start, 0.5 h, it was wider than the tubes on
    label maps of thick slices, where the starts drifted to the box's edges and a turned one won); the best (vector,
    Pose) by its likelihood at its own scale, which ``like`` keeps with that start's appearance (the polish's crop
    margin reads the scale)."""
    best = None
    for _, pose, vector in picks:
        vector, pose, d, _ = _levenberg_marquardt(nnet, [(nnet.jacobian, 8)], like, vector, pose, low, high,
                                                  budget=16, free_pose=free_pose)
        f = like.nll(d)
        if best is None or f < best[0]:
            best = (f, vector, pose, like.scale, like.appearance)
    _, vector, pose, like.scale, like.appearance = best
    return vector, pose


class ExactVolumes:
    """Exact SDMs of shapes on a grid in a learned model's place (its ``predict_torch``): the exact screen samples
    them as it would a network's, and the fit study stands them in for the network to separate the lookup's share
    of a network-only fit's bias from the network's."""

    arch = "exact"

    def __init__(self, family, grid: Grid):
        self.family, self.grid = family, grid

    def predict_torch(self, vectors, differentiable: bool = True):
        """(B, d) shape vectors (a tensor, family units; clipped to the box, which float32 rounding can leave) ->
        (B, nx, ny, nz) float32 exact SDMs, never differentiable (``differentiable`` is taken for the network's
        signature and ignored)."""
        import torch

        from .sdm import exact_sdm

        low, high = self.family.space.low, self.family.space.high
        return torch.stack([torch.from_numpy(exact_sdm(self.family.mesh(np.clip(v.double().numpy(), low, high)), self.grid)).float()
                            for v in vectors])


def _exact_table(fam, obs, evals) -> _Network:
    """The exact SDMs of shapes on the family's grid, sampled as a network's would be (for the exact screen)."""
    return _Network(ExactVolumes(fam, fam.grid), obs, evals)


def _recrop(obs, y_full, mask_full, grid, fam, found, like, beyond=None):
    """The observation re-cropped, within its crop, to the box of the ``found`` shapes ([(vector, Pose)], posed)
    plus a margin (4 tau and 2 voxels, at least 1.5 mm); ``beyond``: the voxels outside a window (``_within_window``)."""
    world = np.concatenate([pose.to_world(fam.mesh(vector).vertices) for vector, pose in found])
    margin = max(1.5, 4 * like.scale + 2 * max(grid.spacing))
    lo, hi = _index_box(grid, world.min(0), world.max(0), margin)
    lo = np.maximum(lo, obs.offset)
    hi = np.minimum(hi, obs.offset + np.array(obs.grid.shape) - 1)
    if np.any(hi - lo < 2):  # fewer than 3 voxels along an axis: the posed shapes left the searched part of the image
        raise FitError("the shape found lies outside the part of the image searched: give where it is (centre, --centre)")
    return _Observation.of(obs.kind, y_full, mask_full, grid, lo, hi, beyond)


def _levenberg_marquardt(forward, phases, like: _Likelihood, vector, pose: Pose, low, high, budget: int, free_pose: bool):
    """Levenberg-Marquardt on the likelihood of ``forward(vector, pose)`` in (unit-box shape, rotation /
    POSE_SCALE, shift / POSE_SCALE), with the Gauss-Newton (Fisher) matrix; ``phases`` lists (jacobian,
    steps): e.g. the network's shape Jacobian first (cheap, but where the exact residual is orthogonal to the
    network's columns it stops short of the exact optimum, by 3 % of phi's range in a flat valley), then the
    exact one, whose fixed point is the exact optimum. ``budget`` bounds
    the trial evaluations of ``forward``; the noise scale (and an intensity image's appearance) is re-estimated after
    each step.
    Returns (vector, pose, forward there, the Jacobian there)."""
    span = high - low
    k_shape = len(vector)
    vector = np.asarray(vector, float)
    d = forward(vector, pose)
    like.estimate(d)
    f = like.nll(d)
    J, jacobian = None, phases[-1][0]
    for phase, (jacobian, steps) in enumerate(phases):
        lam = 1e-3  # afresh: a phase that ended on a rejected step left it at its ceiling, where the next would not step
        last = phase == len(phases) - 1
        for _ in range(steps):
            if budget < 1:
                break
            J = jacobian(vector, pose, d, low, high, free_pose)
            g, H = like.gauss_newton(d, J)
            if 0.5 * g @ np.linalg.lstsq(H, g, rcond=None)[0] < LM_STOP_NATS:  # no step along J could gain more
                break
            accepted, tries = False, 0
            while budget >= 1 and lam < 1e8 and (last or tries < LM_HANDOVER_TRIES):
                tries += 1
                step = -np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-12), g)
                v_new = low + np.clip((vector - low) / span + step[:k_shape], 0, 1) * span
                p_new = pose.moved(step[k_shape:] * POSE_SCALE) if free_pose else pose
                d_new = forward(v_new, p_new)
                budget -= 1
                f_new = like.nll(d_new)
                if f_new <= f:
                    lam, accepted = max(lam / 10, 1e-9), True
                    break
                lam *= 10
            if not accepted:
                break
            moved = np.abs(step).max()
            vector, pose, d, J = v_new, p_new, d_new, None
            like.estimate(d)
            f = like.nll(d)
            if moved < 1e-6:
                break
    if J is None:
        J = jacobian(vector, pose, d, low, high, free_pose)
    return vector, pose, d, J


def _standing(quality: dict) -> tuple:
    """How well an intensity fit explains its image, for choosing between two fits (smaller is better): no warning,
    then no tissue intensity beyond the voxels' values, then the larger R^2."""
    warning = quality.get("warning", "")
    return bool(warning), _BEYOND in warning, -quality.get("r2", 0.0)


def _outside(mesh, grid: Grid) -> float:
    """The share of ``mesh``'s area (world mm) outside the image's box (its voxels' outer faces)."""
    index = grid.to_index(mesh.triangles_center)
    out = np.any((index < -0.5) | (index > np.array(grid.shape) - 0.5), axis=1)
    return float(mesh.area_faces[out].sum() / max(mesh.area, 1e-12))


def _quality(like: _Likelihood, d, obs: _Observation, labels=None) -> dict:
    """How well the fit explains the image, and a warning when it explains it poorly. A label map is compared with
    ``labels``, the one the fitted shape would make (its voxels more than half inside, ``sdm.inside_fraction``): on
    slices thick against the shape, voxels whose centres lie inside are not those (``bench/label_dice_probe.py``)."""
    y, m, at_voxels = obs.y, obs.mask > 0, obs.coarse(d)
    fitted = at_voxels < 0 if labels is None else labels
    q = {}
    if like.kind == "labels":
        inside = y > 0.5
        q["dice"] = float(2 * np.sum(fitted & inside & m) / max(np.sum(fitted & m) + np.sum(inside & m), 1))
        q["mislabelled_voxels"] = int(np.sum(fitted[m] != inside[m]))  # a count: the crop fitted differs by forward model
        if q["dice"] < MIN_DICE:
            q["warning"] = (f"the fit explains the label map poorly (Dice {q['dice']:.2f} < {MIN_DICE}); "
                            "is it the right family, label and pose?")
    elif like.kind == "sdm":
        near = m & (np.abs(y) <= 2.0)
        q["rms_mm"] = float(np.sqrt(np.mean((at_voxels[near] - y[near]) ** 2))) if near.any() else float("nan")
        q["dice"] = float(2 * np.sum(fitted & (y < 0) & m) / max(np.sum(fitted & m) + np.sum((y < 0) & m), 1))
        if q["dice"] < MIN_DICE:
            q["warning"] = f"the fit explains the SDM poorly (Dice of the insides {q['dice']:.2f} < {MIN_DICE})"
    else:
        a, b, sigma = like.appearance
        r = y - b - (a - b) * like.blended(d)
        near = m & (np.abs(at_voxels) <= NEAR_MM)  # where the shape explains the image; far voxels hold only noise
        q["r2"] = float(1 - np.sum(r[near] ** 2) / max(np.sum((y[near] - y[near].mean()) ** 2), 1e-12))
        q["contrast_to_noise"] = float(abs(a - b) / sigma)
        noise = _image_noise(obs)
        if noise is not None:  # (without it, no fit's residuals count as noise alone)
            q["sigma_over_image_noise"] = float(sigma / max(noise, 1e-12 * (abs(a) + abs(b) + 1)))
        bright = np.abs(y - a) < np.abs(y - b)
        # not a Dice against a segmentation: partial volume and noise keep it low for right fits of thin shapes
        q["dice_nearer_tissue"] = float(2 * np.sum(fitted & bright & m) / max(np.sum(fitted & m) + np.sum(bright & m), 1))
        # a tissue intensity beyond every voxel's: the fitted surface separates no two tissues of the image, the
        # intensities only extrapolated from its partial-volume voxels (a shape found at the wrong place or turn)
        # (beyond by more than 2 sigma and BEYOND_RANGE of the voxels' range: a noise-free image's pure voxels are its
        # extremes, but a thin shape has no voxel wholly inside)
        lowest, highest = float(y[m].min()), float(y[m].max())
        slack = max(2 * sigma, BEYOND_RANGE * (highest - lowest))
        beyond = [f"{name} intensity ({v:.4g})" for name, v in (("inside", a), ("outside", b))
                  if not lowest - slack <= v <= highest + slack]
        if beyond:
            q["warning"] = (f"the fit explains the image poorly: its {' and '.join(beyond)} "
                            f"{'lie' if len(beyond) > 1 else 'lies'} {_BEYOND} "
                            f"({lowest:.4g} to {highest:.4g}), so the shape found matches no region of the image; "
                            + _INTENSITY_HINT)
        elif q["r2"] < MIN_R2:
            q["warning"] = (f"the fit explains the image poorly (R^2 {q['r2']:.2f} < {MIN_R2}): check the family, and note "
                            "that " + _INTENSITY_HINT)
        elif q["contrast_to_noise"] < MIN_CONTRAST_TO_NOISE:
            q["warning"] = (f"the fit explains the image poorly: its two tissues differ by {q['contrast_to_noise']:.2f} "
                            f"times the noise (< {MIN_CONTRAST_TO_NOISE:g}), so the shape found separates no two tissues "
                            "of the image (a window, --window, must hold both of the shape's tissues); note that "
                            + _INTENSITY_HINT)
    res = like.residuals(d)[m]
    q["residual_mean"], q["residual_std"] = float(res.mean()), float(res.std())
    return q


def _prior_box(fam, prior):
    low, high = fam.space.low.copy(), fam.space.high.copy()
    if prior is not None and not isinstance(prior, Mapping):
        raise FitError(f"prior maps parameter names to (low, high) ranges, got {type(prior).__name__}")
    for name, bounds in (prior or {}).items():
        if name not in fam.names:
            raise FitError(f"unknown parameter {name!r} in the prior; the parameters are {', '.join(fam.names)}")
        if not (isinstance(bounds, (tuple, list, np.ndarray)) and np.shape(bounds) == (2,) and all(is_number(b) for b in bounds)):
            raise FitError(f"the prior of {name} is a (low, high) pair of numbers, got {bounds!r}")
        (lo, hi), i = (float(b) for b in bounds), fam.names.index(name)
        if not (fam.space.low[i] <= lo < hi <= fam.space.high[i]):
            raise FitError(f"the prior of {name} must be a sub-range of [{fam.space.low[i]:g}, {fam.space.high[i]:g}], got [{lo:g}, {hi:g}]")
        low[i], high[i] = lo, hi
    return low, high


def _model_record(net) -> dict | None:
    """Which network a fit ran on, for its result.json: its folder and its weights' SHA-256 (None: an exact fit)."""
    if net is None:
        return None
    path, meta = getattr(net, "path", None), getattr(net, "meta", None) or {}
    return {"path": str(Path(path).resolve()) if path else None, "weights_sha256": meta.get("weights_sha256")}


def _model_error(net) -> tuple[float, float]:
    """A learned model's error within one voxel of the surface, from its validation: (RMS in mm, the volume in mm^3
    over which it is correlated). Models validated before these were recorded: 1.25 x the mean |error| within
    1 mm (the RMS of a Gaussian error of that mean) and one model voxel."""
    acc = (net.meta.get("accuracy") or {}).get("validation") or {}
    voxel_mm3 = float(np.prod(net.grid.spacing))
    if "near_rms" in acc and math.isfinite(acc.get("near_correlation_voxels", math.nan)):
        return float(acc["near_rms"]), float(acc["near_correlation_voxels"]) * voxel_mm3
    return 1.25 * float(acc.get("band_mae", 0.05)), voxel_mm3


def _block_sums(rows, shape, side) -> np.ndarray:
    """(blocks, k): the rows (one per voxel of ``shape``) summed over blocks of ``side`` voxels along each axis."""
    idx = np.indices(shape).reshape(3, -1) // np.asarray(side).reshape(3, 1)
    blocks = np.ravel_multi_index(tuple(idx), tuple(np.array(shape) // np.asarray(side) + 1))
    summed = np.zeros((blocks.max() + 1, rows.shape[1]))
    np.add.at(summed, blocks, rows)
    return summed


def _sobol(counts, low, high, seed) -> list[np.ndarray]:
    """Consecutive runs of ``counts`` points of one scrambled Sobol sequence in the box [low, high] (one engine: a
    count that is a power of 2 keeps its balance, and only the first is checked for it)."""
    from scipy.stats import qmc

    engine = qmc.Sobol(len(low), scramble=True, seed=seed)
    return [low + engine.random(n) * (high - low) for n in counts]


def _pose_inflation(cov, n_shape: int) -> np.ndarray:
    """Each shape parameter's posterior variance over its variance given the pose (``cov``: shape parameters first,
    then the pose's six): 1 where the image tells the shape from the pose, large where the pose can stand in for it."""
    S, P = slice(0, n_shape), slice(n_shape, None)
    given_pose = np.diag(cov[S, S] - cov[S, P] @ np.linalg.pinv(cov[P, P]) @ cov[P, S])
    return np.diag(cov[S, S]) / np.maximum(given_pose, 1e-300)


def _posterior_covariance(H, scores, shape, temper):
    """The posterior's covariance: the larger (in every direction) of the Laplace one with the likelihood
    tempered by the correlation volume, H^-1 * temper, and the cluster-robust sandwich H^-1 M H^-1, where M
    sums the outer products of the voxels' gradients summed over blocks a correlation length across. The
    sandwich holds when the model is wrong in ways the noise model does not say (partial volume, blur),
    the tempered Laplace when the residuals are what the model says."""
    H_inv = _inverse(H)
    summed = _block_sums(scores, shape, [max(2, math.ceil(2 * temper ** (1 / 3)))] * 3)
    sandwich = H_inv @ (summed.T @ summed) @ H_inv
    laplace = H_inv * temper
    # the larger of two covariances: the sandwich made at least the Laplace one, direction by direction
    w, V = np.linalg.eigh(0.5 * (laplace + laplace.T))
    root = V * np.sqrt(np.maximum(w, 0))
    root_inv = V / np.sqrt(np.maximum(w, 1e-300))
    s_w, s_V = np.linalg.eigh(root_inv.T @ sandwich @ root_inv)
    return root @ (s_V * np.maximum(s_w, 1.0)) @ s_V.T @ root.T


def _inverse(H):
    """The inverse of a Hessian made positive definite (a flat direction gets a wide, not a negative, variance)."""
    w, V = np.linalg.eigh(0.5 * (H + H.T))
    w = np.maximum(w, 1e-6 * max(float(w.max()), 1e-12))
    return (V / w) @ V.T


def _truncated_gaussian(rng, mean, cov, low, high, n):
    """Samples of N(mean, cov) whose first len(low) coordinates lie in [low, high]."""
    k = len(low)
    out = np.empty((0, len(mean)))
    for _ in range(50):
        s = rng.multivariate_normal(mean, cov, size=2 * n)
        out = np.concatenate([out, s[np.all((s[:, :k] >= low) & (s[:, :k] <= high), axis=1)]])
        if len(out) >= n:
            return out[:n]
    s = rng.multivariate_normal(mean, cov, size=n)  # mass almost all outside the box: clip
    s[:, :k] = np.clip(s[:, :k], low, high)
    return s


def synthetic_target(family: str, params, kind: str = "labels", tau: float = 0.05, sigma: float = 0.05, seed: int = 0, grid: Grid | None = None):
    """An observed image made by the forward model itself (for unit tests only; studies use ``sdmnn.phantom``):
    labels drawn from the logistic model around the exact SDM (tau=0: a clean label map), or the exact SDM
    plus Gaussian noise."""
    from .sdm import exact_sdm

    fam = get_family(family)
    grid = grid or fam.grid
    d = exact_sdm(fam.mesh(params), grid).astype(np.float64)
    rng = np.random.default_rng(seed)
    if kind == "labels":
        if tau <= 0:
            return (d < 0).astype(np.uint8), grid
        p_inside = 1 / (1 + np.exp(np.clip(d / tau, -60, 60)))
        return (rng.random(d.shape) < p_inside).astype(np.uint8), grid
    return (d + sigma * rng.standard_normal(d.shape)).astype(np.float32), grid
