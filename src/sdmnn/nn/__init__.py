"""The networks (parameters -> SDM volume): ``model`` (SDMNN), ``deepsdf`` (the DeepSDF-style baseline),
``checkpoint`` (saving, loading, the shipped models), ``train``, ``prune`` (a wider SDMNN narrowed, to fine-tune),
``metrics`` and ``evaluate``.

``load_model`` and ``shipped_model_path`` are re-exported from ``checkpoint``, imported (with torch)
on first use.
"""

_FROM_CHECKPOINT = ("load_model", "shipped_model_path")


def __getattr__(name):
    if name in _FROM_CHECKPOINT:
        from . import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'sdmnn.nn' has no attribute {name!r}")


__all__ = list(_FROM_CHECKPOINT)
