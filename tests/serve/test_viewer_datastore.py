"""The viewer's datastore panel (``volsam serve --datastore DIR``) in headless Chromium: the image list with
each image's label status, open an image, prompt, "Save to datastore", a conflict with another person's
save (reopen theirs, or save anyway), reload (reattach), and reopen the image with its objects restored.

One server with a local-folder datastore holding the bundled demo volume and a fake model (bright voxels),
one page; the tests run in file order and build on each other. Saved labels are read back from the folder
and compared voxel for voxel with the server's label map; the page's label layer (NiiVue's drawing
bitmap) is compared in counts. Screenshots go to ``test-artifacts/`` as in test_viewer.py.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.fakes import ThresholdModel
from tests.serve.test_viewer import (
    ARTIFACTS,
    TIMEOUT,
    at,
    layer_counts,
    open_page,
    server_counts,
    updates,
    wait_update,
)
from tests.serve.test_viewer import pytestmark as viewer_marks
from volsam.demo import DEMO_IMAGE
from volsam.serve.app import create_app
from volsam.serve.background import background_server
from volsam.session import Session

pytestmark = viewer_marks


class Server:
    def __init__(self, url: str, root: Path, sessions: list[Session]) -> None:
        self.url, self.root, self.sessions = url, root, sessions

    def saved(self, version: int) -> np.ndarray:
        return np.asarray(nib.load(self.root / "labels" / "final" / f"demo.v{version}.nii.gz").dataobj)

    def post(self, path: str, body: dict | None = None) -> dict:
        """The API as another person's client would use it."""
        import httpx

        r = httpx.post(self.url + path, json=body, timeout=30)
        assert r.status_code in (200, 201), r.text
        return r.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    pytest.importorskip("uvicorn")
    root = tmp_path_factory.mktemp("datastore")
    shutil.copy(DEMO_IMAGE, root / "demo.nii.gz")
    sessions: list[Session] = []
    model = ThresholdModel()
    lock = threading.Lock()

    def factory() -> Session:
        with lock:
            sessions.append(Session(model, "cpu"))
            return sessions[-1]

    with background_server(create_app(session_factory=factory, datastore=root)) as url:
        yield Server(url + "/", root, sessions)


@pytest.fixture(scope="module")
def page(server):
    yield from open_page(server.url)


def badge(page) -> str:
    return page.text_content("#images li[data-id='demo'] .badge")


def test_list_open_prompt_and_save(page, server):
    page.wait_for_selector("#datastore:not([hidden])", timeout=TIMEOUT)
    assert page.locator("#images li").count() == 1
    assert page.text_content("#images li .name") == "demo.nii.gz" and badge(page) == "none"
    assert page.is_disabled("#ds-save")  # nothing open yet
    page.click("#images li[data-id='demo']")
    page.wait_for_selector("body[data-image='demo']", timeout=TIMEOUT)
    session = server.sessions[-1]
    assert page.is_enabled("#ds-save")
    assert "current" in page.get_attribute("#images li[data-id='demo']", "class")
    # two objects, so that the reopened image has two to restore
    n = updates(page)
    page.mouse.click(*at(page, [0.35, 0.6, 0.45]))
    wait_update(page, n)
    page.keyboard.press("n")
    wait_update(page, n + 1)
    page.mouse.click(*at(page, [0.65, 0.4, 0.55]))
    wait_update(page, n + 2)
    assert set(layer_counts(page)) == {1, 2} and layer_counts(page) == server_counts(session)

    page.click("#ds-save")
    page.wait_for_selector("body[data-ds-version='1']", timeout=TIMEOUT)
    np.testing.assert_array_equal(server.saved(1), session.label_map)
    assert "saved demo as final v1 in the folder" in page.text_content("#ds-status")
    page.wait_for_function("document.querySelector('#images li .badge').textContent === 'final v1'", timeout=TIMEOUT)
    page.screenshot(path=str(ARTIFACTS / "viewer_datastore_saved.png"))


def test_conflict_reopen_theirs_or_save_anyway(page, server):
    session = server.sessions[-1]

    def someone_else_saves(point) -> int:
        other = server.post("datastore/images/demo/session", {"restore": True})
        server.post(f"sessions/{other['id']}/clicks", {"point": point})
        return server.post(f"sessions/{other['id']}/datastore/save")["version"]

    assert someone_else_saves([30, 30, 20]) == 2
    page.click("#ds-save")
    page.wait_for_selector("#ds-conflict:not([hidden])", timeout=TIMEOUT)
    assert page.text_content("#ds-status").startswith("conflict: 409: image demo: its final label is at version 2")
    assert page.text_content("#ds-resume") == "Reopen latest (v2)"
    assert not (server.root / "labels" / "final" / "demo.v3.nii.gz").exists()  # nothing saved over theirs
    # reopen theirs: the page's layer becomes version 2
    page.click("#ds-resume")
    page.wait_for_function("document.querySelector('#ds-status').textContent.startsWith('reopened')", timeout=TIMEOUT)
    theirs = server.saved(2)
    np.testing.assert_array_equal(session.label_map, theirs)
    assert layer_counts(page) == server_counts(session)

    # again, and this time keep mine as a newer version (theirs stays as version 3)
    n = updates(page)
    page.mouse.click(*at(page, [0.65, 0.4, 0.55]))  # object 2 (restored as the current one)
    wait_update(page, n)
    assert set(layer_counts(page)) == {1, 2} and layer_counts(page) == server_counts(session)
    assert someone_else_saves([32, 30, 20]) == 3
    page.click("#ds-save")
    page.wait_for_selector("#ds-conflict:not([hidden])", timeout=TIMEOUT)
    page.click("#ds-force")
    page.wait_for_selector("body[data-ds-version='4']", timeout=TIMEOUT)
    assert page.is_hidden("#ds-conflict")
    np.testing.assert_array_equal(server.saved(4), session.label_map)
    assert (server.root / "labels" / "final" / "demo.v3.nii.gz").exists()
    assert badge(page) == "final v4"


def test_a_failed_push_shows_its_message(page):
    # A PACS that is down makes a save answer 502 with one line saying the label was saved locally (the
    # message of volsam.datastore.dicomweb); the answer is faked here to check the page shows it as an error.
    detail = ("label saved locally as version 5 (/ds/labels/final/demo.v5.nii.gz); DICOMweb server "
              "http://127.0.0.1:9/dicom-web unreachable (connection refused); `volsam datastore push` sends it later")
    page.route("**/datastore/save", lambda route: route.fulfill(status=502, json={"detail": detail}))
    try:
        page.click("#ds-save")
        page.wait_for_selector("#ds-status.error", timeout=TIMEOUT)
    finally:
        page.unroute("**/datastore/save")
    assert page.text_content("#ds-status") == f"save: 502: {detail}"
    assert page.text_content("#status") == f"save: 502: {detail}" and page.is_hidden("#ds-conflict")


def test_reload_reattaches_then_reopen_restores_the_objects(page, server):
    sid = page.get_attribute("body", "data-session")
    created = len(server.sessions)
    page.reload()
    page.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT)
    page.wait_for_selector("#datastore:not([hidden])", timeout=TIMEOUT)
    # the same session, still bound to its image: Save keeps working
    assert page.get_attribute("body", "data-session") == sid and len(server.sessions) == created
    assert page.get_attribute("body", "data-image") == "demo" and page.is_enabled("#ds-save")

    # reopen the image from the list: a new session, its objects restored from the latest final label
    saved = server.saved(4)
    page.click("#images li[data-id='demo']")
    page.wait_for_function(f"document.body.dataset.session && document.body.dataset.session !== '{sid}'",
                           timeout=TIMEOUT)
    page.wait_for_selector("body[data-image='demo']", timeout=TIMEOUT)
    assert len(server.sessions) == created + 1
    counts = np.bincount(saved.ravel(), minlength=256)
    expected = {label: int(n) for label, n in enumerate(counts) if n and label}
    assert set(expected) == {1, 2}
    assert layer_counts(page) == expected == server_counts(server.sessions[-1])
    rows = page.locator("#objects li")
    assert rows.count() == 2
    colours = [rows.nth(i).locator(".swatch").evaluate("e => getComputedStyle(e).backgroundColor") for i in range(2)]
    assert colours == ["rgb(255, 0, 0)", "rgb(0, 255, 0)"]  # ITK-SNAP's labels 1 and 2, as before the save
    assert "final v4 restored, 2 object(s)" in page.text_content("#ds-status")
    page.screenshot(path=str(ARTIFACTS / "viewer_datastore_reopened.png"))
