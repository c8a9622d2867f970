"""The viewer (sdmnn.view): the server's answers against the library's own SDMs, the downloads, bad input on the
command line, and the page itself in a real browser (headless Chromium, driven by Playwright)."""
import base64
import io
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import trimesh

import sdmnn
from sdmnn.errors import SdmnnError
from sdmnn.fitting import FitResult
from sdmnn.phantom import make_phantom
from sdmnn.view import load_scene, make_app, running

SDMNN = [sys.executable, "-m", "sdmnn.cli"]
PHANTOM = {"a": 3.2, "alpha": 0.5, "b": 0.15, "phi": 0.1}


def client(scene):
    from starlette.testclient import TestClient

    return TestClient(make_app(scene))


def decoded(b64: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), "<f4").reshape(shape)


@pytest.fixture(scope="module")
def cochlea_scene():
    return load_scene("cochlea")


@pytest.fixture(scope="module")
def fit_folder(tmp_path_factory):
    """A phantom image at a known pose, and a fit folder written by FitResult.save with the truth as its MAP."""
    folder = tmp_path_factory.mktemp("fit")
    fam = sdmnn.get_family("cochlea")
    image, grid, truth = make_phantom(fam, PHANTOM, rotate=(20, -35, 50), translate=(0.6, -0.4, 0.2), spacing=(0.4,) * 3)
    sdmnn.save_volume(folder / "seg.nii.gz", image, grid)
    names = (*fam.names, "rx", "ry", "rz", "tx", "ty", "tz")
    samples = np.random.default_rng(0).normal([*PHANTOM.values(), *[0.0] * 6], 0.01, (64, len(names)))
    zeros = dict.fromkeys(names, 0.0)
    result = FitResult(family="cochlea", names=names, params=dict(PHANTOM), pose=np.array(truth["pose"]),
                       pose_centre=np.zeros(3), mean=zeros, std=zeros, samples=samples, seconds=1.0, evaluations={},
                       forward="exact", observed_kind="labels", noise={}, quality={"dice": 0.9}, grid=grid,
                       log_posterior=0.0)
    result.save(folder / "fit", target=str(folder / "seg.nii.gz"))
    return folder


def test_info_gives_one_slider_per_parameter_with_its_unit_and_range(cochlea_scene):
    info = client(cochlea_scene).get("/api/info").json()
    fam = sdmnn.get_family("cochlea")
    assert [p["name"] for p in info["parameters"]] == list(fam.names)
    for p, q in zip(info["parameters"], fam.space.parameters):
        assert (p["unit"], p["low"], p["high"], p["default"]) == (q.unit, q.low, q.high, q.default)
    assert info["network"] and info["pose"] == [] and info["values"] == fam.defaults
    assert all(0 <= c < n for c, n in zip(info["centre"], info["grid"]["shape"]))


def test_slices_are_the_networks_and_the_exact_sdm_on_the_family_grid(cochlea_scene):
    fam = sdmnn.get_family("cochlea")
    params = {**fam.defaults, "a": 4.1, "phi": -0.3}
    # one thread count for both: bfloat16 convolutions round differently on 1 and 2 threads (up to 0.003 mm)
    net, cochlea_scene.net.threads = sdmnn.load_model(threads=1), 1
    exact = sdmnn.exact_sdm(fam.mesh(params), fam.grid)
    network = net.predict(params)
    c = client(cochlea_scene)
    for forward, truth in (("sdmnn", network), ("exact", exact)):
        r = c.post("/api/slices", json={"params": params, "forward": forward, "positions": [10, 20, 5], "difference": True})
        assert r.status_code == 200, r.text
        for plane, index in zip(r.json()["planes"], (10, 20, 5)):
            expected = np.take(truth, index, axis=plane["axis"])
            np.testing.assert_allclose(decoded(plane["sdm"], plane["shape"]), expected, atol=1e-4)
            difference = np.take(network, index, axis=plane["axis"]) - np.take(exact, index, axis=plane["axis"])
            np.testing.assert_allclose(decoded(plane["difference"], plane["shape"]), difference, atol=1e-4)


def test_the_networks_surface_is_closed_outward_and_near_the_exact_one(cochlea_scene):
    state = cochlea_scene.state(sdmnn.get_family("cochlea").defaults, forward="sdmnn")
    surface = cochlea_scene.surface(state)
    exact = cochlea_scene.surface(cochlea_scene.state(cochlea_scene.initial(), forward="exact"))
    assert surface.volume > 0 and abs(surface.volume / exact.volume - 1) < 0.15


def test_bad_requests_are_one_sentence_and_status_400(cochlea_scene):
    c = client(cochlea_scene)
    r = c.post("/api/slices", json={"params": {**cochlea_scene.initial(), "a": 9.0}, "positions": [0, 0, 0]})
    assert r.status_code == 400 and r.json()["error"] == "a must lie in [2, 5] mm, got 9"
    r = c.post("/api/slices", json={"params": cochlea_scene.initial(), "positions": [0, 0, 99]})
    assert r.status_code == 400 and "outside the grid" in r.json()["error"]
    r = c.post("/api/surface", json={"params": cochlea_scene.initial(), "pose": [0.1, 0, 0, 0, 0, 0]})
    assert r.status_code == 400 and "needs a fit" in r.json()["error"]


def test_a_family_without_a_network_shows_the_exact_sdm_only():
    scene = load_scene("torus")
    c = client(scene)
    info = c.get("/api/info").json()
    assert not info["network"] and "no network for the torus family" in info["no_network"]
    r = c.post("/api/slices", json={"params": info["values"], "forward": "sdmnn", "positions": info["centre"]})
    assert r.status_code == 400 and r.json()["error"] == info["no_network"]
    r = c.post("/api/slices", json={"params": info["values"], "forward": "exact", "positions": info["centre"]})
    plane = r.json()["planes"][2]
    # without positions: through the centre; the pose /api/info gives for a scene without one ([]) is no step
    default = c.post("/api/slices", json={"params": info["values"], "forward": "exact", "pose": info["pose"]})
    assert info["pose"] == [] and default.status_code == 200, default.text
    assert [p["index"] for p in default.json()["planes"]] == info["centre"]
    truth = scene.family.analytic_sdf(info["values"], scene.grid)[:, :, info["centre"][2]]
    np.testing.assert_allclose(decoded(plane["sdm"], plane["shape"]), truth, atol=0.01)  # the mesh's chords


def test_downloads_are_the_current_mesh_and_sdm(cochlea_scene, tmp_path):
    import json

    fam = sdmnn.get_family("cochlea")
    params = {**fam.defaults, "b": 0.2}
    c = client(cochlea_scene)
    model = sdmnn.load_model()
    for forward in ("exact", "sdmnn"):
        state = json.dumps({"params": params, "forward": forward})
        r = c.get("/api/download/mesh.stl", params={"state": state})
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        mesh = trimesh.load(io.BytesIO(r.content), file_type="stl")
        assert mesh.is_watertight and mesh.volume > 0
        r = c.get("/api/download/sdm.nii.gz", params={"state": state})
        (tmp_path / "sdm.nii.gz").write_bytes(r.content)
        volume, grid = sdmnn.load_volume(tmp_path / "sdm.nii.gz")
        assert grid == fam.grid
        truth = sdmnn.exact_sdm(fam.mesh(params), fam.grid) if forward == "exact" else model.predict(params)
        # bfloat16's sums depend on the thread count, which the viewer's torch thread chooses for itself (docs/design.md,
        # Precision: up to 0.004 mm); another shape's SDM differs by tenths of a mm
        bf16 = forward == "sdmnn" and model.precision == "bfloat16"
        np.testing.assert_allclose(volume, truth, atol=0.01 if bf16 else 1e-4)
    assert c.get("/api/download/sdm.nii.gz", params={"state": "{"}).status_code == 400


def test_a_fit_is_shown_over_its_image_in_the_images_world_coordinates(fit_folder):
    scene = load_scene(fit=fit_folder / "fit")  # the family and the image come from the fit
    image, grid = sdmnn.load_volume(fit_folder / "seg.nii.gz")
    assert scene.family.name == "cochlea" and scene.grid == grid
    c = client(scene)
    info = c.get("/api/info").json()
    assert [p["name"] for p in info["pose"]] == ["rx", "ry", "rz", "tx", "ty", "tz"]
    assert info["values"] == PHANTOM and set(info["fit"]["intervals"]) == {*PHANTOM, "rx", "ry", "rz", "tx", "ty", "tz"}
    body = {"params": PHANTOM, "forward": "exact", "positions": info["centre"]}
    planes = c.post("/api/slices", json=body).json()["planes"]
    for plane in planes:  # the fitted contour lies on the image's shape
        inside = decoded(plane["sdm"], plane["shape"]) < 0
        labels = decoded(plane["image"], plane["shape"]) > 0.5
        assert inside.sum() > 10 and 2 * (inside & labels).sum() / (inside.sum() + labels.sum()) > 0.8
    network = c.post("/api/slices", json={**body, "forward": "sdmnn"}).json()["planes"]
    for a, b in zip(planes, network):
        assert np.mean((decoded(a["sdm"], a["shape"]) < 0) == (decoded(b["sdm"], b["shape"]) < 0)) > 0.97
    moved = c.post("/api/slices", json={**body, "pose": [0, 0, 0, 2.0, 0, 0]}).json()["planes"]
    assert not np.array_equal(decoded(moved[0]["sdm"], moved[0]["shape"]), decoded(planes[0]["sdm"], planes[0]["shape"]))
    mesh = scene.surface(scene.state(PHANTOM, forward="exact"))
    written = trimesh.load(fit_folder / "fit" / "mesh.stl", process=False)  # the fit's own surface, world mm
    np.testing.assert_allclose(mesh.triangles.reshape(-1, 3), written.vertices, atol=1e-4)
    # malformed states: a 400 with one sentence, never a 500 or a silent coercion
    for bad, message in (({"pose": "abc"}, "pose step is six finite numbers"), ({"pose": [0, 0, 0, 1e300, 0, 0]}, "lies within"),
                         ({"pose": [10**400, 0, 0, 0, 0, 0]}, "six finite numbers"), ({"positions": [1.9, 0, 0]}, "integers"),
                         ({"positions": "centre"}, "integers"), ({"difference": "false"}, "true or false"),
                         ({"params": {**PHANTOM, "a": 10**400}}, "a must be a finite number"),
                         ({"params": {**PHANTOM, "a": "3.0"}}, "a must be a number")):
        r = c.post("/api/slices", json={**body, **bad})
        assert r.status_code == 400 and message in r.json()["error"], (bad, r.text)
    for raw in ("", "null", "[1, 2]", "not json"):
        r = c.post("/api/slices", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "the request is a JSON object" in r.json()["error"], (raw, r.text)
    assert c.get("/api/download/sdm.nii.gz").status_code == 400


def test_a_fit_of_another_family_is_refused(fit_folder):
    with pytest.raises(SdmnnError, match="is of the cochlea family, not torus"):
        load_scene("torus", fit=fit_folder / "fit")


def _cli(*args, cwd):
    return subprocess.run([*SDMNN, "view", "--no-browser", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_bad_input_to_view_is_one_sentence_and_exit_2(fit_folder, tmp_path):
    (tmp_path / "broken.nii.gz").write_text("not an image")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cases = [
            (["--family", "sphere"], "unknown family 'sphere'"),
            (["--image", str(tmp_path / "broken.nii.gz")], "cannot be read as a volume"),
            (["--image", str(tmp_path / "missing.nrrd")], "no such file"),
            (["--family", "torus", "--fit", str(fit_folder / "fit")], "is of the cochlea family, not torus"),
            (["--fit", str(tmp_path)], "has no result.json"),
            (["--port", str(port)], f"port {port} on 127.0.0.1 is in use"),
        ]
        for args, message in cases:
            r = _cli(*args, cwd=tmp_path)
            assert r.returncode == 2, (args, r.stderr)
            said = " ".join(r.stderr.split())  # rich wraps the sentence to the terminal's width
            assert said.startswith("error:") and said.count("error:") == 1 and message in said, (args, r.stderr)
            assert "Traceback" not in r.stderr


def chromium() -> str:
    path = os.environ.get("SDMNN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("the browser test needs the distribution's chromium (`apt-get install chromium`; `make test` "
                    "installs it), or SDMNN_CHROMIUM=/path/to/chromium")
    return path


def test_the_page_moves_the_shape_in_a_real_browser(cochlea_scene):
    from playwright.sync_api import sync_playwright

    problems = []
    with running(cochlea_scene, port=0) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(url)
            page.wait_for_function("window.sdmnnView && sdmnnView.updates > 0 && sdmnnView.surfaces > 0", timeout=30_000)
            sliders = page.locator("#params input[type=range]")
            fam = cochlea_scene.family
            assert sliders.count() == len(fam.space.parameters)
            for n, p in enumerate(fam.space.parameters):
                s = sliders.nth(n)
                assert s.get_attribute("id") == f"param-{p.name}"
                assert (float(s.get_attribute("min")), float(s.get_attribute("max"))) == (p.low, p.high)
            assert page.locator("#params").inner_text().count("(mm)") == 2  # a and alpha show their unit
            slices = "[0, 1, 2].map(a => document.getElementById('slice-canvas-' + a).toDataURL())"
            before = page.evaluate(slices)
            updates = page.evaluate("sdmnnView.updates")
            sliders.nth(0).fill("4.6")
            page.wait_for_function(f"sdmnnView.updates > {updates} && !sdmnnView.error", timeout=10_000)
            after = page.evaluate(slices)
            assert all(a != b for a, b in zip(before, after)), "the slices did not change"
            assert page.locator("#view3d canvas").count() == 1
            assert page.evaluate("sdmnnView.error") is None
        finally:
            browser.close()
    assert problems == [], problems
