"""An interactive viewer in the browser (``sdmnn view``): one slider per shape parameter (and pose sliders over a
fit), three orthogonal slices of the SDM with its zero contour, the surface in 3-D (three.js, vendored), the
network or the exact SDM and their difference, an image and a fit over it in the image's own world coordinates,
and downloads of the current mesh (STL) and SDM (NIfTI).

``load_scene(...)`` reads what to show, ``make_app(scene)`` is the FastAPI app, ``serve(scene)`` runs it on
127.0.0.1 until interrupted, ``running(scene)`` while a ``with`` block runs.
"""
from .app import make_app, running, serve
from .scene import FitSummary, Scene, State, load_scene

__all__ = ["FitSummary", "Scene", "State", "load_scene", "make_app", "running", "serve"]
