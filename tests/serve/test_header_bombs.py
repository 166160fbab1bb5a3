"""NIfTI header-extension bombs through the server: an ~80 KB upload whose extensions inflate to 80 MiB
answers 400 with one line before nibabel parses the header (memory: tests/io/test_nifti.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.io.helpers import nifti_with_extensions
from tests.serve import test_app as base
from tests.serve.test_app import _app, _upload

model, truth, nifti_bytes, data_root = base.model, base.truth, base.nifti_bytes, base.data_root


@pytest.fixture()
def client(model, data_root):
    with TestClient(_app(model, data_root=data_root)) as c:
        yield c


def test_extension_bomb_upload_and_path_answer_400(client, data_root):
    bomb = nifti_with_extensions(data_root / "bomb.nii.gz", [(80 << 20) + 16], vox_offset=0)
    r = _upload(client, bomb.read_bytes(), name="bomb.nii.gz")
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == (
        "bomb.nii.gz has NIfTI header extensions of 83886096 bytes or more; "
        "expected at most 64 MiB of extensions, each at least 8 bytes"
    )
    r = client.post("/sessions", json={"path": "bomb.nii.gz"})
    assert r.status_code == 400 and r.json()["detail"].startswith("bomb.nii.gz has NIfTI header extensions"), r.text
