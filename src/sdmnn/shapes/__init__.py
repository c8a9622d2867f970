"""Parametric shape families behind a small registry."""
from ..errors import SdmnnError
from .cochlea import COCHLEA
from .family import Family, tube_mesh
from .params import Parameter, ParameterSpace
from .torus import TORUS

_REGISTRY: dict[str, Family] = {f.name: f for f in (COCHLEA, TORUS)}


def get_family(name: str) -> Family:
    """The registered family called ``name`` (``"cochlea"``, ``"torus"``)."""
    if isinstance(name, Family):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SdmnnError(f"unknown family {name!r}; the families are {', '.join(sorted(_REGISTRY))}") from None


def families() -> list[Family]:
    return list(_REGISTRY.values())


__all__ = ["Family", "Parameter", "ParameterSpace", "get_family", "families", "tube_mesh"]
