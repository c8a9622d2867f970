"""Where families are found: the built-in ones, those defined in this process, family files
(``path/to/file.py:NAME``), modules (``package.module:NAME``) and installed packages that register
families under the entry-point group ``sdmnn.families``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from ..errors import FamilyError
from .family import Family

#: The entry-point group under which installed packages register families (name = "module:ATTRIBUTE").
ENTRY_POINTS = "sdmnn.families"
BUILT_IN = ("cochlea", "torus")
_BUILT_IN_MODULES = tuple(f"{__package__}.{name}" for name in BUILT_IN)

_REGISTRY: dict[str, Family] = {}
#: Families found through a spec (file, module, entry point), by spec.
_LOADED: dict[str, Family] = {}
#: Family files executed in this process, by resolved path: each runs once, whatever NAME is asked of it.
_FILES: dict[Path, object] = {}


def register(family: Family, built_in: bool = False) -> None:
    """Make ``family`` findable by its name in this process (``define_family`` does this). A family defined again
    under its name (a notebook cell run twice) replaces the earlier one; the built-in names are refused, in any case."""
    if not built_in:
        _built_ins()
        if family.name.lower() in BUILT_IN:  # in any case: a shipped model's folder is named by its family
            raise FamilyError(f"{family.name!r} is the name of a built-in family; give yours another name")
    _REGISTRY[family.name] = family


def get_family(name) -> Family:
    """A family by name (``"cochlea"``, ``"torus"``, a family defined in this process or registered by an
    installed package), by ``"path/to/file.py:NAME"`` or by ``"package.module:NAME"``; a Family is returned
    as it is."""
    _built_ins()
    if isinstance(name, Family):
        return name
    if not isinstance(name, str) or not name:
        raise FamilyError(f"a family is a name or FILE.py:NAME, got {name!r}")
    if name in _LOADED:
        return _LOADED[name]
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return _load(name)
    plugin = _entry_points().get(name)
    if plugin is not None:
        return _from_entry_point(plugin)
    known = ", ".join(sorted(set(_REGISTRY) | set(_entry_points())))
    raise FamilyError(f"unknown family {name!r}; the families are {known}, or give FILE.py:NAME or package.module:NAME")


def stored_family(meta: dict, where) -> Family:
    """The family a dataset or a model was made with, from its ``family`` and ``family_source`` entries."""
    name, source = meta.get("family"), meta.get("family_source")
    if not isinstance(name, str) or not (source is None or isinstance(source, str)):
        raise FamilyError(f"{where}: its description names no family (a 'family' entry)")
    try:
        family = get_family(source or name)
    except FamilyError as e:
        raise FamilyError(f"{where} was made with the {name} family" + (f" from {source}" if source else "") + f", which cannot be found now: {e}") from None
    if family.name != name:
        raise FamilyError(f"{where} was made with the {name} family, but {source} now defines {family.name}")
    return family


def require_portable(family: Family) -> None:
    """Refuse (one sentence) to hand ``family`` to worker processes when they could not find it: a family
    defined in the running code has no file, module or plug-in that another process can load."""
    if family.source is None and family.name not in BUILT_IN:
        raise FamilyError(f"the {family.name} family was defined in this process, so worker processes cannot find it: "
                          "use one worker, or define it in a file and give FILE.py:NAME")


def families(problems: list | None = None) -> list[Family]:
    """The built-in families, those defined in this process and those of installed packages. An installed family
    that does not load raises FamilyError, unless ``problems`` is a list: then the sentence saying why goes there (as
    does one for a family whose name another already has), and the others are listed."""
    _built_ins()
    found = dict(_REGISTRY)
    for plugin in _entry_points().values():
        try:
            family = _from_entry_point(plugin)
        except FamilyError as e:
            if problems is None:
                raise
            problems.append(str(e))
            continue
        first = found.setdefault(family.name, family)
        if first.source != family.source and problems is not None:
            problems.append(f"the family {family.name!r} registered by an installed package ({plugin.value}) is not "
                            f"listed: {first.ref} has that name")
    return list(found.values())


def _built_ins():
    for module in _BUILT_IN_MODULES:  # each registers its family when first imported
        importlib.import_module(module)


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}


def _from_entry_point(plugin) -> Family:
    """An installed package's family, remembered by its ``module:ATTRIBUTE`` so that other processes find it."""
    try:
        return _load(plugin.value)
    except FamilyError as e:
        raise FamilyError(f"the family {plugin.name!r} registered by an installed package ({plugin.value}) does not load: {e}") from None


def _load(spec: str) -> Family:
    """A family from ``path/file.py:NAME`` or ``package.module:NAME``; a file runs once per process."""
    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise FamilyError(f"a family spec is FILE.py:NAME or package.module:NAME, got {spec!r}")
    is_file = where.endswith(".py") or "/" in where or "\\" in where
    key = f"{Path(where).resolve()}:{attr}" if is_file else spec
    if key in _LOADED:
        return _LOADED[key]
    module = _exec_file(Path(where)) if is_file else _import(where)
    if not hasattr(module, attr):
        found = [k for k, v in vars(module).items() if isinstance(v, Family)]
        raise FamilyError(f"{where} has no {attr}" + (f"; the families in it are {', '.join(found)}" if found else
                                                      "; define one there with sdmnn.define_family"))
    value = getattr(module, attr)
    if not isinstance(value, Family):
        raise FamilyError(f"{where}: {attr} is a {type(value).__name__}, not a family made with sdmnn.define_family")
    family = dataclasses.replace(value, source=key)
    _REGISTRY[family.name] = family
    _LOADED[key] = family
    return family


def _exec_file(path: Path):
    resolved = path.resolve()
    if resolved in _FILES:
        return _FILES[resolved]
    if not path.is_file():
        raise FamilyError(f"family file {path} does not exist")
    # a name that is the same in every process, so that what the file defines pickles by reference
    name = "sdmnn_family_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[name]
        if isinstance(e, SyntaxError):
            raise FamilyError(f"{path}: syntax error at line {e.lineno}: {e.msg}") from None
        if isinstance(e, FamilyError):
            raise FamilyError(f"{path}: {e}") from None
        if isinstance(e, Exception):
            raise FamilyError(f"{path} raised {type(e).__name__} while loading: {e}") from None
        raise
    _FILES[resolved] = module
    return module


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except FamilyError as e:
        raise FamilyError(f"{module_name}: {e}") from None
    except Exception as e:
        file = Path(*module_name.split(".")).with_suffix(".py")
        hint = (f" (a family file is named by its path: {file}:NAME)"
                if isinstance(e, ModuleNotFoundError) and e.name == module_name.split(".")[0] and file.is_file() else "")
        raise FamilyError(f"cannot import {module_name} for its family: {type(e).__name__}: {e}{hint}") from None
