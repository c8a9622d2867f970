"""Test images of a family's shape that the fit's own forward model did not make: a mesh 4x finer than the
family's, at a given pose, sampled with partial volume (sub-voxel sampling) on a grid of its own spacing and
direction; for CT-like images also blurred (a Gaussian point-spread function) and noisy.

A label map marks the voxels more than half inside the shape. A CT-like image blends two tissue intensities
by each voxel's blurred inside fraction and adds Gaussian noise. The truth (parameters, pose, imaging
settings) comes back as a dict, saved beside the image by the command line.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .checks import is_integer, is_number
from .errors import SdmnnError
from .grid import Grid
from .shapes import get_family
from .shapes.registry import stored_family

KINDS = ("labels", "ct")
#: Finer-mesh factor: sections and points around each section, both times this.
REFINE = 4  # passed to the family's mesher as ``refine`` when it takes that option


def pose_matrix(rotate_degrees, translate, centre) -> np.ndarray:
    """The 4x4 model -> world matrix that rotates by ``rotate_degrees`` (a rotation vector, degrees) about
    ``centre`` and then shifts by ``translate`` (mm)."""
    from scipy.spatial.transform import Rotation

    R = Rotation.from_rotvec(np.radians(np.asarray(rotate_degrees, float))).as_matrix()
    m = np.eye(4)
    m[:3, :3] = R
    m[:3, 3] = np.asarray(centre, float) + np.asarray(translate, float) - R @ np.asarray(centre, float)
    return m


def truth_mesh(truth: dict):
    """The phantom's true surface in world mm (the fine mesh at the true pose)."""
    fam = stored_family(truth, "the phantom")
    refine = truth.get("mesh_refine", 1)
    mesh = fam.mesh(truth["params"], **({"refine": refine} if refine > 1 else {}))
    return mesh.apply_transform(np.array(truth["pose"]))


def surface_distances(mesh_a, mesh_b, n: int = 20000, seed: int = 0) -> np.ndarray:
    """Distances (mm) from ``n`` points sampled on each surface to the other, both ways: (2 n,), for comparing a
    fitted surface with a phantom's true one."""
    import igl

    out = []
    for src, dst in ((mesh_a, mesh_b), (mesh_b, mesh_a)):
        points = np.asarray(src.sample(n, seed=seed))
        out.append(np.sqrt(igl.point_mesh_squared_distance(points, dst.vertices, dst.faces.astype(np.int64))[0]))
    return np.concatenate(out)


def _finite_numbers(value, name: str, count: int, allow_one: bool = False) -> np.ndarray:
    """``value`` as ``count`` finite floats (one, repeated, where ``allow_one``), or one sentence naming it."""
    try:
        out = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError, OverflowError):
        out = np.empty(0)
    if allow_one and out.size == 1:
        out = np.repeat(out, count)
    if out.size != count or not np.all(np.isfinite(out)):
        raise SdmnnError(f"{name} must be {count} finite numbers" + (" (or one)" if allow_one else "") + f", got {value!r}")
    return out


def make_phantom(family, params, *, rotate=(0.0, 0.0, 0.0), translate=(0.0, 0.0, 0.0), spacing=(0.3, 0.3, 0.3),
                 kind: str = "labels", direction=None, noise: float = 100.0, blur: float = 0.25,
                 intensities=(0.0, 1000.0), margin: float = 3.0, seed: int = 0):
    """A test image of one shape, and its truth.

    Parameters
    ----------
    family, params
        The shape (a family name and a mapping or vector of its parameters).
    rotate : (3,) degrees
        Rotation vector about the shape's centre (the centroid of its mesh's vertices).
    translate : (3,) mm
        Shift of the shape after the rotation; the image stays centred on the unshifted centre.
    spacing : (3,) mm
        Voxel size.
    kind : {"labels", "ct"}
    direction : (3, 3), optional
        The image's direction (ITK convention; default identity, which NIfTI files store as the
        ITK/Slicer-style flipped affine diag(-s, -s, s)).
    noise, blur : float
        CT only: Gaussian noise (intensity units) and the point-spread function's standard deviation (mm).
    intensities : (inside, outside)
        CT only: the two tissues' intensities (default: fluid 0, bone 1000).
    margin : float
        mm of image beyond the shape on every side.

    Returns
    -------
    (volume (nx, ny, nz) ndarray, Grid, truth dict)
    """
    from .sdm import inside_fraction, subvoxels

    if kind not in KINDS:
        raise SdmnnError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    fam = get_family(family)
    vector = fam.space.vector(params)
    spacing = _finite_numbers(spacing, "spacing", 3, allow_one=True)
    if not np.all(spacing > 0):
        raise SdmnnError(f"spacing must be three numbers > 0 mm, got {spacing.tolist()}")
    rotate, translate = _finite_numbers(rotate, "rotate", 3), _finite_numbers(translate, "translate", 3)
    if np.abs(translate).max() > 1e3:
        raise SdmnnError(f"translate is a shift of at most 1000 mm, got {translate.tolist()}")
    intensities = _finite_numbers(intensities, "intensities", 2)
    for name, value in (("noise", noise), ("blur", blur), ("margin", margin)):
        if not (is_number(value) and math.isfinite(value) and value >= 0):
            raise SdmnnError(f"{name} must be a number >= 0, got {value!r}")
    if not (is_integer(seed) and seed >= 0):
        raise SdmnnError(f"seed must be an integer >= 0, got {seed!r}")
    refine = REFINE if fam.takes("refine") else 1
    if refine == 1:
        warnings.warn(f"the {fam.name} family's mesher takes no `refine` option, so the phantom's true surface is "
                      "meshed as finely as the fit's own model", stacklevel=2)
    mesh = fam.mesh(vector, **({"refine": refine} if refine > 1 else {}))
    centre = mesh.vertices.mean(0)
    pose = pose_matrix(rotate, translate, centre)
    posed = mesh.copy().apply_transform(pose)
    D = np.eye(3) if direction is None else np.asarray(direction, float)
    grid = Grid((1, 1, 1), tuple(spacing), (0.0, 0.0, 0.0), D)  # checks the direction
    D = np.array(grid.direction)

    # the image: centred on the unshifted centre, covering the posed shape plus the margin
    local = (posed.vertices - centre) @ D
    half = np.abs(local).max(0) + margin
    shape = np.ceil(2 * half / spacing).astype(int) + 1
    origin_local = -(shape - 1) * spacing / 2
    grid = Grid(tuple(int(n) for n in shape), tuple(spacing), tuple(centre + D @ origin_local), D)
    grid.check_memory()

    # partial volume: the inside fraction of sub-voxels of at most sdm.SUBVOXEL mm
    k = subvoxels(spacing)
    fraction = inside_fraction(posed, grid, blur=blur if kind == "ct" else 0.0,
                               what=f"the phantom's {shape[0]}x{shape[1]}x{shape[2]} voxels take their partial volume "
                                    f"from {k[0]}x{k[1]}x{k[2]} sub-voxels each, which need")
    truth = {
        "family": fam.name, "family_source": fam.source, "params": fam.space.as_dict(vector), "pose": pose.tolist(),
        "rotate_degrees": list(map(float, rotate)), "translate_mm": list(map(float, translate)),
        "centre_mm": centre.tolist(), "kind": kind, "spacing": spacing.tolist(), "direction": D.tolist(),
        "mesh_refine": refine, "subvoxels": k.tolist(), "seed": seed,
    }
    if kind == "labels":
        labels = (fraction >= 0.5).astype(np.uint8)
        if not labels.any():
            raise SdmnnError(f"no voxel of {'x'.join(f'{v:g}' for v in spacing)} mm lies half inside the shape, so its label map would be "
                             "empty: give a finer spacing (--spacing)")
        return labels, grid, truth
    inside_value, outside_value = map(float, intensities)
    rng = np.random.default_rng(seed)
    image = outside_value + (inside_value - outside_value) * fraction + noise * rng.standard_normal(fraction.shape)
    truth.update(noise=float(noise), blur_mm=float(blur), intensities={"inside": inside_value, "outside": outside_value})
    return image.astype(np.float32), grid, truth
