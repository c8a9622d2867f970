"""Reading and writing volumes (NIfTI, .npy) and meshes (via trimesh), always atomically.

A volume file carries its grid: NIfTI through its affine (axis-aligned, the ITK voxel-centre
convention, millimetres); ``.npy`` through a sidecar ``.json`` holding the grid.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import FileError, GridError, MeshError
from .grid import Grid

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npy")
MESH_SUFFIXES = (".stl", ".ply", ".obj", ".off", ".glb")


def _suffix(path: Path, accepted) -> str:
    name = path.name.lower()
    for s in sorted(accepted, key=len, reverse=True):
        if name.endswith(s):
            return s
    raise FileError(f"{path}: unsupported file type; accepted: {', '.join(accepted)}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` with the same suffix; rename it onto ``path`` on success.

    A failure leaves no partial file behind.
    """
    path = Path(path)
    if not path.parent.exists():
        raise FileError(f"cannot write {path}: the folder {path.parent} does not exist")
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise FileError(f"cannot write {path}: {e.strerror}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise FileError(f"cannot write {path}: {e.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def save_volume(path, volume: np.ndarray, grid: Grid) -> Path:
    """Write ``volume`` (shape ``grid.shape``) to .nii, .nii.gz or .npy (+ .json grid sidecar)."""
    path = Path(path)
    kind = _suffix(path, VOLUME_SUFFIXES)
    volume = np.asarray(volume)
    if volume.shape != grid.shape:
        raise GridError(f"the volume's shape {volume.shape} does not match the grid's {grid.shape}")
    if kind == ".npy":
        with atomic_path(path) as tmp:
            np.save(tmp, volume)
        with atomic_path(path.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps({"grid": grid.to_dict()}))
        return path
    import nibabel as nib

    image = nib.Nifti1Image(volume, grid.affine)
    image.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return path


def load_volume(path) -> tuple[np.ndarray, Grid]:
    """Read a volume and its grid from .nii, .nii.gz or .npy (grid from the .json sidecar)."""
    path = Path(path)
    kind = _suffix(path, VOLUME_SUFFIXES)
    if not path.is_file():
        raise FileError(f"{path}: no such file")
    try:
        if kind == ".npy":
            volume = np.load(path, allow_pickle=False)
            sidecar = path.with_suffix(".json")
            grid = Grid.from_dict(json.loads(sidecar.read_text())["grid"]) if sidecar.exists() else Grid(volume.shape, (1, 1, 1))
        else:
            import nibabel as nib

            image = nib.load(path)
            volume = np.asarray(image.dataobj)
            grid = _grid_from_affine(image.affine, volume.shape, path)
    except GridError:
        raise
    except Exception as e:  # nibabel, numpy and gzip each raise their own kinds on a damaged file
        raise FileError(f"{path}: cannot be read as a volume ({e})") from None
    if volume.ndim != 3:
        raise FileError(f"{path}: expected a 3-D volume, got {volume.ndim} dimensions")
    return volume, grid


def _grid_from_affine(affine: np.ndarray, shape, path) -> Grid:
    a = np.asarray(affine, dtype=float)
    off = a[:3, :3] - np.diag(np.diag(a[:3, :3]))
    if np.abs(off).max() > 1e-6 or np.any(np.diag(a)[:3] <= 0):
        raise GridError(f"{path}: only axis-aligned volumes with positive spacing are supported (the affine has rotations or flips)")
    return Grid(tuple(shape[:3]), tuple(np.diag(a)[:3]), tuple(a[:3, 3]))


def load_mesh(path):
    """Read a triangle mesh (STL, PLY, OBJ, OFF, GLB) with trimesh; identical vertices are joined."""
    import trimesh

    path = Path(path)
    _suffix(path, MESH_SUFFIXES)
    if not path.is_file():
        raise FileError(f"{path}: no such file")
    try:
        mesh = trimesh.load_mesh(path, process=False, force="mesh")
    except Exception as e:  # trimesh raises many kinds for a malformed file
        raise FileError(f"{path}: cannot be read as a mesh ({type(e).__name__}: {e})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise MeshError(f"{path}: the file holds no triangles")
    mesh.merge_vertices()  # STL stores a triangle soup: join identical vertices, change no geometry
    return mesh


def save_mesh(path, mesh) -> Path:
    path = Path(path)
    _suffix(path, MESH_SUFFIXES)
    with atomic_path(path) as tmp:
        mesh.export(tmp)
    return path


def write_json(path, data: dict) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return path
