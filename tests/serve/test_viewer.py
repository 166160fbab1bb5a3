"""The browser viewer in headless Chromium (Debian's ``chromium`` driven by Playwright), as a user works it.

One real server (uvicorn on loopback) with a fake model that segments bright voxels, one browser and one
page for the whole module: the tests run in file order and build on each other (demo loaded, then
prompts, objects, view controls, save and reload), which keeps the module to a few tens of seconds of
software WebGL. After every prompt the label layer the page holds (NiiVue's drawing bitmap) is checked
voxel for voxel in counts against the server's label map. Screenshots go to ``test-artifacts/``
(or ``$VOLSAM_TEST_ARTIFACTS``), which CI keeps.
"""

from __future__ import annotations

import os
import shutil
import threading
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
AXIAL, CORONAL = 0, 1
TIMEOUT = 60_000  # ms; software WebGL on a loaded 2-core machine is slow

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(
        not (STATIC_DIR / "vendor" / "niivue.umd.js").is_file(), reason="viewer not built: scripts/build_viewer.sh"
    ),
]


class SpySession(Session):
    """Records every prompt the server passes on; while ``gate`` is clear, clicks wait for it (to see the
    page's busy state)."""

    gate = threading.Event()

    def __init__(self, model) -> None:
        super().__init__(model, "cpu")
        self.calls: list[tuple] = []

    def add_click(self, point, positive=True, *, world=False):
        SpySession.gate.wait(30)
        self.calls.append(("click", tuple(float(v) for v in point), positive, world))
        return super().add_click(point, positive, world=world)

    def add_box(self, lo, hi, *, world=False, positive=True):
        self.calls.append(("box", tuple(lo), tuple(hi), world))
        return super().add_box(lo, hi, world=world, positive=positive)

    def add_scribble(self, voxels, positive=True, *, world=False):
        self.calls.append(("scribble", len(voxels), positive, world))
        return super().add_scribble(voxels, positive, world=world)

    def add_lasso(self, polygon, axis=None, index=None, positive=True):
        self.calls.append(("lasso", len(polygon), axis, index, positive))
        return super().add_lasso(polygon, axis, index, positive)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, list[SpySession]]]:
    pytest.importorskip("uvicorn")
    sessions: list[SpySession] = []
    model = ThresholdModel()
    SpySession.gate.set()
    lock = threading.Lock()

    def factory() -> Session:
        with lock:
            sessions.append(SpySession(model))
            return sessions[-1]

    app = create_app(session_factory=factory)
    with background_server(app) as url:
        yield url + "/", sessions


def open_page(url: str, **page_options):
    """Headless Debian chromium on the viewer at ``url`` (ready), for a module's tests; no page error may
    have happened by the end."""
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800}, **page_options)
            page.errors = []
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT)
            yield page
            assert not page.errors, page.errors
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(server):
    yield from open_page(server[0], accept_downloads=True)


# ------------------------------------------------------------------ helpers


def at(page, frac, tile=AXIAL, move_crosshair=True) -> tuple[float, float]:
    """Page coordinates of volume fraction ``frac`` (RAS) on the ``tile`` view (after putting the crosshair,
    i.e. that tile's slice, there)."""
    return tuple(
        page.evaluate(
            """([frac, tile, move]) => {
                const nv = window.volsamViewer.nv;
                if (move) { nv.scene.crosshairPos = frac; nv.drawScene(); }
                const hit = nv.frac2canvasPosWithTile(frac, tile);
                const r = nv.canvas.getBoundingClientRect();
                const dpr = window.devicePixelRatio || 1;
                return [r.left + hit.pos[0] / dpr, r.top + hit.pos[1] / dpr];
            }""",
            [frac, tile, move_crosshair],
        )
    )


def updates(page) -> int:
    return int(page.get_attribute("body", "data-updates") or 0)


def wait_update(page, before: int) -> None:
    page.wait_for_selector(f"body[data-updates='{before + 1}']", timeout=TIMEOUT)


def drag(page, points, button="left") -> None:
    page.mouse.move(*points[0])
    page.mouse.down(button=button)
    for p in points[1:]:
        page.mouse.move(*p, steps=3)
    page.mouse.up(button=button)


def layer_counts(page) -> dict[int, int]:
    """Voxels of each label in the page's label layer (NiiVue's drawing bitmap)."""
    counts = page.evaluate("window.volsamViewer.labelCounts()")
    return {label: int(n) for label, n in enumerate(counts) if n and label}


def server_counts(session: Session) -> dict[int, int]:
    counts = np.bincount(session.label_map.ravel(), minlength=256)
    return {label: int(n) for label, n in enumerate(counts) if n and label}


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"viewer_{name}.png"))


def marks(page) -> list[dict]:
    return page.evaluate("window.volsamViewer.state.meta.marks")


def has_object_routes(page) -> bool:
    return bool(page.evaluate("window.volsamViewer.state.caps.objects"))


# ------------------------------------------------------------------ the tests, in the order a user works


def test_opens_the_demo(page, server):
    # nothing pretends to load before an image is opened
    assert page.evaluate("window.volsamViewer.nv.opts.loadingText") == ""
    assert page.is_hidden("#datastore")  # this server has no datastore (GET /datastore/images: 404)
    page.click("#demo")
    page.wait_for_selector("body[data-session]", timeout=TIMEOUT)
    session = server[1][-1]
    assert page.get_attribute("body", "data-session")
    # software WebGL (SwiftShader here): the page opens in the 2x2 grid without the 3D view, which would
    # cost it about a second per redraw; the tiles use the page's height
    assert page.get_attribute("body", "data-software") == "1"
    assert page.get_attribute("body", "data-layout") == "grid3"
    tiles = page.evaluate("window.volsamViewer.nv.screenSlices.map((t) => [t.axCorSag, t.leftTopWidthHeight[3]])")
    view_h = page.evaluate("window.volsamViewer.nv.canvas.height")
    assert sorted(t for t, _ in tiles) == [0, 1, 2]
    assert sum(h for t, h in tiles if t != 2) > 0.95 * view_h  # axial below coronal fill the height
    assert layer_counts(page) == server_counts(session) == {}
    shot(page, "demo")


def test_click_negative_click_and_undo(page, server):
    session = server[1][-1]
    frac = [0.35, 0.6, 0.45]
    pos = at(page, frac)
    n = updates(page)
    page.mouse.click(*pos)
    wait_update(page, n)
    counts = layer_counts(page)
    assert counts and counts == server_counts(session)
    assert page.locator("#objects li").count() == 1
    # the click reached the server as a world point on the intended voxel
    kind, point, positive, world = session.calls[-1]
    assert kind == "click" and positive and world
    voxel = np.linalg.solve(session.volume.affine, [*point, 1.0])[:3]
    assert np.abs(voxel - (np.array(frac) * np.array(session.volume.shape) - 0.5)).max() <= 1.5
    page.keyboard.down("Shift")
    page.mouse.click(*at(page, [0.4, 0.6, 0.45]))
    page.keyboard.up("Shift")
    wait_update(page, n + 1)
    n += 2
    page.mouse.click(*at(page, [0.45, 0.6, 0.45]), button="right")
    wait_update(page, n)
    assert [c[2] for c in session.calls[-3:]] == [True, False, False]
    assert [m["positive"] for m in marks(page)] == [True, False, False]
    shot(page, "clicks_with_markers")
    page.keyboard.press("Control+z")
    wait_update(page, n + 1)
    assert len(marks(page)) == 2 and session.num_clicks == 2
    assert layer_counts(page) == server_counts(session)


def test_box_on_a_slice(page, server):
    session = server[1][-1]
    page.keyboard.press("b")
    assert page.get_attribute("body", "data-tool") == "box"
    a = at(page, [0.3, 0.35, 0.5])
    b = at(page, [0.55, 0.6, 0.5], move_crosshair=False)
    n = updates(page)
    drag(page, [a, ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2), b])
    wait_update(page, n)
    kind, lo, hi, world = session.calls[-1]
    assert kind == "box" and world
    assert abs(lo[2] - hi[2]) < 1e-3 and abs(lo[0] - hi[0]) > 10 and abs(lo[1] - hi[1]) > 10  # drawn on one axial slice
    # a box does not move the crosshair (only the point tool does)
    assert page.evaluate("window.volsamViewer.nv.scene.crosshairPos[0]") == pytest.approx(0.3, abs=1e-6)
    assert layer_counts(page) == server_counts(session)
    shot(page, "box")


def test_scribble_and_lasso(page, server):
    session = server[1][-1]
    page.keyboard.press("s")
    pts = [at(page, [0.5, 0.5, 0.5])]
    pts += [at(page, [0.5 + d, 0.5 + d / 2, 0.5], move_crosshair=False) for d in (0.03, 0.06)]
    n = updates(page)
    drag(page, pts)
    wait_update(page, n)
    assert session.calls[-1][0] == "scribble" and session.calls[-1][1] >= 3 and session.calls[-1][3]
    assert layer_counts(page) == server_counts(session)
    page.keyboard.press("l")
    ring = [[0.4, 0.4], [0.5, 0.4], [0.5, 0.5], [0.4, 0.5]]
    pts = [at(page, [0.4, 0.5, 0.4], CORONAL)] + [at(page, [x, 0.5, z], CORONAL, False) for x, z in ring]
    drag(page, pts)
    wait_update(page, n + 1)
    kind, vertices, axis, index, positive = session.calls[-1]
    # a coronal slice of this RAS+ volume is normal to voxel axis 1, at the crosshair's slice
    assert kind == "lasso" and vertices >= 4 and axis == 1 and positive
    assert abs(index - (0.5 * session.volume.shape[1] - 0.5)) <= 1
    assert layer_counts(page) == server_counts(session)


def test_two_objects_in_two_colours(page, server):
    session = server[1][-1]
    page.keyboard.press("p")
    n = updates(page)
    page.keyboard.press("n")
    wait_update(page, n)
    page.mouse.click(*at(page, [0.65, 0.4, 0.55]))
    wait_update(page, n + 1)
    assert page.get_attribute("body", "data-current") == "2"
    counts = layer_counts(page)
    assert set(counts) == {1, 2} and counts == server_counts(session)
    rows = page.locator("#objects li")
    assert rows.count() == 2
    colours = [rows.nth(i).locator(".swatch").evaluate("e => getComputedStyle(e).backgroundColor") for i in range(2)]
    assert colours[0] != colours[1]
    # the list shows each object's volume: 1 mm voxels, so ml = voxels / 1000
    ml = float(rows.nth(1).locator(".ml").text_content().split()[0])
    assert ml == pytest.approx(counts[2] / 1000, abs=0.01)
    rows.nth(0).locator(".name").fill("left caudate")
    rows.nth(0).locator(".name").press("Enter")
    assert page.evaluate("window.volsamViewer.state.meta.names[1]") == "left caudate"
    shot(page, "two_objects")
    # hide object 2: its colour becomes transparent, the voxels stay
    rows.nth(1).locator(".eye").click()
    assert page.evaluate("window.volsamViewer.nv.drawLut.lut[2 * 4 + 3]") == 0
    rows.nth(1).locator(".eye").click()
    assert page.evaluate("window.volsamViewer.nv.drawLut.lut[2 * 4 + 3]") == 255


def test_select_object_one_and_edit_it(page, server):
    session = server[1][-1]
    if not has_object_routes(page):
        pytest.skip("this server has no object routes (GET /sessions/{id}/objects)")
    before = server_counts(session)
    n = updates(page)
    page.locator("#objects li").nth(0).locator(".swatch").click()
    wait_update(page, n)
    assert page.get_attribute("body", "data-current") == "1" and session.current_label == 1
    page.keyboard.press("d")  # brush
    a = at(page, [0.2, 0.2, 0.5])
    drag(page, [a, at(page, [0.25, 0.2, 0.5], move_crosshair=False)])
    wait_update(page, n + 1)
    after = server_counts(session)
    # object 1 grew by the stroke; object 2 lost at most the voxels the stroke took from it
    gained = after[1] - before[1]
    assert gained > 0 and 0 <= before[2] - after[2] <= gained
    assert layer_counts(page) == after
    # the eraser takes voxels out of object 1 (object 2's own prediction shows again where it was under them)
    page.keyboard.press("e")
    drag(page, [a, at(page, [0.22, 0.2, 0.5], move_crosshair=False)])
    wait_update(page, n + 2)
    erased = server_counts(session)
    assert erased[1] < after[1] and erased[2] >= after[2] and layer_counts(page) == erased
    # delete object 2 (asks first): it leaves the layer and the list; undo brings it back
    page.once("dialog", lambda d: d.accept())
    page.locator("#objects li").nth(1).locator(".del").click()
    wait_update(page, n + 3)
    assert 2 not in server_counts(session) and 2 not in layer_counts(page)
    assert page.locator("#objects li").count() == 1
    page.keyboard.press("Control+z")
    wait_update(page, n + 4)
    assert server_counts(session) == erased == layer_counts(page)
    assert page.locator("#objects li").count() == 2
    page.keyboard.press("p")


def test_busy_state_queues_clicks(page, server):
    session = server[1][-1]
    page.keyboard.press("p")
    n, calls = updates(page), len(session.calls)
    SpySession.gate.clear()
    try:
        page.mouse.click(*at(page, [0.6, 0.45, 0.5]))
        page.wait_for_selector("#busy:not([hidden])", timeout=5_000)
        page.mouse.click(*at(page, [0.62, 0.45, 0.5], move_crosshair=False))
        assert "1 queued" in page.text_content("#queued")
        assert page.get_attribute("body", "data-busy") == "1"
        assert sum(bool(m.get("pending")) for m in marks(page)) == 2  # both clicks are marked at once
        shot(page, "busy")
    finally:
        SpySession.gate.set()
    wait_update(page, n + 1)
    page.wait_for_selector("body[data-busy='0']", timeout=TIMEOUT)
    # the queued click was sent, not dropped
    assert [c[0] for c in session.calls[calls:]] == ["click", "click"]
    assert layer_counts(page) == server_counts(session)


def test_window_level_and_zoom(page, server):
    session = server[1][-1]
    page.select_option("#preset", "lung")
    assert page.get_attribute("body", "data-window") == "-1350,150"
    page.select_option("#preset", "auto")
    window = page.get_attribute("body", "data-window")
    # Ctrl+drag windows the image with any tool, and is not a click
    calls = len(session.calls)
    a = at(page, [0.5, 0.5, 0.5])
    page.keyboard.down("Control")
    drag(page, [a, (a[0] + 60, a[1] + 40)])
    page.keyboard.up("Control")
    page.wait_for_timeout(300)
    assert page.get_attribute("body", "data-window") != window
    assert page.input_value("#preset") == "custom"
    assert len(session.calls) == calls
    page.click("#zoom-in")
    page.click("#zoom-in")
    assert float(page.get_attribute("body", "data-zoom")) == pytest.approx(1.5625, abs=1e-3)
    shot(page, "zoomed")
    page.keyboard.press("0")
    assert float(page.get_attribute("body", "data-zoom")) == 1
    # slices move with the arrow keys
    z = page.evaluate("window.volsamViewer.nv.scene.crosshairPos[2]")
    page.keyboard.press("ArrowUp")
    assert page.evaluate("window.volsamViewer.nv.scene.crosshairPos[2]") > z


def test_layouts_and_no_stranding_in_3d(page):
    def tiles() -> list[int]:
        return sorted(page.evaluate("window.volsamViewer.nv.screenSlices.map((t) => t.axCorSag)"))

    page.click("[data-layout='row']")
    assert tiles() == [0, 1, 2]
    page.click("[data-layout='grid']")
    assert tiles() == [0, 1, 2, 4]
    page.click("[data-layout='axial']")
    assert tiles() == [0]
    page.click("[data-layout='render']")
    assert page.evaluate("window.volsamViewer.nv.opts.sliceType") == 4
    page.keyboard.press("v")  # NiiVue's own V would cycle its views; here it goes on to the 2x2 layout
    assert page.get_attribute("body", "data-layout") == "grid" and tiles() == [0, 1, 2, 4]
    page.click("#convention")
    assert page.evaluate("window.volsamViewer.nv.opts.isRadiologicalConvention") is True
    assert page.text_content("#convention") == "Radiological"


def test_save_names_the_file_after_the_image(page, server, tmp_path):
    nib = pytest.importorskip("nibabel")
    session = server[1][-1]
    with page.expect_download() as info:
        page.click("#save")
    download = info.value
    assert download.suggested_filename == "demo_labels.nii.gz"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    np.testing.assert_array_equal(np.asarray(nib.load(saved).dataobj), session.label_map)


def test_reload_reattaches_to_the_session(page, server):
    session = server[1][-1]
    sid = page.get_attribute("body", "data-session")
    created = len(server[1])
    page.reload()
    page.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT)
    assert page.get_attribute("body", "data-session") == sid
    assert len(server[1]) == created  # no new session
    assert layer_counts(page) == server_counts(session)
    assert page.locator("#objects li").count() == 2
    assert page.evaluate("window.volsamViewer.state.meta.names[1]") == "left caudate"
    shot(page, "reattached")


def test_reset_asks_first(page, server):
    session = server[1][-1]
    page.once("dialog", lambda d: d.dismiss())
    page.click("#reset")
    page.wait_for_timeout(200)
    assert server_counts(session)
    n = updates(page)
    page.once("dialog", lambda d: d.accept())
    page.click("#reset")
    wait_update(page, n)
    assert server_counts(session) == {} == layer_counts(page)
    assert marks(page) == []
