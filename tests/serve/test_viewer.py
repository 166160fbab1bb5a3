"""End-to-end test of the browser viewer in headless Chromium (Debian's ``chromium`` driven by Playwright).

A real server (uvicorn on loopback) with a fake model that segments bright voxels, so the test checks
the viewer's plumbing: the page loads NiiVue from the package, opens the bundled demo volume, turns a
mouse click into a world point that lands on the intended voxel, and paints the returned mask. The
screenshots are kept in ``test-artifacts/`` (or ``$VOLSAM_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.fakes import ThresholdModel
from volsam.serve.app import STATIC_DIR, create_app
from volsam.serve.background import background_server
from volsam.session import Session

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("VOLSAM_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
# Software WebGL2 (SwiftShader): no GPU, no network, no sandbox (containers).
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(
        not (STATIC_DIR / "vendor" / "niivue.umd.js").is_file(), reason="viewer not built: scripts/build_viewer.sh"
    ),
]


class SpySession(Session):
    """Records every click the server passes on."""

    clicks: list[tuple[tuple[float, float, float], bool, bool]]

    def __init__(self, model) -> None:
        super().__init__(model, "cpu")
        self.clicks = []

    def add_click(self, point, positive=True, *, world=False):
        self.clicks.append((tuple(float(v) for v in point), positive, world))
        return super().add_click(point, positive, world=world)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, list[SpySession]]]:
    pytest.importorskip("uvicorn")
    sessions: list[SpySession] = []
    model = ThresholdModel()

    def factory() -> Session:
        sessions.append(SpySession(model))
        return sessions[-1]

    app = create_app(session_factory=factory)
    with background_server(app) as url:
        yield url + "/", sessions


def _overlay_pixels(png: bytes) -> int:
    """Pixels where the overlay's red dominates: red well above green (the crosshair is blue)."""
    from io import BytesIO

    from PIL import Image

    rgb = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)
    return int(((rgb[..., 0] - rgb[..., 1]) > 60).sum())


def test_viewer_click_paints_the_mask(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, sessions = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.click("#demo")
            page.wait_for_selector("body[data-session]", timeout=30_000)
            page.wait_for_timeout(500)
            canvas = page.locator("#gl")
            before = canvas.screenshot(path=str(ARTIFACTS / "viewer_before.png"))
            # Put the crosshair on an off-centre voxel, then click where the axial view shows it.
            frac = [0.35, 0.6, 0.45]
            pos = page.evaluate(
                """(frac) => {
                    const nv = window.volsamViewer.nv;
                    nv.scene.crosshairPos = frac;
                    nv.drawScene();
                    const hit = nv.frac2canvasPosWithTile(frac, nv.sliceTypeAxial);
                    const r = nv.canvas.getBoundingClientRect();
                    const dpr = window.devicePixelRatio || 1;
                    return [r.left + hit.pos[0] / dpr, r.top + hit.pos[1] / dpr];
                }""",
                frac,
            )
            page.mouse.click(*pos)
            page.wait_for_selector("body[data-updates='1']", timeout=30_000)
            page.wait_for_timeout(500)
            after = canvas.screenshot(path=str(ARTIFACTS / "viewer_after_click.png"))
            voxels = int(page.get_attribute("body", "data-voxels"))
            status = page.text_content("#status")
            page.keyboard.down("Shift")
            page.mouse.click(*pos)
            page.keyboard.up("Shift")
            page.wait_for_selector("body[data-updates='2']", timeout=30_000)
            page.mouse.click(*pos, button="right")
            page.wait_for_selector("body[data-updates='3']", timeout=30_000)
        finally:
            browser.close()
    assert not errors, errors
    session = sessions[-1]
    assert voxels == int((session.label_map == 1).sum()) or voxels > 0
    assert "ms" in status and "click" in status
    # the click reached the server as a world point on the intended voxel (NiiVue's frac -> mm agrees
    # with volsam's affine; the demo volume is axis-aligned RAS+, so voxel = frac * dim - 0.5)
    (point, positive, world), (_, pos2, _), (_, pos3, _) = session.clicks
    assert world and positive and not pos2 and not pos3
    vol = session.volume
    voxel = np.linalg.solve(vol.affine, [*point, 1.0])[:3]
    expected = np.array(frac) * np.array(vol.shape) - 0.5
    assert np.abs(voxel - expected).max() <= 1.5, (voxel, expected)
    # the overlay is painted: red pixels appear only after the first click
    assert _overlay_pixels(before) == 0
    assert _overlay_pixels(after) > 500
