"""The viewer's latency: server time from a slider move to the new slices, and the time until the browser shows
them (headless chromium through Playwright), with the network on the cochlea grid; and the README's screenshot
(docs/viewer.png): a real fit over its phantom image."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

FIGURE = Path("docs/viewer.png")
BROWSER_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


def server_times(scene, moves: int) -> tuple[np.ndarray, np.ndarray]:
    """(handler ms, HTTP round trip ms) of ``moves`` slider moves of ``a`` (each a new shape: no cache hit)."""
    from starlette.testclient import TestClient

    from sdmnn.view import make_app

    client = TestClient(make_app(scene))
    info = client.get("/api/info").json()
    low, high = info["parameters"][0]["low"], info["parameters"][0]["high"]
    handler, trip = [], []
    for a in np.linspace(low, high, moves):
        body = {"params": {**info["values"], "a": float(a)}, "forward": "sdmnn", "positions": info["centre"]}
        t = time.perf_counter()
        r = client.post("/api/slices", json=body)
        trip.append(1e3 * (time.perf_counter() - t))
        handler.append(r.json()["ms"])
    return np.array(handler), np.array(trip)


def browser_times(scene, moves: int, screenshot_scene=None) -> np.ndarray:
    """ms from a slider's input event to the new slices drawn, in headless chromium; writes the screenshot."""
    from playwright.sync_api import sync_playwright

    from sdmnn.view import running

    shown = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        with running(scene, port=0) as url:
            page.goto(url)
            page.wait_for_function("window.sdmnnView && sdmnnView.updates > 0 && sdmnnView.surfaces > 0")
            slider = page.locator("#param-a")
            for a in np.linspace(2.2, 4.8, moves):
                n = page.evaluate("sdmnnView.updates")
                slider.fill(f"{a:.3f}")
                page.wait_for_function(f"sdmnnView.updates > {n}")
                shown.append(page.evaluate("sdmnnView.shownMs"))
        if screenshot_scene is not None:
            with running(screenshot_scene, port=0) as url:
                page.goto(url)
                page.wait_for_function("window.sdmnnView && sdmnnView.updates > 0 && sdmnnView.surfaces > 0")
                page.wait_for_timeout(500)
                page.screenshot(path=str(FIGURE))
        browser.close()
    return np.array(shown)


def fitted_scene(folder: Path):
    """A real fit (the README's phantom, pose unknown) and the scene that shows it over its image."""
    import sdmnn
    from sdmnn.fitting import fit
    from sdmnn.phantom import make_phantom
    from sdmnn.view import load_scene

    fam = sdmnn.get_family("cochlea")
    image, grid, _ = make_phantom(fam, {**fam.defaults, "a": 3.2}, rotate=(20, -35, 50), translate=(0.6, -0.4, 0.2),
                                  spacing=(0.4,) * 3)
    sdmnn.save_volume(folder / "seg.nii.gz", image, grid)
    result = fit(image, grid, family="cochlea", observed_kind="labels", pose="rigid", seed=0)
    result.save(folder / "fit", image=image, target=str(folder / "seg.nii.gz"))
    return load_scene(fit=folder / "fit")


def run(quick: bool = False) -> str:
    import torch

    from sdmnn.view import load_scene

    moves = 10 if quick else 40
    scene = load_scene("cochlea")
    rows = []
    threads = torch.get_num_threads()
    for n in sorted({threads, 1}, reverse=True):
        scene.net.threads = n  # the model's own choice follows the load average, which other jobs move
        handler, trip = server_times(scene, moves)
        rows.append(f"| server, slices of a new shape ({n} torch thread{'s' if n > 1 else ''}) | {np.median(handler):.0f} | "
                    f"{np.percentile(handler, 90):.0f} | {np.median(trip):.0f} |")
    scene.net.threads = threads
    with tempfile.TemporaryDirectory() as tmp:
        fitted = None if quick else fitted_scene(Path(tmp))
        if fitted is not None:  # slices of the image's grid through the fitted pose: resampled, not cut from the model grid
            fitted.net.threads = threads
            handler, trip = server_times(fitted, moves)
            g = fitted.grid
            rows.append(f"| server, slices of a new shape over a fit ({'x'.join(map(str, g.shape))} image at "
                        f"{g.spacing[0]:g} mm, posed; {threads} torch threads) | {np.median(handler):.0f} | "
                        f"{np.percentile(handler, 90):.0f} | {np.median(trip):.0f} |")
        shown = browser_times(scene, moves, screenshot_scene=fitted)
    rows.append(f"| browser, from the slider's move to the slices drawn ({threads} torch threads) | {np.median(shown):.0f} | "
                f"{np.percentile(shown, 90):.0f} | |")
    return "\n".join([
        "## The viewer (`sdmnn view`): from a slider move to the new slices",
        "",
        f"The cochlea with the shipped network on its 64x56x32 grid: {moves} moves of the slider `a`, each a new shape "
        "(no cache hit): the server's time (the network's SDM, then the three slices sampled from it; over a fit, the "
        "image's planes sampled through the fitted pose), the HTTP round "
        "trip, and in headless chromium (Playwright, software WebGL) the time from the slider's input event until the "
        "three slices are drawn. The surface (marching cubes) follows in a second request and is not counted. "
        "Goals: server <= 30 ms, shown <= 100 ms. On shared cores these figures move with the other jobs' load.",
        "",
        "| what | median ms | 90th percentile ms | HTTP round trip ms (median) |",
        "|---|---:|---:|---:|",
        *rows,
    ])
