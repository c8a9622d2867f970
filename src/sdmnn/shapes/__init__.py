"""Parametric shape families: defined with ``define_family`` (the built-in ones too), found by
``get_family`` (a name, ``FILE.py:NAME``, ``package.module:NAME`` or an installed plug-in), and checked
by ``check_family``."""
from .check import FamilyCheck, check_family, require_valid
from .family import Family, auto_grid, define_family, tube_mesh
from .params import Parameter, ParameterSpace
from .registry import families, get_family

__all__ = ["Family", "Parameter", "ParameterSpace", "define_family", "auto_grid", "get_family", "families",
           "check_family", "require_valid", "FamilyCheck", "tube_mesh"]
