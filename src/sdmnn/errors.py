"""Exceptions of the package: each carries one sentence a person can act on."""


class SdmnnError(ValueError):
    """Base class: a bad input, reported as one clear sentence (the CLI prints it and exits 2)."""


class ParameterError(SdmnnError):
    """Shape parameters that are missing, unknown, NaN, of the wrong count or out of range."""


class GridError(SdmnnError):
    """A grid with a bad shape or spacing, or one larger than the memory budget."""


class MeshError(SdmnnError):
    """A mesh that is empty or has non-finite vertices, or a mesher that fails."""


class FamilyError(SdmnnError):
    """A shape family that cannot be defined, found, loaded or used: bad ranges, a family file that does not
    load or lacks the name asked for, a mesher whose shapes are open, inverted, self-intersecting or off the grid."""


class FileError(SdmnnError):
    """A file that cannot be read, written, or is not in a format that is accepted."""


class ModelError(SdmnnError):
    """A checkpoint that does not match its weights, its family or its grid."""


class DatasetError(SdmnnError):
    """A dataset store that is corrupted, truncated, or does not match what was asked for."""


class FitError(SdmnnError):
    """An observed image or a fit setting that cannot be used."""


class ImageError(FitError):
    """An observed image that cannot be fitted as the kind it is said to be: not a 3-D volume of finite numbers, or
    without a boundary to fit (an empty label, a constant image, an SDM with no zero crossing)."""


class MeshWarning(UserWarning):
    """A mesh the SDM takes another way than a clean one, in one sentence saying why and how: open or
    non-manifold (the winding-number sign), inconsistently oriented or inverted (oriented first), bodies that
    cross or nest (the winding-number sign where they do), a region the scan cannot sweep (the BVH method)."""


class FamilyWarning(UserWarning):
    """A family's shape its own grid does not hold (a grid given at definition that is too small for part of the
    box): the map holds part of the shape."""


class FitWarning(UserWarning):
    """A fit that explains the observed image poorly (wrong family, label, pose or image)."""
