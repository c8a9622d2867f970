"""Reading and writing volumes and meshes, always atomically (a failure leaves no partial file).

Volumes: NIfTI (.nii, .nii.gz), NRRD (.nrrd; .nhdr read only), MetaImage (.mha; .mhd read only) through
SimpleITK, with any geometry (flips, oblique directions, anisotropic spacing); ``.npy`` with a sidecar
``.json`` holding the grid; a DICOM series, read from its folder (GDCM through SimpleITK). Every volume
comes with its ``Grid`` in **LPS** world millimetres, as ITK, DICOM and 3D Slicer use: x grows to the
patient's left, y to posterior, z to superior. NIfTI files store the same positions in **RAS** (x to the
right, y to anterior): SimpleITK converts on reading and on writing, so a NIfTI affine diag(-s, -s, s)
(what ITK and Slicer write for an image with identity direction) reads as a grid with identity direction,
and a grid written and read back is the same grid.
Meshes: STL, PLY, OBJ, OFF, GLB through trimesh, in the same world millimetres.
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

#: Volume files read; all but the detached headers (.nhdr, .mhd) are also written.
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy")
WRITE_ONLY_ATTACHED = {".nhdr": ".nrrd", ".mhd": ".mha"}
#: Volumes written as one file that medical imaging tools read (what ``volume_format_of`` picks from).
WRITTEN_VOLUME_FORMATS = tuple(s for s in VOLUME_SUFFIXES if s not in WRITE_ONLY_ATTACHED and s != ".npy")
MESH_SUFFIXES = (".stl", ".ply", ".obj", ".off", ".glb")


def _path(path) -> Path:
    """``path`` as a Path, or one sentence when it is no path at all."""
    if not isinstance(path, (str, os.PathLike)):
        raise FileError(f"expected a file path, got {type(path).__name__}")
    return Path(path)


def _matching_suffix(path: Path, suffixes) -> str | None:
    """The longest of ``suffixes`` that ``path``'s name ends with (case aside), or None."""
    name = path.name.lower()
    return next((s for s in sorted(suffixes, key=len, reverse=True) if name.endswith(s)), None)


def _suffix(path: Path, accepted) -> str:
    suffix = _matching_suffix(path, accepted)
    if suffix is None:
        volume = set(accepted) == set(VOLUME_SUFFIXES)  # (where a DICOM series' folder is read too)
        if volume and _is_dicom(path):
            raise FileError(f"{path}: a DICOM file; give the folder of its series")
        raise FileError(f"{path}: unsupported file type; accepted: {', '.join(accepted)}"
                        + (", or a DICOM series' folder" if volume else "")
                        + ("" if path.exists() or not path.parent.is_dir() or path.suffix else
                           f" (there is no {path.name} in {path.parent})"))
    return suffix


def _is_dicom(path: Path) -> bool:
    """Whether ``path`` is a DICOM file (its preamble's "DICM")."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


#: Figures (three slices, overlays) are written as PNG only.
IMAGE_SUFFIXES = (".png",)
#: Names of files, refused as names of output folders (a dataset, a fit's results, a model).
FILE_SUFFIXES = (*VOLUME_SUFFIXES, *MESH_SUFFIXES, *IMAGE_SUFFIXES, ".json", ".safetensors")


def check_output(path, accepted=None, what: str = "file") -> Path:
    """Refuse, before any work, an output that could not be written: a suffix not in ``accepted``, an existing
    path of the other kind (a file where a folder is to be written, a folder for a file), a file's missing parent
    folder (folders are created with their parents). One sentence naming the path."""
    path = _path(path)
    if what == "folder":  # created with its parents (make_folder): the nearest one that exists must be a folder
        there = next(p for p in (path, *path.parents) if p.exists())
        if not there.is_dir():
            raise FileError(f"cannot write the folder {path}: {there} is a file" if there != path else
                            f"cannot write the folder {path}: a file of that name exists")
        named = _matching_suffix(path, FILE_SUFFIXES)
        if named is not None and not path.is_dir():
            raise FileError(f"cannot write the folder {path}: {named} names a file; this output is a folder")
        _check_writable(there, f"the folder {path}")
        return path
    if accepted is not None:
        _written_suffix(path, accepted)
    if path.is_dir():
        raise FileError(f"cannot write {path}: it is a folder")
    if not path.parent.is_dir():
        raise FileError(f"cannot write {path}: the folder {path.parent} does not exist")
    _check_writable(path.parent, str(path))
    if _matching_suffix(path, (".npy",)) and accepted is not None and ".npy" in accepted:
        _check_sidecar(path)
    return path


def _check_writable(folder: Path, what: str) -> None:
    """Refuse, before the work, an output whose folder takes no new file (permissions, a read-only mount): a file
    is made there and removed (permission bits alone do not say it: root ignores them, /proc and mounts do not)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".sdmnn-probe.", dir=folder)
    except OSError as e:
        raise FileError(f"cannot write {what}: {folder} takes no new file ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def _sidecar(path: Path) -> Path:
    """The .json beside an .npy volume that holds its grid."""
    return path.with_suffix(".json")


def volume_files(path) -> tuple[Path, ...]:
    """The files ``save_volume`` writes for ``path``: the volume, and for an .npy its grid beside it."""
    path = _path(path)
    return (path, _sidecar(path)) if _matching_suffix(path, (".npy",)) else (path,)


def _check_sidecar(path: Path) -> None:
    """Refuse an .npy volume whose grid file could not be written, or would replace a .json that is no grid's."""
    sidecar = _sidecar(path)
    if sidecar.is_dir():
        raise FileError(f"cannot write {path}: its grid goes to {sidecar.name} beside it, which is a folder")
    if sidecar.exists():
        try:  # what save_volume writes, and nothing more (a model's model.json or a fit's result.json has a grid too)
            held = json.loads(sidecar.read_text())
            ours = isinstance(held, dict) and set(held) == {"grid"}
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise FileError(f"cannot write {path}: its grid goes to {sidecar.name} beside it, which exists and is no "
                            "volume's grid file (move it, or write another name or format)")


def volume_format_of(path) -> str:
    """The format to write volumes made from the image ``path`` in: its own, the one-file form of a detached header
    (.nhdr -> .nrrd, .mhd -> .mha), NIfTI (.nii.gz) for .npy and a DICOM series' folder."""
    if _path(path).is_dir():
        return ".nii.gz"
    kind = _suffix(_path(path), VOLUME_SUFFIXES)
    return {**WRITE_ONLY_ATTACHED, ".npy": ".nii.gz"}.get(kind, kind)


def volume_stem(path) -> str:
    """The name of the volume file ``path`` without its suffix (NAME.nii.gz -> NAME)."""
    path = _path(path)
    return path.name[: -len(_suffix(path, VOLUME_SUFFIXES))]


def make_folder(path) -> Path:
    """Create the output folder ``path`` (and its parents); one sentence if it cannot be."""
    path = check_output(path, what="folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileError(f"cannot create the output folder {path}: {e.strerror}") from None
    return path


def _written_suffix(path: Path, accepted) -> str:
    """``_suffix`` of a file to write: the detached headers (.nhdr, .mhd) are read, never written."""
    kind = _matching_suffix(path, accepted)
    if kind is None:  # the accepted list names only what can be written
        _suffix(path, [s for s in accepted if s not in WRITE_ONLY_ATTACHED])
    if kind in WRITE_ONLY_ATTACHED:
        raise FileError(f"{path}: {kind} files keep their data in a second file; write {WRITE_ONLY_ATTACHED[kind]} instead")
    return kind


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` with the same suffix in lower case (the writers pick the format by
    it and know only lower-case suffixes: ITK wrote NAME.MHA's data to a .mhd and a .zraw, numpy added .npy to
    NAME.NPY); rename it onto ``path`` on success.

    A failure leaves no partial file behind.
    """
    path = _path(path)
    if not path.parent.exists():
        raise FileError(f"cannot write {path}: the folder {path.parent} does not exist")
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise FileError(f"cannot write {path}: {e.strerror}") from None
    os.close(fd)
    usual_permissions(tmp)  # mkstemp makes the file private
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise FileError(f"cannot write {path}: {e.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path):
    """Yield a temporary folder beside the output folder ``path``; on success its files are moved into ``path``:
    where ``path`` does not exist, the whole folder is renamed at once (its parents created); into an existing one,
    file by file. A failure while the files are written leaves ``path`` as it was and removes the temporary one."""
    import shutil

    path = check_output(path, what="folder")
    make_folder(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        raise FileError(f"cannot write the folder {path}: {e.strerror}") from None
    try:
        yield tmp
        try:
            if not path.exists():
                os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private
                os.replace(tmp, path)
            else:
                for f in tmp.iterdir():
                    os.replace(f, path / f.name)
        except OSError as e:
            raise FileError(f"cannot write the folder {path}: {e.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def usual_permissions(path) -> None:
    """Give a file written through a private temporary (mkstemp, or a writer that recreates it so) the permissions
    of any other output: 0666 less the umask."""
    os.chmod(path, 0o666 & ~_umask())


def save_volume(path, volume: np.ndarray, grid: Grid) -> Path:
    """Write ``volume`` (shape ``grid.shape``, indexed ``[i, j, k]``) with its grid's geometry.

    Formats by suffix: .nii, .nii.gz, .nrrd, .mha (SimpleITK; NIfTI stores the LPS grid as RAS), or .npy
    with a .json grid sidecar. Boolean volumes are written as uint8.
    """
    path = _path(path)
    kind = _written_suffix(path, VOLUME_SUFFIXES)
    if not isinstance(grid, Grid):
        raise GridError(f"grid must be an sdmnn.Grid, got {type(grid).__name__}")
    volume = np.asarray(volume)
    if not (np.issubdtype(volume.dtype, np.number) or volume.dtype == bool) or np.iscomplexobj(volume):
        raise FileError(f"cannot write {path}: a volume holds real numbers, got {volume.dtype}")
    if volume.dtype == np.float16:  # SimpleITK has no half floats
        volume = volume.astype(np.float32)
    if volume.shape != grid.shape:
        raise GridError(f"the volume's shape {volume.shape} does not match the grid's {grid.shape}")
    if volume.dtype == bool:
        volume = volume.astype(np.uint8)
    if kind == ".npy":  # the volume and its grid beside it, each written whole; neither renamed in place unless both
        _check_sidecar(path)  # were written (the two renames follow each other)
        with atomic_path(_sidecar(path)) as tmp_grid, atomic_path(path) as tmp:
            np.save(tmp, volume)
            tmp_grid.write_text(json.dumps({"grid": grid.to_dict()}))
        return path
    import SimpleITK as sitk

    _check_itk_path(path)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0)))  # ITK arrays are [k, j, i]
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(np.array(grid.direction).ravel().tolist())
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=kind != ".nii")
        except RuntimeError as e:
            raise FileError(f"cannot write {path}: {_first_line(e)}") from None
    return path


def load_volume(path) -> tuple[np.ndarray, Grid]:
    """Read a 3-D volume (indexed ``[i, j, k]``) and its grid (LPS world mm) from any ``VOLUME_SUFFIXES`` file, or
    from the folder of one DICOM series (its slices' files)."""
    path = _path(path)
    if path.is_dir():
        return _load_dicom_series(path)
    kind = _suffix(path, VOLUME_SUFFIXES)
    if not path.is_file():
        raise FileError(f"{path}: no such file")
    try:
        if kind == ".npy":
            volume = np.load(path, allow_pickle=False)
            if volume.ndim != 3:
                raise FileError(f"{path}: expected a 3-D volume, got {volume.ndim} dimensions")
            sidecar = _sidecar(path)
            if not sidecar.is_file():
                raise FileError(f"{path}: an .npy volume needs its grid in {sidecar.name} beside it (as save_volume "
                                'writes it: {"grid": {"shape": [...], "spacing": [...], "origin": [...]}}, mm); without '
                                "it the voxels' size and place are unknown")
            grid = Grid.from_dict(json.loads(sidecar.read_text())["grid"])
            if volume.shape != grid.shape:
                raise FileError(f"{path}: its voxels are {volume.shape} but its grid (the .json beside it) is {grid.shape}")
        else:
            import SimpleITK as sitk

            _check_itk_path(path)
            with _for_itk(path, kind) as itk_path:
                image = sitk.ImageFileReader()  # the header first: geometry, dimension, voxel type
                image.SetFileName(str(itk_path))
                image.SetImageIO(_ITK_IO[kind])  # by our suffix, case aside: ITK's own pick missed NAME.MHA
                image.ReadImageInformation()
                if image.GetDimension() != 3 or image.GetNumberOfComponents() != 1:
                    raise FileError(f"{path}: expected a 3-D volume of scalars, got a {image.GetDimension()}-D image with "
                                    f"{image.GetNumberOfComponents()} component(s) per voxel")
                volume = _nifti_floats(itk_path, image) if kind in (".nii", ".nii.gz") else None
                if volume is None:
                    volume = sitk.GetArrayFromImage(image.Execute()).transpose(2, 1, 0)
            grid = _grid_of(image, volume.shape)
    except (GridError, FileError):
        raise
    except Exception as e:  # SimpleITK, numpy and json each raise their own kinds on a damaged file
        raise FileError(f"{path}: cannot be read as a volume ({_first_line(e)})") from None
    return volume, grid


#: At most this many folders below a folder holding no DICOM series are looked into for one (a study's or a CD's
#: series folders, up to SERIES_DEPTH levels down).
MAX_SERIES_FOLDERS, SERIES_DEPTH = 64, 4
#: A DICOM series' slices may lie this far (a fraction of its smallest voxel side, and at least SLICE_TOLERANCE_MM)
#: from a regular grid: positions written with two decimals stay within it, a missing slice or a gantry tilt does not.
SLICE_TOLERANCE, SLICE_TOLERANCE_MM = 0.1, 0.015


@contextlib.contextmanager
def _itk_quiet():
    """ITK's own warnings (printed to stderr, "Non uniform sampling", "No Series were found") off: ours say it."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def _itk_can_open(path: Path) -> bool:
    """Whether ITK can be given ``path``: its name UTF-8 text (ITK aborts the process on any other)."""
    try:
        os.fsencode(path).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _check_itk_path(path: Path) -> None:
    if not _itk_can_open(path):
        raise FileError(f"{os.fsdecode(os.fsencode(path))!r}: its name is not UTF-8 text, which ITK cannot open; rename it")


def _dicom_series(folder: Path) -> tuple:
    """The IDs of the DICOM series whose files lie in ``folder`` (none: an empty tuple)."""
    import SimpleITK as sitk

    if not _itk_can_open(folder):
        return ()
    with _itk_quiet():
        try:
            return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
        except RuntimeError:
            return ()


def _series_folders(folder: Path) -> list[str]:
    """The folders below ``folder`` (a study's, a CD's) that hold a DICOM series, relative to it (a few)."""
    found, seen = [], 0
    for root, dirs, _ in os.walk(folder):  # (folders it cannot read, or ITK open, are passed by)
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(dirs) if depth < SERIES_DEPTH else []
        if depth and _dicom_series(Path(root)):
            found.append(str(Path(root).relative_to(folder)))
        seen += 1
        if seen > MAX_SERIES_FOLDERS or len(found) >= 6:
            break
    return found


def _series_label(folder: Path, series: str) -> str:
    """One series for a message: its description (or UID) and its number of files."""
    import SimpleITK as sitk

    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series)
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
        name = reader.GetMetaData("0008|103e").strip() if reader.HasMetaDataKey("0008|103e") else ""
    except RuntimeError:
        name = ""
    return f"{name or 'UID ' + series} ({len(files)} files)"


def _load_dicom_series(folder: Path) -> tuple[np.ndarray, Grid]:
    """The volume of the one DICOM series in ``folder`` (GDCM, through SimpleITK: slices ordered by position, rescale
    slope and intercept applied; or one multi-frame file), refused where its slices do not lie on a regular grid (a
    missing or duplicated slice, a localizer among them, a gantry tilt): a grid could not say where its voxels lie."""
    import SimpleITK as sitk

    _check_itk_path(folder)
    if not os.access(folder, os.R_OK | os.X_OK):
        raise FileError(f"{folder}: the folder cannot be read (permissions)")
    series = _dicom_series(folder)
    if not series:
        inside = _series_folders(folder)
        raise FileError(f"{folder}: a folder holding no DICOM series" + (
            f"; these folders in it hold some: {', '.join(inside)}; give one of them" if inside else
            f"; a volume is a file ({', '.join(VOLUME_SUFFIXES)}) or the folder of one DICOM series"))
    if len(series) > 1:
        raise FileError(f"{folder}: holds {len(series)} DICOM series ("
                        + "; ".join(_series_label(folder, uid) for uid in series[:4]) + ("; ..." if len(series) > 4 else "")
                        + "); give the folder of one (move each series' files into a folder of its own)")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    for f in files:
        _check_itk_path(Path(f))
    unreadable = [f for f in files if not os.access(f, os.R_OK)]
    if unreadable:
        raise FileError(f"{folder}: {len(unreadable)} of its DICOM files cannot be read (permissions), such as "
                        f"{Path(unreadable[0]).name}")
    try:
        with _itk_quiet():
            if len(files) == 1:  # one file: a multi-frame volume, or a lone slice
                image, positions, orientations, decimals = sitk.ReadImage(files[0]), None, None, None
            else:
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(files)
                reader.MetaDataDictionaryArrayUpdateOn()
                image = reader.Execute()
                tags = [[[float(v) for v in reader.GetMetaData(i, tag).split("\\")] for i in range(len(files))]
                        for tag in ("0020|0032", "0020|0037")]
                positions, orientations = map(np.array, tags)
                rescales = {tuple(float(reader.GetMetaData(i, tag)) if reader.HasMetaDataKey(i, tag) else None
                                  for tag in ("0028|1052", "0028|1053")) for i in range(len(files))}
                if len(rescales) > 1:  # the voxel type is the first slice's: the others' rescaled values in floats
                    reader.SetOutputPixelType(sitk.sitkFloat32)
                    image = reader.Execute()
                decimals = max(len(v.split(".")[1]) if "." in v else 0
                               for i in range(len(files)) for v in reader.GetMetaData(i, "0020|0032").split("\\"))
    except (RuntimeError, ValueError, TypeError) as e:  # (TypeError: a file name SimpleITK cannot take)
        raise FileError(f"{folder}: its DICOM series cannot be read as a volume ({_first_line(e)})") from None
    if image.GetDimension() != 3 or image.GetDepth() < 2:
        raise FileError(f"{folder}: its DICOM series has one slice; a volume needs at least two")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise FileError(f"{folder}: expected a DICOM series of scalar slices, got {image.GetNumberOfComponentsPerPixel()} "
                        "components per voxel")
    volume = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    grid = _grid_of(image, volume.shape)
    if positions is not None:  # the step of the line through all slices (ITK's: the first two slices')
        step = _check_slices(folder, positions, orientations, np.array(grid.direction)[:, 2], min(grid.spacing), decimals)
        grid = _grid_of(image, volume.shape, z_spacing=step)
    return volume, grid


def _grid_of(image, shape, z_spacing: float | None = None) -> Grid:
    """The grid of an ITK image (its spacing along k replaced by ``z_spacing`` if given). Files store float32
    geometry: 1e-6 mm keeps every digit they hold and none of the noise."""
    spacing = np.array(image.GetSpacing())
    if z_spacing is not None:
        spacing[2] = z_spacing
    return Grid(shape, np.round(spacing, 6), np.round(image.GetOrigin(), 6), np.array(image.GetDirection()).reshape(3, 3))


def _check_slices(folder: Path, positions, orientations, normal, voxel: float, decimals: int = 6) -> float:
    """Refuse slices (positions and orientations, in the reader's order) that do not lie on one regular grid within
    SLICE_TOLERANCE of a voxel (at least SLICE_TOLERANCE_MM, and at least what positions written with ``decimals``
    decimals can be off): one orientation, no two at one place, no step half again the median (a missing slice),
    evenly spaced along their normal. Returns the step, from the least-squares line through the positions."""
    if np.abs(orientations - orientations[0]).max() > 1e-3:
        raise FileError(f"{folder}: its DICOM slices lie in {len(np.unique(orientations.round(3), axis=0))} orientations "
                        "(a localizer among them?); give a folder of one series' parallel slices")
    along = positions @ normal
    if np.diff(np.sort(along)).min() < 1e-3:
        raise FileError(f"{folder}: two of its DICOM slices lie at the same position (a file copied twice?)")
    steps = np.diff(along)
    if not (np.all(steps > 0) or np.all(steps < 0)):  # the reader's order is the volume's
        raise FileError(f"{folder}: its DICOM slices could not be ordered by position")
    k = np.arange(len(along)) - (len(along) - 1) / 2
    step = (k @ positions) / (k @ k)  # (3,) the least-squares line's step, slice to slice
    off = positions - positions.mean(0) - np.outer(k, step)
    # each coordinate within half a unit of its last decimal: a position within sqrt(3) / 2 units, twice that off a line
    tolerance = max(SLICE_TOLERANCE * voxel, SLICE_TOLERANCE_MM, 3**0.5 * 10.0 ** -decimals)
    gap = np.abs(steps).max() > 1.5 * np.median(np.abs(steps))
    if gap or np.linalg.norm(off, axis=1).max() > tolerance:
        raise FileError(f"{folder}: its DICOM slices are not evenly spaced (steps of {np.abs(steps).min():.4g} to "
                        f"{np.abs(steps).max():.4g} mm: " + ("a missing slice?" if gap else "a missing slice, or "
                                                               "positions written too coarsely?")
                        + "); resample the series to a regular grid first")
    drift = np.linalg.norm(step - (step @ normal) * normal) * (len(along) - 1)
    if drift > tolerance:
        raise FileError(f"{folder}: its DICOM slices are shifted sideways, by {drift:.3g} mm from the first to the last "
                        "(a gantry tilt); resample the series to a regular grid first")
    return abs(float(step @ normal))


#: The ITK reader of each volume suffix but .npy.
_ITK_IO = {".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO", ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO",
           ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}


@contextlib.contextmanager
def _for_itk(path: Path, kind: str):
    """The path ITK should open for ``path``: ITK's NIfTI library, given NAME.nii.gz, reads NAME.nii instead when
    both are in the folder (measured: SimpleITK 2.5, ITK 5.4), and refuses a suffix in mixed case (NAME.Nii.Gz), so
    such a file is read through a link of its own in an empty folder."""
    nifti = kind in (".nii", ".nii.gz")
    mixed = path.name[-len(kind):] not in (kind, kind.upper())
    if not nifti or not (mixed or kind == ".nii.gz" and path.with_name(path.name[: -len(".gz")]).exists()):
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / f"volume{kind}"
        link.symlink_to(path.resolve())
        yield link


def _nifti_floats(path: Path, header) -> np.ndarray | None:
    """The voxels of a float NIfTI file as stored, read by nibabel (None for other voxel types, which ITK reads):
    ITK's NIfTI reader (before ITK 6) reads NaN and infinite voxels as 0, silently, and 0 is a valid value. ITK's
    header gives the geometry and the voxel type; both index the file's own voxel order [i, j, k]."""
    import SimpleITK as sitk
    import nibabel

    kinds = {sitk.sitkFloat32: np.float32, sitk.sitkFloat64: np.float64}
    if header.GetPixelID() not in kinds:
        return None
    data = np.asanyarray(nibabel.load(str(path)).dataobj)
    if data.shape != tuple(header.GetSize()):
        return None
    return data.astype(kinds[header.GetPixelID()], copy=False)


def _first_line(error: Exception) -> str:
    """The gist of a library's error: ITK's messages span many lines of source locations."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "description:" in line.lower():
            return line.split(":", 1)[1].strip()
    return lines[-1] if lines else type(error).__name__


def load_mesh(path):
    """Read a triangle mesh (STL, PLY, OBJ, OFF, GLB) with trimesh; vertices at the same position are joined,
    whatever texture coordinates or normals they carry (seams split a textured surface into patches that
    share positions only)."""
    import trimesh

    path = _path(path)
    _suffix(path, MESH_SUFFIXES)
    if not path.is_file():
        raise FileError(f"{path}: no such file")
    if _matching_suffix(path, (".stl",)):
        _check_binary_stl(path)
    try:
        mesh = trimesh.load_mesh(path, process=False, force="mesh")
    except Exception as e:  # trimesh raises many kinds for a malformed file
        raise FileError(f"{path}: cannot be read as a mesh ({type(e).__name__}: {e})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise MeshError(f"{path}: the file holds no triangles")
    if not np.all(np.isfinite(mesh.vertices)):  # before the merge, which rounds them to integers
        raise MeshError(f"{path}: the mesh has NaN or infinite vertex coordinates")
    mesh.merge_vertices(merge_tex=True, merge_norm=True)  # STL stores a triangle soup; OBJ splits at UV seams
    return mesh


def _check_binary_stl(path: Path) -> None:
    """Refuse a binary STL cut short (or padded): its header's triangle count says its size, 84 + 50 per triangle
    bytes. (trimesh reads such a file as ASCII STL instead, and fails with a message about text encodings.)"""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(1024)
    if size < 84 or head.lstrip().lower().startswith(b"solid"):  # too short to be binary, or ASCII STL (whose
        return  # trimesh reads; a binary one whose header begins "solid" and holds what it says reads either way
    count = int(np.frombuffer(head[80:84], "<u4")[0])
    if size != 84 + 50 * count:
        raise FileError(f"{path}: a binary STL of {size} bytes whose header announces {count} triangles "
                        f"({84 + 50 * count} bytes): the file is cut short or damaged")


def check_mesh(mesh) -> None:
    """Refuse what is not a triangle mesh: not a trimesh.Trimesh, empty, non-finite vertices, faces that index
    missing vertices (MeshError)."""
    import trimesh

    if not isinstance(mesh, trimesh.Trimesh):
        raise MeshError(f"expected a trimesh.Trimesh triangle mesh, got {type(mesh).__name__}")
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise MeshError("the mesh is empty: it has no triangles")
    if not np.all(np.isfinite(mesh.vertices)):
        raise MeshError("the mesh has NaN or infinite vertex coordinates")
    if mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices):
        raise MeshError("the mesh has faces that index missing vertices")


def save_mesh(path, mesh) -> Path:
    """Write ``mesh`` (world mm, LPS) by its suffix; a binary STL says its frame in its header (SPACE=LPS, as 3D
    Slicer writes and reads it)."""
    path = _path(path)
    kind = _suffix(path, MESH_SUFFIXES)
    check_mesh(mesh)
    with atomic_path(path) as tmp:
        mesh.export(tmp)
        if kind == ".stl":
            with open(tmp, "r+b") as f:
                f.write(b"SPACE=LPS".ljust(80, b" "))
    return path


def write_json(path, data: dict) -> Path:
    path = _path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return path
