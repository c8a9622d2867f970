"""The SDMNN network (parameters -> SDM volume): model, training, checkpoints."""
from pathlib import Path

MODELS = Path(__file__).resolve().parent.parent / "models"


def shipped_model_path(family: str = "cochlea", arch: str = "sdmnn") -> Path | None:
    """The folder of the model shipped in the package for ``family``, or None."""
    path = MODELS / f"{family}-{arch}"
    return path if (path / "model.json").exists() else None


def load_model(path=None, family: str = "cochlea", arch: str = "sdmnn"):
    """A trained forward model (see ``sdmnn.nn.train.load_model``)."""
    from .train import load_model as _load

    return _load(path, family, arch)
