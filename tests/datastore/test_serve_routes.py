"""The server's datastore routes (volsam.serve.routes.datastore) with the shipped default model: the local
round trip with a server restart (resume from the saved label), conflicts between two sessions, resume;
the Orthanc round trip through the API (a SEG in Orthanc on the source slices, Dice 1.0 against the
session's label map); a PACS that is down (502, one line, no credentials); no datastore (404)."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from tests.datastore.conftest import free_port
from volsam.datastore.series import write_dicom_series
from volsam.serve import create_app

CLICK = [20, 28, 12]  # left thalamus in the head crop (voxels)


def _overlay(client: TestClient, sid: str) -> np.ndarray:
    r = client.get(f"/sessions/{sid}/overlay")
    assert r.status_code == 200
    shape = tuple(int(v) for v in r.headers["X-Shape"].split(","))
    return np.frombuffer(gzip.decompress(r.content), np.uint8).reshape(shape)


@pytest.fixture
def root(tmp_path, head_crop):
    root = tmp_path / "ds"
    root.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(head_crop.array), head_crop.affine), root / "head.nii.gz")
    return root


def test_local_round_trip_restart_conflict_resume(root):
    client = TestClient(create_app(datastore=root))
    r = client.get("/datastore/images")
    assert r.status_code == 200
    body = r.json()
    assert body["backend"] == "local" and body["location"] == str(root)
    assert [(i["id"], i["status"]) for i in body["images"]] == [("head", "none")]

    a = client.post("/datastore/images/head/session").json()
    b = client.post("/datastore/images/head/session", json={"restore": True}).json()  # a second person
    assert a["version"] is None and a["objects"] == 1 and a["shape"] == [64, 64, 24]
    assert client.post(f"/sessions/{a['id']}/clicks", json={"point": CLICK}).json()["voxels"] > 0
    saved = client.post(f"/sessions/{a['id']}/datastore/save").json()
    assert saved == {"image_id": "head", "kind": "final", "version": 1, "pushed": False, "remote": {}}
    labels_a = _overlay(client, a["id"])
    assert client.get(f"/sessions/{a['id']}/datastore").json() == {
        "image_id": "head", "version": 1, "latest": {"final": 1}}

    client.post(f"/sessions/{b['id']}/clicks", json={"point": [40, 20, 12]})
    r = client.post(f"/sessions/{b['id']}/datastore/save")
    assert r.status_code == 409 and r.headers["X-Latest-Version"] == "1"
    assert r.json()["detail"].startswith("image head: its final label is at version 1 but this save started from no")
    r = client.post(f"/sessions/{b['id']}/datastore/resume")
    assert r.json() == {"image_id": "head", "version": 1, "objects": 1}
    assert np.array_equal(_overlay(client, b["id"]), labels_a)  # B now continues from A's save
    assert client.post(f"/sessions/{b['id']}/datastore/save").json()["version"] == 2

    # A restart: a new server on the same folder reopens the image where it was left.
    client = TestClient(create_app(datastore=root))
    (img,) = client.get("/datastore/images").json()["images"]
    assert img["status"] == "final" and img["labels"] == {"final": 2}
    c = client.post("/datastore/images/head/session").json()
    assert c["version"] == 2 and c["objects"] == 1
    assert np.array_equal(_overlay(client, c["id"]), labels_a)
    r = client.post(f"/sessions/{c['id']}/clicks", json={"point": [CLICK[0] + 3, CLICK[1], CLICK[2]]})
    assert r.status_code == 200
    assert client.post(f"/sessions/{c['id']}/datastore/save", json={"kind": "final"}).json()["version"] == 3
    assert client.post(f"/sessions/{c['id']}/datastore/save", json={"kind": "original"}).json()["version"] == 1
    assert sorted(p.name for p in (root / "labels" / "final").iterdir()) == [
        "head.v1.nii.gz", "head.v2.nii.gz", "head.v3.nii.gz"]


def test_errors_without_datastore_and_unknown_things(root):
    client = TestClient(create_app())
    r = client.get("/datastore/images")
    assert r.status_code == 404 and "volsam serve --datastore" in r.json()["detail"]
    client = TestClient(create_app(datastore=root))
    r = client.post("/datastore/images/nope/session")
    assert r.status_code == 404 and r.json()["detail"] == f"no image 'nope' in datastore {root}"
    sid = client.post("/sessions/demo").json()["id"]  # the ordinary routes keep working beside it
    r = client.post(f"/sessions/{sid}/datastore/save")
    assert r.status_code == 404 and "was not opened from the datastore" in r.json()["detail"]
    c = client.post("/datastore/images/head/session").json()
    r = client.post(f"/sessions/{c['id']}/datastore/resume")
    assert r.status_code == 404 and r.json()["detail"] == "image head has no saved final label to resume from"


def test_orthanc_round_trip_through_the_api(orthanc, tmp_path, head_crop, monkeypatch):
    hd = pytest.importorskip("highdicom")
    from tests.datastore.test_dicomweb import _seg_instances

    files = write_dicom_series(head_crop, tmp_path / "mr", modality="MR")
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    monkeypatch.setenv("VOLSAM_DICOMWEB_USER", orthanc.user)
    monkeypatch.setenv("VOLSAM_DICOMWEB_PASSWORD", orthanc.password)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the default cache folder
    app = create_app(datastore=orthanc.dicomweb)
    app.state.server.datastore.add_image(tmp_path / "mr")
    client = TestClient(app)
    body = client.get("/datastore/images").json()
    assert body["backend"] == "dicomweb" and body["location"] == orthanc.dicomweb
    assert {i["id"]: i["status"] for i in body["images"]}[uid] == "none"
    s = client.post(f"/datastore/images/{uid}/session").json()
    assert s["version"] is None
    client.post(f"/sessions/{s['id']}/clicks", json={"point": CLICK})
    saved = client.post(f"/sessions/{s['id']}/datastore/save").json()
    assert saved["version"] == 1 and saved["pushed"] and saved["remote"]["url"] == orthanc.dicomweb
    lm = _overlay(client, s["id"])
    (seg,) = _seg_instances(orthanc, uid)
    assert seg.SOPInstanceUID == saved["remote"]["seg_sop_instance_uid"]
    seg = hd.seg.Segmentation.from_dataset(seg)
    cache = next((tmp_path / "xdg" / "volsam" / "dicomweb").iterdir())
    vol_files = sorted((cache / "series" / uid).iterdir())
    assert len(vol_files) == len(files)
    by_depth = sorted(vol_files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in by_depth]
    frames = np.asarray(seg.get_pixels_by_source_instance(uids, combine_segments=True)).transpose(2, 1, 0)
    got, want = frames > 0, lm > 0
    assert 2 * np.count_nonzero(got & want) / (np.count_nonzero(got) + np.count_nonzero(want)) == 1.0
    listed = {i["id"]: i for i in client.get("/datastore/images").json()["images"]}
    assert listed[uid]["status"] == "final" and listed[uid]["meta"]["remote_segs"] == 1
    assert seg.SeriesInstanceUID not in listed


def test_pacs_down_is_a_502_without_credentials(tmp_path):
    from volsam.datastore.dicomweb import DicomwebDatastore

    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    ds = DicomwebDatastore(url, user="alice", password="pw-Zq81x", cache_dir=tmp_path, retries=0)
    client = TestClient(create_app(datastore=ds))
    r = client.get("/datastore/images")
    assert r.status_code == 502
    want = f"DICOMweb server {url} unreachable (connection refused) during series search (QIDO-RS)"
    assert r.json()["detail"] == want
    r = client.post("/datastore/images/1.2.3/session")
    assert r.status_code == 502 and "pw-Zq81x" not in r.text and "alice" not in r.text
