"""The viewer's web app (FastAPI): the page and its assets from ``static/``, and a small JSON API over a
``Scene``. Arrays travel as base64 of little-endian float32 / uint32, 2-D slices with the first remaining voxel
axis first (index = a * n_b + b for the plane's axes a < b)."""
from __future__ import annotations

import base64
import contextlib
import errno
import json
import socket
import tempfile
import threading
import time
import webbrowser
from pathlib import Path

import numpy as np

from ..errors import SdmnnError
from .scene import Scene

STATIC = Path(__file__).parent / "static"


def _b64(array: np.ndarray, dtype) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def make_app(scene: Scene):
    """The FastAPI app serving ``scene``: ``GET /`` the page, ``GET /api/info``, ``POST /api/slices``,
    ``POST /api/surface``, ``GET /api/download/mesh.stl`` and ``GET /api/download/sdm.nii.gz``."""
    from fastapi import Body, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    app = FastAPI(title=f"sdmnn view: {scene.family.name}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(SdmnnError)
    async def bad_input(request: Request, e: SdmnnError):
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, e: RequestValidationError):  # no JSON object, or no ?state=
        return JSONResponse({"error": "the request is a JSON object {\"params\": {name: value, ...}, \"pose\": [...], "
                                      "\"forward\": ..., \"positions\": [i, j, k]} (downloads: as ?state=...)"}, status_code=400)

    def state_of(body: dict):
        if not isinstance(body, dict) or not isinstance(body.get("params"), dict):
            raise SdmnnError("the request gives the parameters as {\"params\": {name: value, ...}, ...}")
        return scene.state(body["params"], body.get("pose"), body.get("forward", "sdmnn" if scene.net else "exact"))

    @app.get("/api/info")
    def info():
        return scene.describe()

    @app.post("/api/slices")
    def slices(body: dict = Body(...)):
        t0 = time.perf_counter()
        difference = body.get("difference", False)
        if not isinstance(difference, bool):
            raise SdmnnError(f"difference is true or false, got {difference!r}")
        planes = scene.slices(state_of(body), body.get("positions"), difference)
        ms = 1e3 * (time.perf_counter() - t0)
        out = []
        for p in planes:
            item = {"axis": p["axis"], "index": p["index"], "shape": list(p["sdm"].shape), "sdm": _b64(p["sdm"], "f4")}
            for key in ("difference", "image"):
                if key in p:
                    item[key] = _b64(p[key], "f4")
            out.append(item)
        return JSONResponse({"ms": ms, "planes": out}, headers={"Server-Timing": f"compute;dur={ms:.1f}"})

    @app.post("/api/surface")
    def surface(body: dict = Body(...)):
        t0 = time.perf_counter()
        mesh = scene.surface(state_of(body))
        ms = 1e3 * (time.perf_counter() - t0)
        return {"ms": ms, "vertices": _b64(mesh.vertices, "f4"), "faces": _b64(mesh.faces, "u4")}

    def state_from_query(state: str):
        try:
            return state_of(json.loads(state))
        except json.JSONDecodeError:
            raise SdmnnError("the state is a JSON object {\"params\": {...}, \"pose\": [...], \"forward\": ...}") from None

    @app.get("/api/download/mesh.stl")
    def download_mesh(state: str):
        mesh = scene.surface(state_from_query(state))
        name = f"{scene.family.name}.stl"
        return Response(mesh.export(file_type="stl"), media_type="model/stl",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/api/download/sdm.nii.gz")
    def download_sdm(state: str):
        from ..io import save_volume

        volume = scene.volume(state_from_query(state))
        with tempfile.TemporaryDirectory() as tmp:
            path = save_volume(Path(tmp) / "sdm.nii.gz", volume, scene.grid)
            data = path.read_bytes()
        name = f"{scene.family.name}_sdm.nii.gz"
        return Response(data, media_type="application/gzip", headers={"Content-Disposition": f'attachment; filename="{name}"'})

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return app


def bind(host: str = "127.0.0.1", port: int = 8765) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one); a port in use is one sentence."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise SdmnnError(f"port {port} on {host} is in use; choose another with --port (0 picks a free one)") from None
        raise SdmnnError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    return sock


@contextlib.contextmanager
def running(scene: Scene, host: str = "127.0.0.1", port: int = 8765):
    """Serve ``scene`` from a background thread while the block runs; yields the page's URL."""
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(make_app(scene), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise SdmnnError(f"the viewer's server on {host}:{port} stopped while starting")
            time.sleep(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def serve(scene: Scene, host: str = "127.0.0.1", port: int = 8765, open_browser: bool = True, on_start=None) -> None:
    """Serve ``scene`` until interrupted (Ctrl+C); ``on_start(url)`` is called once the server listens, then the
    browser opens unless ``open_browser`` is False."""
    with running(scene, host, port) as url:
        if on_start is not None:
            on_start(url)
        if open_browser:
            webbrowser.open(url)
        while True:
            time.sleep(3600)
