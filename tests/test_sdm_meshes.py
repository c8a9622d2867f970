"""The exact SDM on the shared corpus of public meshes (../shared/meshes, INDEX.tsv says where each comes
from and what is wrong with it): no exception, no hang, distances as libigl's, and on every closed mesh the
sign of the exact generalised winding number."""
import csv
import time
import warnings
from pathlib import Path

import igl
import numpy as np
import pytest

from sdmnn import Grid, MeshWarning, exact_sdm, load_mesh

MESHES = Path(__file__).resolve().parents[2] / "shared" / "meshes"
INDEX = MESHES / "INDEX.tsv"
ROWS = list(csv.DictReader((line for line in open(INDEX) if not line.startswith("#")), delimiter="\t")) if INDEX.exists() else []
#: Seconds one SDM may take at 32 voxels on the mesh's longest side.
BOUND = 10.0


def corpus_grid(mesh, n: int) -> Grid:
    """Cubic voxels, ``n`` of them along the longest side of the mesh's box plus 10 %."""
    lo, hi = mesh.bounds
    h = float(np.ptp(mesh.bounds, axis=0).max()) * 1.1 / (n - 1)
    shape = tuple(int(k) for k in np.ceil((hi - lo) * 1.1 / h) + 1)
    return Grid(shape, (h, h, h), tuple((lo + hi) / 2 - (np.array(shape) - 1) * h / 2))


@pytest.mark.skipif(not ROWS, reason=f"the shared mesh corpus is not at {MESHES}")
@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_exact_sdm_on_public_meshes_is_prompt_exact_and_signed_by_the_winding_number(row):
    mesh = load_mesh(MESHES / row["name"])
    grid = corpus_grid(mesh, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeshWarning)
        exact_sdm(mesh, Grid((4, 4, 4), grid.spacing, grid.origin))  # numba compiles outside the time bound
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MeshWarning)
        t = time.perf_counter()
        sdm = exact_sdm(mesh, grid).ravel()
        seconds = time.perf_counter() - t
    said = " | ".join(str(w.message) for w in caught if issubclass(w.category, MeshWarning))
    assert seconds < BOUND
    P, V, F = grid.points(), np.asarray(mesh.vertices, float), np.asarray(mesh.faces, np.int64)
    _, _, C, _ = igl.signed_distance(P, V, F, sign_type=igl.SIGNED_DISTANCE_TYPE_UNSIGNED)
    assert np.abs(np.abs(sdm) - np.linalg.norm(P - C, axis=1)).max() <= 1e-5
    kind = row["kind"]
    if kind.startswith("closed"):
        inside = np.abs(igl.winding_number(V, F, P)) >= 0.5
        off = np.abs(sdm) > 1e-6
        assert np.sum((sdm < 0)[off] != inside[off]) == 0, said
    if kind == "closed-multibody":  # bodies that cross: the winding-number sign, said so
        assert "intersect" in said or "nested" in said or "inverted" in said
    elif kind.startswith("closed"):  # fuze.obj's UV seams are joined on loading: watertight, no warning
        assert said == ""
    else:
        assert "not watertight" in said or "oriented" in said or "degenerate" in said
