"""REST API tests with a fake model that segments bright voxels, so results are known exactly."""

from __future__ import annotations

import gzip
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from tests.fakes import ThresholdModel
from volsam.eval.metrics import dice
from volsam.io import read_image
from volsam.serve import create_app
from volsam.session import Session

SHAPE = (48, 40, 32)
BOX = (slice(10, 30), slice(12, 28), slice(8, 24))  # bright box, 20 x 16 x 16 voxels
CENTRE = [20, 20, 16]
# 1.5 mm voxels: the session's 1.5 mm windows align with the grid, so the mask is exactly the box.
AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])
AFFINE[:3, 3] = [-30.0, 12.0, 4.5]


@pytest.fixture(scope="module")
def model() -> ThresholdModel:
    return ThresholdModel()


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    t = np.zeros(SHAPE, dtype=bool)
    t[BOX] = True
    return t


@pytest.fixture(scope="module")
def nifti_bytes(tmp_path_factory, truth) -> bytes:
    img = (10 + 100 * truth + np.random.default_rng(0).normal(0, 1, SHAPE)).astype(np.float32)
    path = tmp_path_factory.mktemp("img") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(img, AFFINE), path)
    return path.read_bytes()


@pytest.fixture()
def data_root(tmp_path, nifti_bytes) -> Path:
    root = tmp_path / "data"
    (root / "case01").mkdir(parents=True)
    (root / "case01" / "ct.nii.gz").write_bytes(nifti_bytes)
    (tmp_path / "secret.nii.gz").write_bytes(nifti_bytes)
    return root


def _app(model, **kw):
    return create_app(session_factory=lambda: Session(model, "cpu"), **kw)


@pytest.fixture()
def client(model, data_root):
    with TestClient(_app(model, data_root=data_root)) as c:
        yield c


def _upload(client: TestClient, data: bytes, name: str = "ct.nii.gz", **kw):
    return client.post("/sessions", files={"file": (name, io.BytesIO(data), "application/octet-stream")}, **kw)


def _new(client: TestClient, nifti_bytes: bytes) -> str:
    r = _upload(client, nifti_bytes)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_create_from_upload_and_path_give_the_same_geometry(client, nifti_bytes):
    up = _upload(client, nifti_bytes)
    by_path = client.post("/sessions", json={"path": "case01/ct.nii.gz"})
    assert up.status_code == by_path.status_code == 201, (up.text, by_path.text)
    a, b = up.json(), by_path.json()
    assert a["id"] != b["id"]
    for info in (a, b):
        assert info["shape"] == list(SHAPE)
        assert np.allclose(info["spacing"], 1.5)
        assert np.allclose(info["affine"], AFFINE)


def test_click_segments_the_bright_box(client, nifti_bytes, truth):
    sid = _new(client, nifti_bytes)
    r = client.post(f"/sessions/{sid}/clicks", json={"point": CENTRE, "positive": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["voxels"] == truth.sum() and body["object"] == 1 and body["clicks"] == 1
    assert body["latency_ms"] > 0
    ov = client.get(f"/sessions/{sid}/overlay")
    lm = np.frombuffer(gzip.decompress(ov.content), dtype=ov.headers["X-Dtype"])
    lm = lm.reshape([int(v) for v in ov.headers["X-Shape"].split(",")])
    assert lm.shape == SHAPE and ov.headers["X-Order"] == "C"
    assert dice(lm == 1, truth) == pytest.approx(1.0)


def test_world_click_and_box(client, nifti_bytes, truth):
    sid = _new(client, nifti_bytes)
    world = (AFFINE @ [*CENTRE, 1])[:3].tolist()
    r = client.post(f"/sessions/{sid}/clicks", json={"point": world, "world": True})
    assert r.json()["voxels"] == truth.sum()
    client.post(f"/sessions/{sid}/reset")
    r = client.post(f"/sessions/{sid}/box", json={"lo": [15, 15, 10], "hi": [25, 25, 20]})
    assert r.status_code == 200, r.text
    assert 0 < r.json()["voxels"] < truth.sum()


def test_undo_reset_and_objects(client, nifti_bytes, truth):
    sid = _new(client, nifti_bytes)
    assert client.post(f"/sessions/{sid}/undo").status_code == 400  # nothing to undo
    client.post(f"/sessions/{sid}/clicks", json={"point": CENTRE})
    r = client.post(f"/sessions/{sid}/objects")
    assert r.json() == {**r.json(), "object": 2, "voxels": 0, "clicks": 0}
    # The second object may not take voxels of the first (default overlap policy).
    r = client.post(f"/sessions/{sid}/clicks", json={"point": CENTRE})
    assert r.json()["object"] == 2 and r.json()["voxels"] == 0
    assert client.get(f"/sessions/{sid}").json()["objects"] == 2
    client.post(f"/sessions/{sid}/undo")
    r = client.post(f"/sessions/{sid}/undo")
    assert r.json()["object"] == 1 and r.json()["voxels"] == truth.sum()
    r = client.post(f"/sessions/{sid}/reset")
    assert r.json()["voxels"] == 0 and r.json()["clicks"] == 0
    assert client.get(f"/sessions/{sid}").json()["objects"] == 1


@pytest.mark.parametrize("fmt", ["nii.gz", "nrrd", "mha"])
def test_labels_download_round_trips(client, nifti_bytes, truth, tmp_path, fmt):
    sid = _new(client, nifti_bytes)
    client.post(f"/sessions/{sid}/clicks", json={"point": CENTRE})
    r = client.get(f"/sessions/{sid}/labels", params={"format": fmt})
    assert r.status_code == 200, r.text
    assert f"labels.{fmt}" in r.headers["content-disposition"]
    path = tmp_path / f"labels.{fmt}"
    path.write_bytes(r.content)
    vol = read_image(path, dtype=None)
    assert vol.shape == SHAPE
    assert np.allclose(vol.affine, AFFINE, atol=1e-5)
    assert np.array_equal(vol.array > 0, truth)


def test_labels_bad_format_is_422(client, nifti_bytes):
    sid = _new(client, nifti_bytes)
    assert client.get(f"/sessions/{sid}/labels", params={"format": "png"}).status_code == 422
    r = client.get(f"/sessions/{sid}/labels", params={"format": "dcm"})  # DICOM-SEG needs a DICOM series
    assert r.status_code == 400 and "DICOM series" in r.json()["detail"]
    assert "labels.nii.gz" in client.get(f"/sessions/{sid}/labels").headers["content-disposition"]


@pytest.mark.parametrize(
    "path",
    ["../secret.nii.gz", "case01/../../secret.nii.gz", "/etc/passwd", "\\\\server\\x.nii.gz", "C:\\x.nii.gz"],
)
def test_paths_outside_the_data_root_are_forbidden(client, path):
    r = client.post("/sessions", json={"path": path})
    assert r.status_code == 403, r.text


def test_symlink_out_of_the_data_root_is_forbidden(client, data_root):
    (data_root / "link.nii.gz").symlink_to(data_root.parent / "secret.nii.gz")
    (data_root / "dirlink").symlink_to(data_root.parent, target_is_directory=True)
    assert client.post("/sessions", json={"path": "link.nii.gz"}).status_code == 403
    assert client.post("/sessions", json={"path": "dirlink/secret.nii.gz"}).status_code == 403


def test_symlink_inside_the_data_root_is_allowed(client, data_root):
    (data_root / "alias.nii.gz").symlink_to(data_root / "case01" / "ct.nii.gz")
    assert client.post("/sessions", json={"path": "alias.nii.gz"}).status_code == 201


def test_path_creation_needs_a_data_root(model):
    with TestClient(_app(model)) as c:
        r = c.post("/sessions", json={"path": "case01/ct.nii.gz"})
    assert r.status_code == 403 and "--data-root" in r.json()["detail"]


def test_missing_and_bad_files(client, data_root):
    assert client.post("/sessions", json={"path": "nope.nii.gz"}).status_code == 404
    (data_root / "notes.txt").write_text("hi")
    assert client.post("/sessions", json={"path": "notes.txt"}).status_code == 415
    (data_root / "broken.nii.gz").write_bytes(b"not an image")
    r = client.post("/sessions", json={"path": "broken.nii.gz"})
    assert r.status_code == 400 and str(data_root) not in r.json()["detail"]
    assert _upload(client, b"junk", name="x.png").status_code == 415
    assert _upload(client, b"junk", name="x.nii").status_code == 400


def test_overlay_in_nifti_order_and_image_download(client, nifti_bytes, truth, tmp_path):
    sid = _new(client, nifti_bytes)
    client.post(f"/sessions/{sid}/clicks", json={"point": CENTRE})
    ov = client.get(f"/sessions/{sid}/overlay", params={"order": "F"})
    assert ov.headers["X-Order"] == "F"
    lm = np.frombuffer(gzip.decompress(ov.content), dtype=ov.headers["X-Dtype"]).reshape(SHAPE, order="F")
    assert dice(lm == 1, truth) == pytest.approx(1.0)
    assert client.get(f"/sessions/{sid}/overlay", params={"order": "Z"}).status_code == 422
    img = client.get(f"/sessions/{sid}/image")
    assert img.status_code == 200
    (tmp_path / "img.nii.gz").write_bytes(img.content)
    got = nib.load(tmp_path / "img.nii.gz")
    assert np.allclose(got.affine, AFFINE)
    original = nib.load(_save(tmp_path, nifti_bytes))
    assert np.allclose(got.get_fdata(), original.get_fdata(), atol=1e-4)


def _save(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "orig.nii.gz"
    p.write_bytes(data)
    return p


def test_demo_session_opens_the_bundled_volume(client):
    from volsam.demo import DEMO_IMAGE

    r = client.post("/sessions/demo")
    assert r.status_code == 201, r.text
    assert r.json()["shape"] == list(nib.load(DEMO_IMAGE).shape)


def test_viewer_page_is_served_without_the_token(model):
    from volsam.serve.app import STATIC_DIR

    if not (STATIC_DIR / "vendor" / "niivue.umd.js").is_file():
        pytest.skip("viewer not built: scripts/build_viewer.sh")
    with TestClient(_app(model, token="s3cret")) as c:
        page = c.get("/")
        assert page.status_code == 200 and "niivue.umd.js" in page.text
        assert c.get("/static/viewer.js").status_code == 200
        assert c.get("/static/vendor/niivue.umd.js").status_code == 200
        assert c.post("/sessions/demo").status_code == 401  # the API still needs it


def test_token_is_required_when_set(model, nifti_bytes):
    with TestClient(_app(model, token="s3cret")) as c:
        assert _upload(c, nifti_bytes).status_code == 401
        assert c.get("/health").status_code == 401
        bad = {"Authorization": "Bearer wrong"}
        assert c.get("/health", headers=bad).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert c.get("/health", headers=good).status_code == 200
        r = _upload(c, nifti_bytes, headers=good)
        assert r.status_code == 201
        sid = r.json()["id"]
        assert c.post(f"/sessions/{sid}/clicks", json={"point": CENTRE}).status_code == 401
        assert c.post(f"/sessions/{sid}/clicks", json={"point": CENTRE}, headers=good).status_code == 200


def test_unknown_session_is_404_and_deleted_too(client, nifti_bytes):
    r = client.post("/sessions/nope/clicks", json={"point": CENTRE})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    sid = _new(client, nifti_bytes)
    assert client.delete(f"/sessions/{sid}").status_code == 204
    assert client.get(f"/sessions/{sid}").status_code == 404


def test_click_outside_the_volume_is_400(client, nifti_bytes):
    sid = _new(client, nifti_bytes)
    r = client.post(f"/sessions/{sid}/clicks", json={"point": [100, 0, 0]})
    assert r.status_code == 400 and "outside the volume" in r.json()["detail"]
    assert client.post(f"/sessions/{sid}/clicks", json={"point": [1, 2]}).status_code == 422


def test_idle_session_expires_with_410(model, nifti_bytes):
    with TestClient(_app(model, idle_timeout_s=0.3)) as c:
        sid = _new(c, nifti_bytes)
        assert c.get(f"/sessions/{sid}").status_code == 200
        time.sleep(0.4)
        r = c.get(f"/sessions/{sid}")
    assert r.status_code == 410 and "expired after" in r.json()["detail"] and "idle" in r.json()["detail"]


def test_least_recently_used_session_is_evicted(model, nifti_bytes):
    with TestClient(_app(model, max_sessions=2, min_idle_s=0)) as c:  # every idle session may be evicted
        a, b = _new(c, nifti_bytes), _new(c, nifti_bytes)
        assert c.get(f"/sessions/{a}").status_code == 200  # b is now the least recently used
        new = _new(c, nifti_bytes)
        r = c.get(f"/sessions/{b}")
        assert r.status_code == 410 and "evicted" in r.json()["detail"]
        assert c.get(f"/sessions/{a}").status_code == 200
        assert c.get(f"/sessions/{new}").status_code == 200
        assert c.get("/health").json()["sessions"] == 2


def test_upload_over_the_limit_is_413(model, nifti_bytes):
    with TestClient(_app(model, max_upload_mb=1 / 1024)) as c:  # 1 KiB
        assert len(nifti_bytes) > 1024
        assert _upload(c, nifti_bytes).status_code == 413


class _CheckedSession(Session):
    """Records how many clicks run at once."""

    running = 0
    peak = 0
    guard = threading.Lock()

    def add_click(self, *args, **kwargs):
        with self.guard:
            type(self).running += 1
            type(self).peak = max(type(self).peak, type(self).running)
        try:
            time.sleep(0.02)  # widen the window for overlaps
            return super().add_click(*args, **kwargs)
        finally:
            with self.guard:
                type(self).running -= 1


def test_concurrent_clicks_on_one_session_are_serialised(model, nifti_bytes, truth):
    app = create_app(session_factory=lambda: _CheckedSession(model, "cpu"))
    with TestClient(app) as c:
        sid = _new(c, nifti_bytes)
        with ThreadPoolExecutor(8) as pool:
            rs = list(pool.map(lambda _: c.post(f"/sessions/{sid}/clicks", json={"point": CENTRE}), range(8)))
        assert [r.status_code for r in rs] == [200] * 8
        assert sorted(r.json()["clicks"] for r in rs) == list(range(1, 9))
        assert c.get(f"/sessions/{sid}").json()["clicks"] == 8
    assert _CheckedSession.peak == 1


def test_sessions_are_isolated(client, nifti_bytes, truth):
    a, b = _new(client, nifti_bytes), _new(client, nifti_bytes)
    client.post(f"/sessions/{a}/clicks", json={"point": CENTRE})
    assert client.get(f"/sessions/{b}").json()["clicks"] == 0
    assert not gzip.decompress(client.get(f"/sessions/{b}/overlay").content).strip(b"\0")
    assert client.get(f"/sessions/{a}").json()["clicks"] == 1


def test_model_argument_is_loaded_once_and_shared(model, nifti_bytes):
    with TestClient(create_app(model, device="cpu")) as c:
        a, b = _new(c, nifti_bytes), _new(c, nifti_bytes)
        for sid in (a, b):
            assert c.post(f"/sessions/{sid}/clicks", json={"point": CENTRE}).status_code == 200
    assert len(model.calls) >= 2


def test_openapi_lists_the_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/sessions", "/sessions/{sid}/clicks", "/sessions/{sid}/labels", "/sessions/{sid}/overlay"):
        assert p in paths
    assert "multipart/form-data" in paths["/sessions"]["post"]["requestBody"]["content"]


def test_cli_serve_runs_uvicorn(monkeypatch, tmp_path):
    import uvicorn

    from volsam.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app, host=host, port=port, **kw))
    monkeypatch.setenv("VOLSAM_TOKEN", "envtok")
    argv = ["serve", "--model", "fastsam3d_mini", "--random-weights", "--data-root", str(tmp_path), "--port", "8123"]
    assert main(argv) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert seen["timeout_keep_alive"] == 5 and seen["http"].__name__ == "HeaderTimeoutProtocol"
    with TestClient(seen["app"]) as c:
        assert c.get("/health").status_code == 401
        assert c.get("/health", headers={"Authorization": "Bearer envtok"}).json()["max_sessions"] == 8


@pytest.mark.parametrize(
    ("name", "header"),
    [
        (
            "x.mha",
            b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\nElementDataFile = /etc/passwd\n",
        ),
        ("x.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: /etc/passwd\n\n"),
    ],
)
def test_headers_naming_outside_data_are_refused(client, data_root, name, header):
    r = _upload(client, header, name=name)
    assert r.status_code == 400 and "inline" in r.json()["detail"]
    (data_root / name).write_bytes(header)
    assert client.post("/sessions", json={"path": name}).status_code == 400


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_upload_itk_formats(client, tmp_path, nifti_bytes, suffix, truth):
    src = tmp_path / "ct.nii.gz"
    src.write_bytes(nifti_bytes)

    out = tmp_path / f"ct{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(src)), str(out))
    r = _upload(client, out.read_bytes(), name=out.name)
    assert r.status_code == 201, r.text
    assert r.json()["shape"] == list(SHAPE) and np.allclose(r.json()["affine"], AFFINE, atol=1e-5)
    sid = r.json()["id"]
    r = client.post(f"/sessions/{sid}/clicks", json={"point": CENTRE})
    assert r.json()["voxels"] == truth.sum()
    r = client.get(f"/sessions/{sid}/labels")  # default: the image's own format
    assert f"labels{suffix}" in r.headers["content-disposition"]
    back = tmp_path / f"labels{suffix}"
    back.write_bytes(r.content)
    assert np.array_equal(read_image(back, dtype=None).array > 0, truth)


def test_dicom_folder_under_the_data_root(client, data_root, tmp_path):
    from tests.io.helpers import _write_ct_series

    hu = np.round(100 + np.random.default_rng(0).normal(0, 5, (24, 20, 16))).astype(np.float32)
    hu[6:18, 5:15, 4:12] += 900.0
    _write_ct_series(data_root / "case02" / "dicom", hu)
    r = client.post("/sessions", json={"path": "case02/dicom"})
    assert r.status_code == 201, r.text
    assert r.json()["shape"] == [24, 20, 16]
    sid = r.json()["id"]
    body = client.post(f"/sessions/{sid}/clicks", json={"point": [12, 10, 8]}).json()
    assert body["voxels"] > 0
    assert client.get(f"/sessions/{sid}/labels", params={"format": "nii.gz"}).status_code == 200
    r = client.get(f"/sessions/{sid}/labels")  # default for a DICOM series: DICOM-SEG
    assert r.status_code == 200 and "labels.dcm" in r.headers["content-disposition"]
    import pydicom

    seg = pydicom.dcmread(io.BytesIO(r.content))
    assert seg.Modality == "SEG" and int(seg.NumberOfFrames) > 0
    # a symlink inside the folder pointing out of the root is refused
    (data_root / "case02" / "dicom" / "evil.dcm").symlink_to(tmp_path / "secret.nii.gz")
    assert client.post("/sessions", json={"path": "case02/dicom"}).status_code == 403


def test_slice_box_scribble_and_lasso(client, nifti_bytes, truth):
    sid = _new(client, nifti_bytes)
    r = client.post(f"/sessions/{sid}/box", json={"lo": [10, 12, 16], "hi": [30, 28, 16]})  # drawn on one slice
    assert r.status_code == 200, r.text
    assert r.json()["voxels"] == truth.sum()  # all 16 slices of the box, not one
    client.post(f"/sessions/{sid}/reset")
    r = client.post(f"/sessions/{sid}/scribble", json={"points": [[15, 20, 16], [25, 20, 16]], "positive": True})
    assert r.status_code == 200, r.text
    assert r.json()["voxels"] == truth.sum()
    client.post(f"/sessions/{sid}/reset")
    polygon = [[12, 14], [28, 14], [28, 26], [12, 26]]
    r = client.post(f"/sessions/{sid}/lasso", json={"polygon": polygon, "axis": 2, "index": 16})
    assert r.status_code == 200, r.text
    assert r.json()["voxels"] == truth.sum()
    r = client.post(f"/sessions/{sid}/scribble", json={"points": [[99, 0, 0]]})
    assert r.status_code == 400 and "outside the volume" in r.json()["detail"]
    r = client.post(f"/sessions/{sid}/lasso", json={"polygon": polygon, "axis": 2, "index": 99})
    assert r.status_code == 400 and "slice index" in r.json()["detail"]
    r = client.post(f"/sessions/{sid}/lasso", json={"polygon": polygon[:2], "axis": 2, "index": 1})
    assert r.status_code == 422


def test_cli_serve_reads_the_token_from_a_file(monkeypatch, tmp_path, capsys):
    import uvicorn

    from volsam.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app))
    monkeypatch.delenv("VOLSAM_TOKEN", raising=False)
    (tmp_path / "token").write_text("filetok\n")
    argv = ["serve", "--model", "fastsam3d_mini", "--random-weights", "--port", "8124"]
    assert main([*argv, "--token-file", str(tmp_path / "token")]) == 0
    with TestClient(seen["app"]) as c:
        assert c.get("/health").status_code == 401
        assert c.get("/health", headers={"Authorization": "Bearer filetok"}).status_code == 200
    assert "--token" not in capsys.readouterr().err  # no warning: nothing secret on the command line
    (tmp_path / "empty").write_text("\n")
    assert main([*argv, "--token-file", str(tmp_path / "empty")]) == 2
    assert "token file" in capsys.readouterr().err
    assert main([*argv, "--token", "t", "--token-file", str(tmp_path / "token")]) == 2
    assert main([*argv, "--token", "cmdtok"]) == 0  # still accepted, with a warning
    assert "readable by every local user" in capsys.readouterr().err


def test_cli_serve_eviction_and_memory_options(monkeypatch):
    import uvicorn

    from volsam.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app))
    argv = ["serve", "--model", "fastsam3d_mini", "--random-weights", "--port", "8125"]
    assert main([*argv, "--idle-timeout", "30", "--min-idle", "5", "--max-memory", "1.5G"]) == 0
    store = seen["app"].state.store
    assert (store.idle_timeout_s, store.min_idle_s, store.max_bytes) == (30, 5, 3 << 29)
    assert main([*argv, "--max-memory", "0"]) == 0 and seen["app"].state.store.max_bytes is None
    assert main(argv) == 0 and seen["app"].state.store.max_bytes > 0  # half of what the machine has free
