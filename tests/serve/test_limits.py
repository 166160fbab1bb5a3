"""What one client may cost ``volsam serve`` (issue 30, items 3-5): prompt masks proportional to what they
mark, a memory budget across sessions, and eviction that spares busy and recently active sessions. Each
test fails on the code before the fix it names."""

from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.fakes import ThresholdModel
from tests.serve import test_app as base
from tests.serve.test_app import _new
from volsam.serve import create_app, wire
from volsam.session import Session

SHAPE = (60, 64, 50)
OCTET = {"Content-Type": "application/octet-stream"}
model, truth, nifti_bytes = base.model, base.truth, base.nifti_bytes


def _app(**kw):
    m = ThresholdModel()
    return create_app(session_factory=lambda: Session(m, "cpu"), **kw)


def _lease(c: TestClient) -> dict[str, str]:
    h = {"X-Lease-Token": c.post("/claim").json()["lease_token"]}
    image = np.zeros((1, *SHAPE), np.float32)
    image[0, 20:40, 20:40, 20:30] = 100
    meta = {"X-Meta": json.dumps({"image_properties": {"spacing": [1.5, 1.5, 1.5]}}), **OCTET}
    assert c.post("/set_image", content=wire.pack(image), headers={**h, **meta}).status_code == 200
    assert c.post("/set_target_buffer", json={"shape": list(SHAPE), "dtype": "uint8"}, headers=h).status_code == 200
    return h


@pytest.mark.parametrize("kind", ["scribble", "lasso"])
def test_a_full_volume_mask_is_refused_before_it_costs(kind):
    with TestClient(_app(max_prompt_voxels=1000)) as c:
        h = {**_lease(c), **OCTET}
        body = wire.pack(np.ones(SHAPE, np.uint8))  # every voxel marked: ~200 bytes on the wire
        tracemalloc.start()
        r = c.post(f"/add_{kind}_interaction", content=body, headers=h)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert r.status_code == 400 and "at most 1000 voxels" in r.json()["detail"], r.text
        # The decoded mask (192 KB) and little else; the voxel list alone would be 24 bytes a voxel (4.6 MB).
        assert peak < 4 * np.prod(SHAPE), peak
        stroke = np.zeros(SHAPE, np.uint8)
        stroke[25:35, 30, 25] = 1  # 10 voxels on one slice: fine as a scribble and as a lasso
        assert c.post(f"/add_{kind}_interaction", content=wire.pack(stroke), headers=h).status_code == 200


def test_a_lasso_lies_on_one_slice_in_a_bounded_box():
    with TestClient(_app(max_prompt_voxels=1000)) as c:
        h = {**_lease(c), **OCTET}
        thick = np.zeros(SHAPE, np.uint8)
        thick[25:30, 25:30, 24:26] = 1  # two slices on every axis
        r = c.post("/add_lasso_interaction", content=wire.pack(thick), headers=h)
        assert r.status_code == 400 and "one slice" in r.json()["detail"], r.text
        corners = np.zeros(SHAPE, np.uint8)
        corners[0, 0, 25] = corners[-1, -1, 25] = 1  # 2 voxels, but a 60 x 64 box to fill
        r = c.post("/add_lasso_interaction", content=wire.pack(corners), headers=h)
        assert r.status_code == 400 and "bounding box" in r.json()["detail"], r.text


def test_a_rest_lasso_over_a_huge_area_is_refused(model, nifti_bytes):
    with TestClient(base._app(model, max_prompt_voxels=100)) as c:
        sid = _new(c, nifti_bytes)
        big = {"polygon": [[0, 0], [0, 1e6], [1e6, 1e6]], "axis": 2, "index": 10}
        r = c.post(f"/sessions/{sid}/lasso", json=big)
        assert r.status_code == 400 and "bounding box" in r.json()["detail"], r.text
        small = {"polygon": [[20, 20], [20, 25], [25, 25]], "axis": 2, "index": 16}
        assert c.post(f"/sessions/{sid}/lasso", json=small).status_code == 200


def _image_meta() -> dict[str, str]:
    return {"X-Meta": json.dumps({"image_properties": {"spacing": [1.5, 1.5, 1.5]}}), **OCTET}


def test_recently_active_sessions_are_not_evicted(model, nifti_bytes):
    with TestClient(base._app(model, max_sessions=2, min_idle_s=60)) as c:
        a, b = _new(c, nifti_bytes), _new(c, nifti_bytes)
        r = c.post("/sessions/demo")  # used to evict a, active a moment ago
        assert r.status_code == 503 and "retry later" in r.json()["detail"], r.text
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        r = c.post("/claim")
        assert r.status_code == 503 and "Retry-After" in r.headers
        assert c.get(f"/sessions/{a}").status_code == c.get(f"/sessions/{b}").status_code == 200


def test_memory_budget_is_shared_by_all_sessions():
    from volsam.serve.budget import session_bytes

    lease_bytes = session_bytes(int(np.prod(SHAPE)))
    with TestClient(_app(max_memory=lease_bytes * 2, min_idle_s=60)) as c:
        _lease(c)  # one image, within the budget
        h = {"X-Lease-Token": c.post("/claim").json()["lease_token"]}
        image = np.zeros((1, *SHAPE), np.float32)
        r = c.post("/set_image", content=wire.pack(image), headers={**h, **_image_meta()})
        assert r.status_code == 503 and "memory budget" in r.json()["detail"], r.text
        assert "Retry-After" in r.headers
        assert c.post("/set_image", content=wire.pack(image[:, :8]), headers={**h, **_image_meta()}).status_code == 200
    with TestClient(_app(max_memory=lease_bytes * 2, min_idle_s=0)) as c:
        first = _lease(c)  # idle, so the next image evicts it instead of being refused
        h = _lease(c)
        assert c.post("/reset_interactions", headers=first).status_code == 410
        assert c.post("/reset_interactions", headers=h).status_code == 200


def test_the_lease_is_checked_before_the_body_is_read():
    app = _app()
    received = []

    async def counting(scope, receive, send):
        async def counted():
            message = await receive()
            if message["type"] == "http.request":
                received.append(len(message.get("body", b"")))
            return message

        await app(scope, counted, send)

    with TestClient(counting) as c:
        body = wire.pack(np.random.default_rng(0).normal(size=(1, 32, 32, 32)).astype(np.float32))
        for path in ("/set_image", "/add_scribble_interaction", "/add_initial_seg_interaction"):
            r = c.post(path, content=body, headers={"X-Lease-Token": "fake", **_image_meta()})
            assert r.status_code == 410, r.text
        assert sum(received) == 0  # not a byte of the bodies was read


def test_a_lease_is_busy_while_its_image_arrives():
    import threading

    import httpx

    from volsam.serve.background import background_server

    image_bytes = wire.pack(np.zeros((1, *SHAPE), np.float32))
    app = _app(max_sessions=1, min_idle_s=0)
    started, go = threading.Event(), threading.Event()

    def slow_body():
        yield image_bytes[:100]
        started.set()
        go.wait(10)
        yield image_bytes[100:]

    with background_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        h = {"X-Lease-Token": c.post("/claim").json()["lease_token"]}
        result = {}
        t = threading.Thread(
            target=lambda: result.update(r=c.post("/set_image", content=slow_body(), headers={**h, **_image_meta()}))
        )
        t.start()
        try:
            assert started.wait(10)
            # The server marks the lease in use once it has the request's headers; under load that can come
            # after the client sent its first chunk, so wait for it rather than race it.
            deadline = time.monotonic() + 10
            while not any(e.active for e in app.state.store._live.values()) and time.monotonic() < deadline:
                time.sleep(0.02)
            r = c.post("/claim")  # used to evict the lease whose image was on its way
            assert r.status_code == 503 and "in use" in r.json()["detail"], r.text
        finally:
            go.set()
            t.join(20)
        assert result["r"].status_code == 200, result["r"].text


def test_uploads_share_the_budget_and_are_refused_before_decoding(model, nifti_bytes, monkeypatch):
    from volsam.serve.budget import load_bytes, session_bytes
    from volsam.serve.routes import sessions

    voxels = int(np.prod(base.SHAPE))
    reads = []
    real = sessions.read_image
    monkeypatch.setattr(sessions, "read_image", lambda *a, **kw: reads.append(a) or real(*a, **kw))
    budget = session_bytes(voxels) + load_bytes(voxels) + (1 << 20)  # room for one session, not two
    with TestClient(base._app(model, max_memory=budget)) as c:
        first = _new(c, nifti_bytes)
        r = base._upload(c, nifti_bytes)
        assert r.status_code == 503 and "memory budget" in r.json()["detail"] and "Retry-After" in r.headers
        assert len(reads) == 1  # the second image was never decoded
        assert c.get(f"/sessions/{first}").status_code == 200
        assert c.get("/health").json()["sessions"] == 1
