"""A family of one's own: a curved artery segment with a fusiform aneurysm (docs/own_family.md walks through it).

Use it from the command line as ``examples/aneurysm.py:ANEURYSM`` (6 parameters) or ``examples/aneurysm.py:ARTERY``
(4 parameters: the same vessel with the aneurysm's place and length fixed), e.g.
``sdmnn families check examples/aneurysm.py:ANEURYSM``.

The centreline is a circular arc of length LENGTH mm in the xy-plane that turns by ``bend`` radians. The lumen's
radius tapers linearly from ``radius`` to ``radius * taper`` and widens by the factor 1 + ``bulge`` in a Gaussian
of half-width ``bulge_length / 2`` centred at ``bulge_at`` (a fraction of the length): a fusiform aneurysm.
The surface is a swept tube (``sdmnn.shapes.tube_mesh``) with flat end caps.
"""
import math

import numpy as np

import sdmnn
from sdmnn.shapes import tube_mesh

LENGTH = 12.0  # mm
#: Sections along the vessel and points around a section of the default mesh.
RESOLUTION = (120, 64)


def artery_mesh(params: dict, refine: int = 1):
    """The lumen's surface; ``refine`` multiplies the resolution (phantoms ask for a finer mesh)."""
    sections, points = RESOLUTION[0] * refine, RESOLUTION[1] * refine
    s = np.linspace(0.0, LENGTH, sections)
    kappa = params["bend"] / LENGTH  # curvature (1/mm); the arc stays in the xy-plane
    if abs(kappa) < 1e-9:
        centre = np.stack([s, np.zeros_like(s), np.zeros_like(s)], -1)
    else:
        centre = np.stack([np.sin(kappa * s) / kappa, (1 - np.cos(kappa * s)) / kappa, np.zeros_like(s)], -1)
    normal = np.stack([-np.sin(kappa * s), np.cos(kappa * s), np.zeros_like(s)], -1)
    binormal = np.array([0.0, 0.0, 1.0])  # tangent x normal: points run counter-clockwise about the tangent
    centre -= centre.mean(0)  # centred, so that the grid stays small
    bulge = params["bulge"] * np.exp(-(((s / LENGTH - params["bulge_at"]) * LENGTH) / (params["bulge_length"] / 2)) ** 2)
    radius = params["radius"] * (1 - (1 - params["taper"]) * s / LENGTH) * (1 + bulge)
    theta = np.linspace(0, 2 * math.pi, points, endpoint=False)
    rings = centre[:, None] + radius[:, None, None] * (np.cos(theta)[None, :, None] * normal[:, None] + np.sin(theta)[None, :, None] * binormal)
    return tube_mesh(rings, closed=False)


ANEURYSM = sdmnn.define_family(
    "aneurysm",
    ranges={"radius": (1.0, 1.6), "taper": (0.6, 1.0), "bend": (0.0, 1.5), "bulge": (0.0, 1.0),
            "bulge_at": (0.3, 0.7), "bulge_length": (2.0, 5.0)},
    mesh=artery_mesh,
    units={"radius": "mm", "taper": "", "bend": "rad", "bulge": "", "bulge_at": "", "bulge_length": "mm"},
    descriptions={"radius": "lumen radius at the start", "taper": "radius at the end / radius at the start",
                  "bend": "turn of the centreline over its 12 mm", "bulge": "widening at the aneurysm's centre (x radius)",
                  "bulge_at": "aneurysm's centre, as a fraction of the length", "bulge_length": "aneurysm's length (2 half-widths)"},
    spacing=0.25,
    description="curved artery segment with a fusiform aneurysm",
)


def _artery(params: dict, refine: int = 1):
    return artery_mesh({**params, "bulge_at": 0.5, "bulge_length": 4.0}, refine)


ARTERY = sdmnn.define_family(
    "artery",
    ranges={"radius": (1.0, 1.6), "taper": (0.6, 1.0), "bend": (0.0, 1.5), "bulge": (0.0, 1.0)},
    mesh=_artery,
    units={"radius": "mm", "taper": "", "bend": "rad", "bulge": ""},
    spacing=0.25,
    description="curved artery segment with a fusiform aneurysm at its middle, 4 mm long",
)
