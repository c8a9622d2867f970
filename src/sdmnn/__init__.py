"""sdmnn: fast signed distance maps (SDMs) of parametric 3-D shapes.

Millimetres everywhere, negative inside, arrays indexed [i, j, k] = [x, y, z]; see ``Grid``.
The public names below are imported on first use (as scikit-image does), so ``import sdmnn`` is cheap
and imports neither torch nor numba.
"""
__version__ = "0.1.0"

import importlib

# public name -> the module that defines it
_EXPORTS = {
    "Grid": "grid",
    "Family": "shapes", "get_family": "shapes", "families": "shapes", "define_family": "shapes",
    "check_family": "shapes",
    "exact_sdm": "sdm", "unsigned_distance": "sdm", "winding_number": "sdm",
    "open_dataset": "dataset", "make_dataset": "dataset", "OnlineSDMs": "stream",
    "load_model": "nn.checkpoint",
    "fit": "fitting", "FitResult": "fitting",
    "save_volume": "io", "load_volume": "io", "load_mesh": "io", "save_mesh": "io",
    "SdmnnError": "errors", "ParameterError": "errors", "GridError": "errors", "MeshError": "errors",
    "FileError": "errors", "FamilyError": "errors", "ModelError": "errors", "DatasetError": "errors", "FitError": "errors",
    "ImageError": "errors",
    "MeshWarning": "errors", "FamilyWarning": "errors", "FitWarning": "errors",
}
_SUBMODULES = {"bodies", "bvh", "cli", "dataset", "demo", "errors", "fitting", "grid", "io", "nn", "phantom", "runtime",
               "scan", "sdm", "shapes", "stream", "view", "viz"}


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sdmnn' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])


__all__ = list(_EXPORTS)
