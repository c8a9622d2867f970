"""``python -m sdmnn.train ...`` (e.g. under ``torchrun --nproc_per_node=2``): the ``sdmnn train`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "train", *sys.argv[1:]]
    main()
