"""The exact SDM on the shared corpus of public meshes (../shared/meshes): time, accuracy against libigl, signs
against the exact generalised winding number, and the way each mesh was taken."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

import sdmnn
from sdmnn import MeshWarning

from common import table, timeit
from sdm_bench import cube_grid

MESHES = Path(__file__).resolve().parents[2] / "shared" / "meshes"


def _way(said: list[str]) -> tuple[str, str]:
    """(distances, sign) in words from the MeshWarnings of one exact_sdm call."""
    bvh = [s for s in said if "using the BVH method" in s or "robust winding-number sign" in s]
    winding = [s for s in said if "winding-number sign" in s]
    changed = [s for s in said if "flipped" in s]
    distances = "bvh" if bvh else "scan"
    sign = "winding number: " + winding[0].split(";")[0] if winding else "pseudonormal"
    if changed:
        sign += f" ({changed[0]})"
    return distances, sign


def run(quick: bool = False) -> str:
    import igl

    index = MESHES / "INDEX.tsv"
    if not index.exists():
        return f"## Exact SDM on public meshes\n\nThe corpus is not at {MESHES}; nothing measured."
    rows = list(csv.DictReader((line for line in open(index) if not line.startswith("#")), delimiter="\t"))
    n = 32 if quick else 48
    out = []
    for row in rows:
        mesh = sdmnn.load_mesh(MESHES / row["name"])
        grid = cube_grid(mesh, n)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MeshWarning)
            seconds, sdm = timeit(lambda: sdmnn.exact_sdm(mesh, grid), repeat=1 if quick else 3)
        said = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, MeshWarning)))
        P, V, F = grid.points(), np.asarray(mesh.vertices, float), np.asarray(mesh.faces, np.int64)
        _, _, C, _ = igl.signed_distance(P, V, F, sign_type=igl.SIGNED_DISTANCE_TYPE_UNSIGNED)
        sdm = sdm.ravel()
        diff = np.abs(np.abs(sdm) - np.linalg.norm(P - C, axis=1)).max()
        inside = np.abs(igl.winding_number(V, F, P)) >= 0.5
        off = np.abs(sdm) > 1e-6
        wrong = int(np.sum((sdm < 0)[off] != inside[off]))
        distances, sign = _way(said)
        out.append([row["name"], row["kind"], f"{len(mesh.faces):,}", "x".join(map(str, grid.shape)), f"{seconds:.3f}",
                    f"{diff:.1e}", wrong, distances, sign])
    text = [
        "## Exact SDM on public meshes",
        "",
        "Every mesh of `../shared/meshes` (INDEX.tsv: where each comes from and what is wrong with it), loaded with",
        f"`sdmnn.load_mesh`, on a {n}^3 grid of cubic voxels over its bounding box plus 10 %. Seconds: the median of",
        f"{1 if quick else 3} runs of `exact_sdm` after a warm-up (2 threads). Max |difference|: against libigl's",
        "distance to its closest point (mm). Sign disagreements: voxels (|d| > 1e-6 mm) whose sign differs from the",
        "exact generalised winding number's (libigl's `winding_number`, inside where |w| >= 1/2), the truth on a closed",
        "mesh; on an open one it is a convention, which sdmnn follows with libigl's fast winding number. Distances:",
        "`scan` (characteristic scan conversion) or `bvh` (nearest triangles). Sign: the pseudonormal, or the winding",
        "number and why (the MeshWarning, shortened).",
        "",
        table(["mesh", "kind", "triangles", "grid", "seconds", "max abs diff vs libigl (mm)",
               "sign disagreements vs exact winding number", "distances", "sign"], out),
    ]
    return "\n".join(text)
