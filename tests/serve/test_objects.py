"""The object routes (volsam.serve.routes.objects): list, select, delete and paint, over HTTP."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.fakes import ThresholdModel
from volsam.serve.app import create_app
from volsam.session import Session


@pytest.fixture(scope="module")
def model() -> ThresholdModel:
    return ThresholdModel()


@pytest.fixture
def client(model):
    sessions: list[Session] = []

    def factory() -> Session:
        sessions.append(Session(model, "cpu"))
        return sessions[-1]

    image = np.zeros((24, 24, 24), np.float32)
    image[4:10, 4:10, 4:10] = 100.0  # two bright cubes
    image[14:20, 14:20, 14:20] = 100.0
    with TestClient(create_app(session_factory=factory, token="t")) as c:
        c.headers["Authorization"] = "Bearer t"
        from io import BytesIO

        import nibabel as nib

        buf = BytesIO(nib.Nifti1Image(image, np.eye(4)).to_bytes())
        sid = c.post("/sessions", files={"file": ("cubes.nii", buf.getvalue())}).json()["id"]
        yield c, sid, sessions[-1]


def test_list_select_delete_and_paint(client):
    c, sid, session = client
    assert c.post(f"/sessions/{sid}/clicks", json={"point": [6, 6, 6]}).status_code == 200
    assert c.post(f"/sessions/{sid}/objects").json()["object"] == 2
    assert c.post(f"/sessions/{sid}/clicks", json={"point": [16, 16, 16]}).status_code == 200
    listing = c.get(f"/sessions/{sid}/objects").json()
    assert listing["current"] == 2
    assert [(o["label"], o["current"]) for o in listing["objects"]] == [(1, False), (2, True)]
    counts = np.bincount(session.label_map.ravel(), minlength=3)
    assert [o["voxels"] for o in listing["objects"]] == [int(counts[1]), int(counts[2])]
    assert listing["objects"][0]["volume_ml"] == pytest.approx(counts[1] / 1000)

    # select object 1 and paint it: a voxel of neither cube joins object 1, object 2 is untouched
    r = c.post(f"/sessions/{sid}/objects/1/select").json()
    assert r["object"] == 1 and r["voxels"] == counts[1] and session.current_label == 1
    r = c.post(f"/sessions/{sid}/paint", json={"points": [[0, 0, 0], [0, 0, 1]]}).json()
    assert r["object"] == 1 and r["voxels"] == counts[1] + 2
    assert session.label_map[0, 0, 0] == 1 and (session.label_map == 2).sum() == counts[2]
    r = c.post(f"/sessions/{sid}/paint", json={"points": [[0, 0, 0]], "erase": True}).json()
    assert r["voxels"] == counts[1] + 1 and session.label_map[0, 0, 0] == 0

    # delete object 2: its voxels go, object 1 stays; undo brings it back
    r = c.delete(f"/sessions/{sid}/objects/2").json()
    assert (session.label_map == 2).sum() == 0 and (session.label_map == 1).sum() == counts[1] + 1
    assert c.post(f"/sessions/{sid}/undo").status_code == 200
    assert (session.label_map == 2).sum() == counts[2]
    del r


def test_bad_labels_and_points_are_400(client):
    c, sid, _ = client
    r = c.post(f"/sessions/{sid}/objects/7/select")
    assert r.status_code == 400 and "label" in r.json()["detail"]
    assert c.delete(f"/sessions/{sid}/objects/0").status_code == 400
    r = c.post(f"/sessions/{sid}/paint", json={"points": [[99, 0, 0]]})
    assert r.status_code == 400 and "outside" in r.json()["detail"]
    assert c.post(f"/sessions/{sid}/paint", json={"points": []}).status_code == 422
    assert c.get("/sessions/nope/objects").status_code == 404


def test_object_routes_need_the_token(client):
    c, sid, _ = client
    wrong = {"Authorization": "Bearer wrong"}
    for method, path in [("get", "objects"), ("post", "objects/1/select"), ("delete", "objects/1"), ("post", "paint")]:
        assert getattr(c, method)(f"/sessions/{sid}/{path}", headers=wrong).status_code == 401
