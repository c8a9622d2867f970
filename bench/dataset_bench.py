"""Dataset generation throughput: cochlea samples per second on its family grid, 1 and 2 workers."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from sdmnn.dataset import make_dataset

from common import table


def run(quick: bool = False) -> str:
    n = 16 if quick else 64
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            path = Path(tmp) / f"w{workers}.zarr"
            s = make_dataset(path, "cochlea", f"sobol:{n}", seed=0, workers=workers, progress=False)
            rows.append([workers, n, f"{s.seconds:.1f}", f"{s.rate:.2f}"])
            shutil.rmtree(path)
    return "\n".join([
        "## Dataset generation (issue: datasets)",
        "",
        f"`sdmnn dataset make cochlea --design sobol:{n}` on the family grid (64x56x32 voxels of 0.2 mm, 25,600-triangle",
        "meshes), exact SDMs written to Zarr. One worker uses numba's two threads; each of two workers uses one thread.",
        "Times include starting the worker processes.",
        "",
        table(["workers", "samples", "seconds", "samples/s"], rows),
    ])
