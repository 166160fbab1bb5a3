"""``volsam datastore list|pull|push`` and ``volsam segment --dicomweb URL --series UID --push``, on a folder
and on the test Orthanc; failures end in one line without credentials."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.datastore.conftest import free_port
from volsam.cli import main
from volsam.datastore.series import write_dicom_series


def _err_line(capsys) -> str:
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("volsam: error:")]
    assert len(lines) == 1
    return lines[0]


def test_local_push_list_pull(tmp_path, head_crop, capsys):
    image = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(head_crop.array), head_crop.affine), image)
    root = tmp_path / "ds"
    assert main(["datastore", "push", str(root), str(image)]) == 0
    assert capsys.readouterr().out.split("\t")[0] == "head"
    mask = np.zeros(head_crop.shape, np.uint8)
    mask[10:20, 10:30, 5:15] = 1
    nib.save(nib.Nifti1Image(mask, head_crop.affine), tmp_path / "m.nii.gz")
    assert main(["datastore", "push", str(root), "--label", str(tmp_path / "m.nii.gz"), "--image", "head"]) == 0
    assert capsys.readouterr().out.startswith("head\tfinal v1\t")
    # A second file for the same image started from no saved version: an explicit conflict, then --force.
    assert main(["datastore", "push", str(root), "--label", str(tmp_path / "m.nii.gz"), "--image", "head"]) == 2
    assert "its final label is at version 1 but this save started from no saved label" in _err_line(capsys)
    assert main(["datastore", "push", str(root), "--label", str(tmp_path / "m.nii.gz"), "--image", "head",
                 "--force"]) == 0
    capsys.readouterr()
    assert main(["datastore", "list", str(root), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["images"]
    assert entry["status"] == "final" and entry["labels"] == {"final": 2}
    assert main(["datastore", "pull", str(root), "head", "--label", str(tmp_path / "back.nii.gz")]) == 0
    assert capsys.readouterr().out.strip() == str(root / "head.nii.gz")
    assert np.array_equal(nib.load(tmp_path / "back.nii.gz").get_fdata(), mask)
    assert main(["datastore", "pull", str(root), "nope"]) == 2
    assert _err_line(capsys) == f"volsam: error: no image 'nope' in datastore {root}"


def test_dicomweb_push_segment_pull(orthanc, tmp_path, head_crop, capsys, monkeypatch):
    monkeypatch.setenv("VOLSAM_DICOMWEB_USER", orthanc.user)
    monkeypatch.setenv("VOLSAM_DICOMWEB_PASSWORD", orthanc.password)
    files = write_dicom_series(head_crop, tmp_path / "mr", modality="MR")
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    url, cache = orthanc.dicomweb, ["--cache-dir", str(tmp_path / "cache")]
    assert main(["datastore", "push", url, str(tmp_path / "mr"), *cache]) == 0
    assert capsys.readouterr().out.split("\t")[0] == uid
    assert main(["datastore", "list", url, *cache]) == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()}
    assert rows[uid][1] == "none"
    rc = main(["segment", "--dicomweb", url, "--series", uid, "--point", "20,28,12", "--push", *cache])
    assert rc == 0
    err = capsys.readouterr().err
    assert f"saved final label v1 of series {uid}" in err and f"to {url}" in err and orthanc.password not in err
    # Another workstation (empty cache) pulls the series and the label the PACS now holds.
    other = ["--cache-dir", str(tmp_path / "cache2")]
    assert main(["datastore", "pull", url, uid, "--label", str(tmp_path / "lab.nii.gz"), *other]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache2" / "series" / uid)
    mine = nib.load(tmp_path / "cache" / "labels" / "final" / f"{uid}.v1.nii.gz").get_fdata()
    assert mine.any() and np.array_equal(nib.load(tmp_path / "lab.nii.gz").get_fdata(), mine)
    assert main(["datastore", "list", url, *cache]) == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()}
    assert rows[uid][1:3] == ["final", "final v1"]


@pytest.mark.parametrize("cmd", [["datastore", "list"], ["segment", "--point", "1,2,3", "--dicomweb"]])
def test_pacs_down_one_line_without_credentials(cmd, tmp_path, capsys, monkeypatch):
    import volsam.session

    def no_model(*a, **kw):  # the failure must come before the model loads
        raise AssertionError("model loaded")

    monkeypatch.setattr(volsam.session, "resolve_model", no_model)
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    extra = ["--series", "1.2.3"] if cmd[0] == "segment" else []
    rc = main([*cmd, url, *extra, "--dicomweb-user", "u", "--dicomweb-password", "pw-Zq81x",
               "--cache-dir", str(tmp_path)])
    assert rc == 2
    line = _err_line(capsys)
    assert line.startswith(f"volsam: error: DICOMweb server {url} unreachable (connection refused) during ")
    assert "pw-Zq81x" not in line


def test_segment_dicomweb_usage_errors(capsys):
    assert main(["segment", "--series", "1.2", "--point", "1,2,3"]) == 2
    assert _err_line(capsys) == "volsam: error: --series and --push go with --dicomweb URL"
    assert main(["segment", "--dicomweb", "http://h/dicom-web", "--point", "1,2,3"]) == 2
    assert "give --series UID and no image path" in _err_line(capsys)
    assert main(["segment", "--dicomweb", "/some/dir", "--series", "1.2", "--point", "1,2,3"]) == 2
    assert "--dicomweb takes an http:// or https:// URL" in _err_line(capsys)
