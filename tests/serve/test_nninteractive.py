"""nnInteractive's remote protocol: the real ``nninteractive-client`` against ``volsam serve`` on loopback.

With the fake model that segments bright voxels the expected masks are known exactly; with a registered
mini model (random weights) the checks are the protocol's own invariants (the client's buffer is the
server's mask after every answer; undo restores it exactly)."""

from __future__ import annotations

import json
import struct

import nnInteractive.inference.remote as remote  # nninteractive-client, the plugins' own client (test extra)
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.fakes import ThresholdModel
from volsam.registry import build_model
from volsam.serve import create_app, wire
from volsam.serve.background import background_server
from volsam.serve.nninteractive import weights_licence
from volsam.session import Session

SHAPE = (60, 64, 50)
CENTRE = (30, 32, 25)
SPACING = [1.5, 1.5, 1.5]  # the session's 1.5 mm windows align with the grid: masks are exact
TOKEN = "s3cret"
OCTET = {"Content-Type": "application/octet-stream"}  # what the client sends with packed arrays


@pytest.fixture(scope="module")
def ball() -> np.ndarray:
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    return ((ii - CENTRE[0]) ** 2 + (jj - CENTRE[1]) ** 2 + (kk - CENTRE[2]) ** 2) <= 12**2


@pytest.fixture(scope="module")
def image(ball) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (10 + 100 * ball + rng.normal(0, 1, SHAPE)).astype(np.float32)[None]  # [c, x, y, z]


def _server_mask(app, client) -> np.ndarray:
    with app.state.store.use(client._lease_token) as s:
        return s.mask


def test_real_client_runs_a_whole_interaction_with_exact_masks(image, ball):
    model = ThresholdModel()
    app = create_app(session_factory=lambda: Session(model, "cpu"), token=TOKEN)
    with background_server(app) as url:
        client = remote.nnInteractiveRemoteInferenceSession(url, api_key=TOKEN)
        assert client.ping()
        assert client.supports_undo and client.supports_initial_label
        assert client.supported_interactions == {
            "points": True,
            "bbox2d": True,
            "bbox3d": True,
            "scribble": True,
            "lasso": True,
        }
        client.set_image(image, {"spacing": np.array(SPACING)})
        assert client.original_image_shape == image.shape
        buf = np.zeros(SHAPE, dtype=np.uint8)
        client.set_target_buffer(buf)

        # Point +: the bright ball, sent as the box of voxels that changed.
        box = client.add_point_interaction(list(CENTRE), include_interaction=True)
        assert np.array_equal(buf, ball)
        assert box == [[18, 43], [20, 45], [13, 38]]  # the ball's bounding box: only what changed
        # Point -: reaches the model as a negative click.
        client.add_point_interaction([30, 32, 30], include_interaction=False)
        assert model.calls[-1]["labels"][0, -1].item() == 0
        assert np.array_equal(buf, _server_mask(app, client))

        # A box drawn on one slice gives the 3D object, not a one-slice slab.
        client.reset_interactions()
        assert not buf.any()
        client.add_bbox_interaction([[18, 43], [20, 45], [25, 26]], include_interaction=True)
        assert np.unique(np.argwhere(buf)[:, 2]).size == 25
        assert np.array_equal(buf, ball)

        # Initial segmentation: kept as the mask; a scribble then refines it; undo restores it exactly.
        initial = np.zeros(SHAPE, dtype=np.uint8)
        initial[2:8, 3:9, 4:10] = 1
        client.add_initial_seg_interaction(initial)
        assert np.array_equal(buf, initial) and np.array_equal(_server_mask(app, client), initial)
        stroke = np.zeros(SHAPE, dtype=np.uint8)
        stroke[26:35, 32, 25] = 1
        client.add_scribble_interaction(stroke, include_interaction=True)
        assert np.array_equal(buf, ball)  # the window covers the volume: the model's mask replaces it
        assert client.undo() is True
        assert np.array_equal(buf, initial)
        assert np.array_equal(_server_mask(app, client), initial)

        # Lasso on one slice: clicks inside it.
        lasso = np.zeros(SHAPE, dtype=np.uint8)
        lasso[26:35, 28:37, 25] = 1
        client.add_lasso_interaction(lasso, include_interaction=True)
        assert np.array_equal(buf, ball)
        assert np.round(model.calls[-1]["coords"][0, -1].numpy()).tolist() == [64, 64, 64]  # its deepest voxel

        client.reset_interactions()
        assert not _server_mask(app, client).any()
        token = client._lease_token
        client.close()
        assert token not in {sid for sid in app.state.store._live}


def test_real_client_with_a_registered_model_keeps_buffer_and_server_in_step(image):
    torch.manual_seed(0)
    app = create_app(model=build_model("fastsam3d_mini"), device="cpu", token=TOKEN)  # random weights
    with background_server(app) as url:
        with remote.nnInteractiveRemoteInferenceSession(url, api_key=TOKEN) as client:
            assert client.license == "!!MISSING!!"  # a model instance: its weights' licence is unknown
            client.set_image(image, {"spacing": SPACING})
            buf = np.zeros(SHAPE, dtype=np.uint8)
            client.set_target_buffer(buf)
            client.add_point_interaction(list(CENTRE), include_interaction=True)
            client.add_point_interaction([20, 20, 20], include_interaction=False)
            client.add_bbox_interaction([[18, 43], [20, 45], [25, 26]], include_interaction=True)
            assert np.array_equal(buf, _server_mask(app, client))
            with app.state.store.use(client._lease_token) as s:  # the slice box restricts in-plane only
                assert s._current.box[0][2] == -np.inf and s._current.box[1][2] == np.inf
            before = buf.copy()
            stroke = np.zeros(SHAPE, dtype=np.uint8)
            stroke[10:50, 32, 25] = 1
            client.add_scribble_interaction(stroke, include_interaction=False)
            assert np.array_equal(buf, _server_mask(app, client))
            assert not np.array_equal(buf, before)  # so that undo has something to restore
            assert client.undo() is True
            assert np.array_equal(buf, before)
            lasso = np.zeros(SHAPE, dtype=np.uint8)
            lasso[26:35, 28:37, 25] = 1
            client.add_lasso_interaction(lasso, include_interaction=True, run_prediction=False)
            client._predict()  # the deferred answer
            assert np.array_equal(buf, _server_mask(app, client))
            initial = np.zeros(SHAPE, dtype=np.uint8)
            initial[5:20, 5:20, 5:20] = 1
            client.add_initial_seg_interaction(initial)
            assert np.array_equal(buf, initial) and np.array_equal(_server_mask(app, client), initial)


# --------------------------------------------------------------------------- bad input, limits, auth


@pytest.fixture()
def http():
    model = ThresholdModel()
    app = create_app(session_factory=lambda: Session(model, "cpu"), token=TOKEN, max_upload_mb=1)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def _lease(http: TestClient, image: np.ndarray | None = None) -> dict[str, str]:
    r = http.post("/claim")
    assert r.status_code == 200, r.text
    h = {"X-Lease-Token": r.json()["lease_token"]}
    if image is not None:
        meta = {"X-Meta": json.dumps({"image_properties": {"spacing": SPACING}}), **OCTET}
        assert http.post("/set_image", content=wire.pack(image), headers={**h, **meta}).status_code == 200
        r = http.post("/set_target_buffer", json={"shape": list(image.shape[1:]), "dtype": "uint8"}, headers=h)
        assert r.status_code == 200, r.text
    return h


def test_the_licence_names_the_served_weights():
    assert weights_licence(None).startswith("Apache-2.0")
    assert weights_licence("fastsam3d_mini") == "none: fastsam3d_mini is randomly initialised (no trained weights)"
    assert weights_licence("/models/custom.pth") == "!!MISSING!!"


def test_token_is_required_but_healthz_is_open(http):
    assert http.get("/healthz", headers={"Authorization": ""}).status_code == 200
    for auth in ("", "Bearer wrong"):
        assert http.post("/claim", headers={"Authorization": auth}).status_code == 401
        assert http.get("/capabilities", headers={"Authorization": auth}).status_code == 401


def test_unknown_or_missing_lease_is_410(http):
    assert http.post("/reset_interactions").status_code == 410
    assert http.post("/reset_interactions", headers={"X-Lease-Token": "nope"}).status_code == 410
    assert http.post("/heartbeat", headers={"X-Lease-Token": "nope"}).status_code == 410
    h = _lease(http)
    assert http.post("/heartbeat", headers=h).json()["remaining_seconds"] > 0
    assert http.post("/release", headers=h).json() == {"released": True}
    assert http.post("/release", headers=h).json() == {"released": True}  # idempotent
    assert http.post("/reset_interactions", headers=h).status_code == 410


def test_arrays_over_the_voxel_limit_are_refused_from_the_header(http):
    h = _lease(http)
    name = b"float32"
    # Declares 10^15 voxels in a few bytes: refused before anything is allocated.
    hostile = struct.pack(f"<4sBBBB{len(name)}s", b"NNIA", 1, 1, 4, len(name), name)
    hostile += struct.pack("<4q", 1, 10**5, 10**5, 10**5) + struct.pack("<I", 0)
    r = http.post("/set_image", content=hostile, headers={**h, **OCTET})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]


def test_bodies_over_the_upload_limit_are_413(http):
    h = _lease(http)
    r = http.post("/set_image", content=b"\0" * (2 << 20), headers={**h, **OCTET})
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("path", "kwargs", "says"),
    [
        ("/set_image", {"content": b"garbage!"}, "NNIA"),
        ("/set_image", {"content": wire.pack(np.zeros((2, 4, 4, 4), np.float32))}, "one channel"),
        ("/set_image", {"content": wire.pack(np.zeros((4, 4, 4), np.float32))}, "4-dimensional"),
        ("/set_image", {"content": wire.pack(np.full((1, 4, 4, 4), np.nan, np.float32))}, "NaN"),
        ("/set_image", {"content": wire.pack(np.zeros((1, 4, 4, 4), bool))}, "dtype"),
        ("/set_image", {"content": wire.pack(np.zeros((1, 4, 4, 4), np.float32)), "headers": {"X-Meta": "{"}}, "JSON"),
        ("/add_point_interaction", {"json": {"coordinates": [1, 2, 3], "include_interaction": True}}, "set_image"),
        ("/set_target_buffer", {"json": {"shape": [4, 4, 4], "dtype": "uint8"}}, "set_image"),
        ("/set_target_buffer", {"json": {"shape": [4, 4, 4], "dtype": "object"}}, "dtype"),
    ],
)
def test_bad_input_before_an_image_is_400_with_a_reason(http, path, kwargs, says):
    h = {**_lease(http), **(OCTET if "content" in kwargs else {}), **kwargs.pop("headers", {})}
    r = http.post(path, headers=h, **kwargs)
    assert r.status_code == 400, r.text
    assert says in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "kwargs", "says"),
    [
        ("/add_point_interaction", {"json": {"coordinates": [1, 2]}}, "coordinates"),
        ("/add_point_interaction", {"json": {"coordinates": [900, 2, 3]}}, "outside the volume"),
        ("/add_point_interaction", {"json": {"coordinates": [1, 2, 3], "include_interaction": "yes"}}, "true or false"),
        ("/add_bbox_interaction", {"json": {"bbox_coords": [[5, 3], [1, 2], [1, 2]]}}, "half-open"),
        (
            "/add_bbox_interaction",
            {"json": {"bbox_coords": [[10, 20], [10, 20], [10, 11]], "include_interaction": False}},
            "cannot take a negative box",
        ),
        ("/add_scribble_interaction", {"content": wire.pack(np.zeros((4, 4, 4), np.uint8))}, "shape"),
        ("/add_scribble_interaction", {"content": wire.pack(np.zeros(SHAPE, np.uint8))}, "no voxel"),
        ("/add_lasso_interaction", {"content": wire.pack(np.zeros(SHAPE, np.complex64))}, "dtype"),
        ("/add_initial_seg_interaction", {"content": b"NNIA\x01\x01"}, "too short"),
        ("/set_target_buffer", {"json": {"shape": [4, 4, 4], "dtype": "uint8"}}, "shape"),
    ],
)
def test_bad_interactions_are_400_with_a_reason(http, image, path, kwargs, says):
    h = {**_lease(http, image), **(OCTET if "content" in kwargs else {})}
    r = http.post(path, headers=h, **kwargs)
    assert r.status_code == 400, r.text
    assert says in r.json()["detail"] and "\n" not in r.json()["detail"]


def test_undo_with_nothing_to_undo_reports_no_change(http, image):
    h = _lease(http, image)
    r = http.post("/undo", headers=h, json={})
    assert r.status_code == 200 and json.loads(r.headers["X-Meta"]) == {"ran_prediction": False, "bbox": None}


def test_leases_share_the_rest_api_eviction(image):
    model = ThresholdModel()
    app = create_app(session_factory=lambda: Session(model, "cpu"), token=TOKEN, max_sessions=1, min_idle_s=0)
    with background_server(app) as url:
        first = remote.nnInteractiveRemoteInferenceSession(url, api_key=TOKEN)
        second = remote.nnInteractiveRemoteInferenceSession(url, api_key=TOKEN)  # evicts the idle first
        with pytest.raises(remote.SessionExpiredError, match="expired"):
            first.set_image(image, {"spacing": SPACING})
        second.set_image(image, {"spacing": SPACING})
        second.close()
        first.close()


DEEP = "[" * 20000 + "]" * 20000  # 40 KB of nesting: json raises RecursionError, which used to be a 500
HUGE = 10**400  # a 400-digit integer: float() of it raised OverflowError, a 500


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/add_point_interaction", {"coordinates": [HUGE, 1, 1]}, "coordinates"),
        ("/add_bbox_interaction", {"bbox_coords": [[1, HUGE], [1, 2], [1, 2]]}, "bbox_coords"),
        ("/add_bbox_interaction", {"bbox_coords": [[-HUGE, 3], [1, 2], [1, 2]]}, "bbox_coords"),
        ("/add_point_interaction", {"coordinates": [1, 1, 1], "include_interaction": HUGE}, "true or false"),
        ("/set_target_buffer", {"shape": list(SHAPE), "dtype": ["uint8"]}, "dtype"),
        ("/set_target_buffer", {"shape": list(SHAPE), "dtype": {"name": "uint8"}}, "dtype"),
        ("/add_point_interaction", DEEP, "nested"),
        ("/set_target_buffer", DEEP, "nested"),
        ("/set_do_autozoom", DEEP, "nested"),
    ],
)
def test_hostile_json_is_400_not_500(http, image, path, body, says):
    h = _lease(http, image)
    content = body if isinstance(body, str) else json.dumps(body)
    r = http.post(path, content=content, headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert says in r.json()["detail"] and len(r.json()["detail"]) < 400


@pytest.mark.parametrize(
    "meta",
    [DEEP[:8000] + DEEP[-8000:], json.dumps({"image_properties": {"spacing": [HUGE, 1, 1]}})],
)
def test_hostile_meta_header_is_400_not_500(http, image, meta):
    h = _lease(http)
    r = http.post("/set_image", content=wire.pack(image), headers={**h, **OCTET, "X-Meta": meta})
    assert r.status_code == 400, r.text
