"""sdmnn: fast signed distance maps (SDMs) of parametric 3-D shapes.

Millimetres everywhere, negative inside, arrays indexed [i, j, k] = [x, y, z]; see ``Grid``.
"""
__version__ = "0.1.0"

from .errors import FileError, GridError, MeshError, ModelError, ParameterError, SdmnnError
from .grid import Grid
from .io import load_mesh, load_volume, save_mesh, save_volume
from .sdm import MeshWarning, exact_sdm, unsigned_distance, winding_number
from .shapes import Family, families, get_family
from .dataset import OnlineSDMs, make_dataset, open_dataset
from .nn import load_model
from .fit import FitResult, fit

__all__ = [
    "Grid", "Family", "get_family", "families", "exact_sdm", "unsigned_distance", "winding_number",
    "open_dataset", "make_dataset", "OnlineSDMs", "load_model", "fit", "FitResult",
    "save_volume", "load_volume", "load_mesh", "save_mesh", "MeshWarning",
    "SdmnnError", "ParameterError", "GridError", "MeshError", "FileError", "ModelError",
]
