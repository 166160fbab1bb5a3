"""Headers naming data files outside themselves, through the server: an upload (which may name none) and a
``{"path"}`` under the data root (which may name files inside the root only) answer 400 with one line,
for every spelling SimpleITK takes (tests/io/detached.py), so no session holds the outside bytes."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from tests.io.detached import MHA_FIELDS, NRRD_FIELDS, attacks, write_secret
from tests.serve import test_app as base
from tests.serve.test_app import _app, _upload

model, truth, nifti_bytes, data_root = base.model, base.truth, base.nifti_bytes, base.data_root


@pytest.fixture()
def client(model, data_root):
    with TestClient(_app(model, data_root=data_root)) as c:
        yield c


@pytest.mark.parametrize("name", sorted(attacks("s", "p%d")))
def test_detached_data_file_attacks_answer_400(client, data_root, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret, pattern = write_secret(outside)
    filename, header = attacks(secret, pattern)[name]
    filename = filename.replace(".nhdr", ".nrrd").replace(".mhd", ".mha")  # the extensions the server takes
    r = _upload(client, header, name=filename)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "\n" not in detail and detail.startswith(filename) and "volsam-upload" not in detail, detail
    here = data_root / "case01"
    rel_secret, rel_pattern = os.path.relpath(secret, here), os.path.relpath(pattern, here)
    for i, (s, p) in enumerate(((secret, pattern), (rel_secret, rel_pattern))):
        path = f"case01/{i}{filename}"
        (data_root / path).write_bytes(attacks(s, p)[name][1])
        r = client.post("/sessions", json={"path": path})
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert "\n" not in detail and detail.startswith(path) and str(data_root) not in detail, detail


@pytest.mark.parametrize(
    ("filename", "header"),
    [
        ("x.mha", MHA_FIELDS + b"ElementDataFile = \0\n"),
        ("x.nrrd", b"NRRD0004\n" + NRRD_FIELDS + b"data file: \0/etc/hostname\n\n"),
        ("y.nrrd", b"NRRD0004\n" + NRRD_FIELDS + b"data file: /etc/host\0name\n\n"),
    ],
)
def test_nul_in_a_data_file_name_answers_400(client, data_root, filename, header):
    """A NUL in a data file name was a 500 under a data root (Path.resolve raised ValueError)."""
    (data_root / filename).write_bytes(header)
    r = client.post("/sessions", json={"path": filename})
    assert r.status_code == 400 and r.json()["detail"].startswith(filename), r.text
