"""What one client may cost ``volsam serve`` (issue 30, items 3-5): prompt masks proportional to what they
mark, a memory budget across sessions, and eviction that spares busy and recently active sessions. Each
test fails on the code before the fix it names."""

from __future__ import annotations

import json
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
