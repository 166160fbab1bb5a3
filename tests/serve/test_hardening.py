"""Hostile requests against the REST API: files that point elsewhere, bombs, unbounded bodies and objects,
and requests that used to end in a 500. Each test fails on the code before the fix it names."""

from __future__ import annotations

import gc
import gzip
import threading
import weakref

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.serve import test_app as base
from tests.serve.test_app import CENTRE, SHAPE, _app, _new, _upload
from volsam.serve import create_app
from volsam.serve.routes import sessions as sessions_routes
from volsam.session import MAX_OBJECTS, Session

# The fixtures of the API tests (a fake model that segments bright voxels, a NIfTI with a bright box).
model, truth, nifti_bytes, data_root = base.model, base.truth, base.nifti_bytes, base.data_root

# Lines past the old check's first 64 KB: NRRD comments, MetaImage fields MetaIO keeps as extra fields.
NRRD_PAD = b"".join(b"# %s\n" % (b"x" * 60) for _ in range(1200))
MHA_PAD = b"".join(b"Pad%d = %s\n" % (i, b"x" * 60) for i in range(1200))


def _nrrd(data_file: bytes, pad: bytes = NRRD_PAD) -> bytes:
    fields = b"type: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
    return b"NRRD0004\n" + pad + fields + b"data file: " + data_file + b"\n\n"


def _mha(data_file: bytes, pad: bytes = MHA_PAD) -> bytes:
    head = b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
    return head + pad + b"ElementDataFile = " + data_file + b"\n"


@pytest.fixture()
def client(model, data_root):
    with TestClient(_app(model, data_root=data_root)) as c:
        yield c


@pytest.mark.parametrize(("name", "make"), [("x.nrrd", _nrrd), ("x.mha", _mha)])
def test_data_file_named_past_64k_is_refused(client, data_root, tmp_path, name, make):
    outside = tmp_path / "outside.raw"
    outside.write_bytes(b"SECRET!!")
    header = make(str(outside).encode())
    r = _upload(client, header, name=name)
    assert r.status_code == 400 and "inline" in r.json()["detail"], r.text
    (data_root / name).write_bytes(header)
    r = client.post("/sessions", json={"path": name})
    assert r.status_code == 400 and "outside the data root" in r.json()["detail"], r.text


def test_data_file_inside_the_data_root_is_allowed_by_path_only(client, data_root):
    (data_root / "vox.raw").write_bytes(bytes(range(8)))
    header = _nrrd(b"vox.raw", pad=b"")
    (data_root / "inside.nrrd").write_bytes(header)
    r = client.post("/sessions", json={"path": "inside.nrrd"})
    assert r.status_code == 201, r.text
    assert _upload(client, header, name="inside.nrrd").status_code == 400  # an upload has no folder


def test_header_declaring_too_many_voxels_is_refused_from_the_header(model, nifti_bytes):
    nrrd = b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1024 1024 1024\nencoding: raw\n\n"  # 68 bytes
    img = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), np.eye(4))
    img.header.set_data_shape((2048, 2048, 256))
    bomb = gzip.compress(img.header.binaryblock + b"\0" * 4 + b"\0" * (1 << 20))
    with TestClient(_app(model, max_voxels=10**6)) as c:
        for name, data in (("big.nrrd", nrrd), ("bomb.nii.gz", bomb)):
            r = _upload(c, data, name=name)
            assert r.status_code == 400 and "more than the limit" in r.json()["detail"], r.text
            assert name in r.json()["detail"] and "volsam-upload" not in r.json()["detail"]
        assert _upload(c, nifti_bytes).status_code == 201  # 48 x 40 x 32 is within the budget


def test_zero_size_dimension_is_400(client):
    nrrd = b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 0 4\nencoding: raw\n\n"
    img = nib.Nifti1Image(np.zeros((4, 0, 4), np.uint8), np.eye(4))
    r = _upload(client, nrrd, name="empty.nrrd")  # teem refuses these itself
    assert r.status_code == 400 and "volsam-upload" not in r.json()["detail"], r.text
    r = _upload(client, img.to_bytes(), name="empty.nii")  # nibabel does not: it was a session, then 500s
    assert r.status_code == 400 and "empty image" in r.json()["detail"], r.text


def test_too_long_path_is_400(client):
    r = client.post("/sessions", json={"path": "a" * 300 + ".nii.gz"})
    assert r.status_code == 400, r.text


def test_json_body_over_the_limit_is_413(client, nifti_bytes):
    sid = _new(client, nifti_bytes)
    big = b'{"point": [1, 2, 3], "pad": "' + b"x" * (1 << 20) + b'"}'
    r = client.post(f"/sessions/{sid}/clicks", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    r = client.post(  # chunked: no Content-Length to check first
        f"/sessions/{sid}/clicks", content=iter([big[:1000], big[1000:]]), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413, r.text
    assert client.post(f"/sessions/{sid}/clicks", json={"point": CENTRE}).status_code == 200


def test_upload_cap_is_enforced_while_streaming(model, monkeypatch):
    import starlette.formparsers as fp

    written = []

    class Counting(fp.SpooledTemporaryFile):  # type: ignore[misc,valid-type]
        def write(self, data):
            written.append(len(data))
            return super().write(data)

    monkeypatch.setattr(fp, "SpooledTemporaryFile", Counting)
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.nii.gz"\r\n\r\n'.encode()
    body = [head] + [b"\0" * (1 << 20)] * 12 + [f"\r\n--{boundary}--\r\n".encode()]
    with TestClient(_app(model, max_upload_mb=2)) as c:
        r = c.post(
            "/sessions", content=iter(body), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
        )
    assert r.status_code == 413, r.text
    assert sum(written) <= 4 << 20  # stopped near the 2 MB cap, not after the whole 12 MB


def test_full_server_refuses_before_decoding(model, nifti_bytes, monkeypatch):
    started, release = threading.Event(), threading.Event()

    class Slow(Session):
        def add_click(self, *a, **kw):
            started.set()
            release.wait(10)
            return super().add_click(*a, **kw)

    reads = []
    real = sessions_routes.read_image
    monkeypatch.setattr(sessions_routes, "read_image", lambda *a, **kw: reads.append(a) or real(*a, **kw))
    with TestClient(create_app(session_factory=lambda: Slow(model, "cpu"), max_sessions=1)) as c:
        sid = _new(c, nifti_bytes)
        t = threading.Thread(target=lambda: c.post(f"/sessions/{sid}/clicks", json={"point": CENTRE}))
        t.start()
        try:
            assert started.wait(10)
            n = len(reads)
            r = _upload(c, nifti_bytes)
            assert r.status_code == 503, r.text
            assert len(reads) == n  # the image was never decoded
        finally:
            release.set()
            t.join()


def test_deleted_session_is_freed(model, nifti_bytes):
    created: list[weakref.ref] = []
    real_init = Session.__init__

    def tracking_init(self, *a, **kw):
        real_init(self, *a, **kw)
        created.append(weakref.ref(self))

    Session.__init__ = tracking_init  # type: ignore[method-assign]
    try:
        with TestClient(create_app(model, device="cpu")) as c:
            a, b = _new(c, nifti_bytes), _new(c, nifti_bytes)
            for sid in (a, b):
                assert c.delete(f"/sessions/{sid}").status_code == 204
            gc.collect()
            assert len(created) == 2 and all(ref() is None for ref in created)
            assert _new(c, nifti_bytes)  # the shared model still serves new sessions
    finally:
        Session.__init__ = real_init  # type: ignore[method-assign]


def test_objects_are_bounded_and_cheap(client, nifti_bytes, truth):
    sid = _new(client, nifti_bytes)
    client.post(f"/sessions/{sid}/clicks", json={"point": CENTRE})
    for _ in range(MAX_OBJECTS - 1):
        assert client.post(f"/sessions/{sid}/objects").status_code == 200
    r = client.post(f"/sessions/{sid}/objects")
    assert r.status_code == 409 and str(MAX_OBJECTS) in r.json()["detail"]
    assert client.get(f"/sessions/{sid}").json()["objects"] == MAX_OBJECTS
    ov = client.get(f"/sessions/{sid}/overlay")
    assert ov.headers["X-Dtype"] == "uint8"
    lm = np.frombuffer(gzip.decompress(ov.content), np.uint8).reshape(SHAPE)
    assert np.array_equal(lm == 1, truth) and lm.max() == 1
    r = client.get(f"/sessions/{sid}/labels", params={"format": "nrrd"})
    assert r.status_code == 200


def test_failed_prompt_leaves_the_session_as_it_was(model, nifti_bytes):
    class Flaky(Session):
        fail = False

        def _predict(self, ws):
            if self.fail:
                raise RuntimeError("decoder exploded")
            super()._predict(ws)

    holder: list[Flaky] = []
    app = create_app(session_factory=lambda: holder.append(Flaky(model, "cpu")) or holder[-1])
    with TestClient(app, raise_server_exceptions=False) as c:
        sid = _new(c, nifti_bytes)
        assert c.post(f"/sessions/{sid}/clicks", json={"point": CENTRE}).status_code == 200
        before = c.get(f"/sessions/{sid}/overlay").content
        holder[0].fail = True
        assert c.post(f"/sessions/{sid}/clicks", json={"point": [5, 5, 5]}).status_code == 500
        assert c.post(f"/sessions/{sid}/box", json={"lo": [1, 1, 1], "hi": [9, 9, 9]}).status_code == 500
        holder[0].fail = False
        assert c.get(f"/sessions/{sid}").json()["clicks"] == 1
        assert c.get(f"/sessions/{sid}/overlay").content == before
        assert c.get(f"/sessions/{sid}/labels").status_code == 200
        r = c.post(f"/sessions/{sid}/undo")  # one step back is the state before the first click
        assert r.status_code == 200 and r.json()["voxels"] == 0


def test_failed_upload_names_the_users_file(client):
    r = _upload(client, b"not an image at all", name="my_scan.nii.gz")
    assert r.status_code == 400 and "my_scan.nii.gz" in r.json()["detail"]
    assert "volsam-upload" not in r.json()["detail"]


def test_memory_of_many_objects_stays_small(model):
    import tracemalloc

    s = Session(model, "cpu")
    img = np.random.default_rng(0).normal(0, 1, (128, 128, 128)).astype(np.float32)
    img[40:80, 40:80, 40:80] += 100
    s.set_image(img, np.diag([1.5, 1.5, 1.5, 1.0]))
    first = int(s.add_click((60, 60, 60)).sum())
    assert first > 0
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(100):
        s.new_object()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 4 << 20, f"{grown / 2**20:.1f} MiB for 100 empty objects"  # a full mask each was 200 MiB
    assert s.label_map.dtype == np.uint8 and (s.label_map == 1).sum() == first


def test_new_object_past_the_limit_is_a_value_error(model):
    s = Session(model, "cpu")
    s.set_image(np.zeros((8, 8, 8), np.float32))
    for _ in range(MAX_OBJECTS - 1):
        s.new_object()
    with pytest.raises(ValueError, match="at most 255"):
        s.new_object()


@pytest.mark.parametrize("body", ["[" * 20000 + "]" * 20000, '{"path": ' + "[" * 20000 + "]" * 20000 + "}"])
def test_deeply_nested_json_on_post_sessions_is_400(client, body):
    r = client.post("/sessions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nested" in r.json()["detail"], r.text


def test_invalid_body_holding_infinity_is_422(client, nifti_bytes):
    sid = _new(client, nifti_bytes)  # FastAPI's 422 echoes the input; Infinity could not be encoded: a 500
    r = client.post(f"/sessions/{sid}/clicks", content='{"pt": Infinity}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "point"], r.text
