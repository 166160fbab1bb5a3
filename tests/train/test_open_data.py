"""The default model's open training data: InVesalius projects, CT thresholds, MNI152 tissue labels."""

from __future__ import annotations

import io
import json
import plistlib
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volsam.io import read_image, volume_from_array, write_image
from volsam.train import open_data
from volsam.train.open_data import HELD_OUT_AAL, ct_head_labels, mni152_case, read_inv3


def _phantom_ct() -> np.ndarray:
    """(X, Y, Z) = (40, 36, 12): air, a 'head' ellipse of soft tissue (40 HU) with a bone ring (700 HU)
    and an air pocket (sinus) inside."""
    x, y = np.meshgrid(np.arange(40), np.arange(36), indexing="ij")
    r = ((x - 20) / 16.0) ** 2 + ((y - 18) / 14.0) ** 2
    sl = np.full((40, 36), -1000.0)
    sl[r <= 1.0] = 40.0
    sl[(r > 0.55) & (r <= 0.75)] = 700.0
    sl[18:21, 16:19] = -900.0  # air inside the head: filled into the head label
    return np.repeat(sl[..., None], 12, axis=2)


def _write_inv3(path: Path, ct_xyz: np.ndarray, spacing=(0.9, 0.8, 1.5)) -> None:
    matrix = np.ascontiguousarray(ct_xyz.transpose(2, 1, 0)).astype(np.int16)  # stored (slices, rows, cols)
    main = {"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(matrix.shape)},
            "spacing": list(spacing), "modality": "CT"}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("main.plist", plistlib.dumps(main)), ("matrix.dat", matrix.tobytes())):
            info = tarfile.TarInfo(f"tmpabc/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_read_inv3_orders_axes_and_spacing(tmp_path):
    ct = _phantom_ct()
    ct[3, 5, 7] = 1234.0  # an asymmetric marker pins the axis order
    _write_inv3(tmp_path / "head.inv3", ct)
    vol = read_inv3(tmp_path / "head.inv3")
    assert vol.shape == (40, 36, 12)
    np.testing.assert_array_equal(vol.array, ct)
    np.testing.assert_allclose(np.diag(vol.affine), [0.9, 0.8, 1.5, 1.0])
    (tmp_path / "bad.inv3").write_bytes(b"")
    with tarfile.open(tmp_path / "bad.inv3", "w:gz"):
        pass
    with pytest.raises(ValueError, match="not an InVesalius project"):
        read_inv3(tmp_path / "bad.inv3")


def test_ct_head_labels_skull_and_filled_head():
    ct = _phantom_ct()
    lab = ct_head_labels(ct)
    assert set(np.unique(lab)) == {0, 1, 2}
    np.testing.assert_array_equal(lab == 1, ct >= 226)  # the ring is one component
    assert lab[19, 17, 5] == 2  # the air pocket inside the head is head, not background
    assert lab[0, 0, 0] == 0 and lab[20, 18, 0] == 2


def test_mni152_tissue_labels(tmp_path):
    stem = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    gm = np.zeros((6, 6, 6), np.float32)
    wm = np.zeros((6, 6, 6), np.float32)
    gm[0, 0, 0], wm[0, 0, 0] = 0.7, 0.3  # grey
    gm[1, 0, 0], wm[1, 0, 0] = 0.45, 0.55  # white
    gm[2, 0, 0], wm[2, 0, 0] = 0.4, 0.4  # neither reaches 0.5: background
    for name, arr in (("t1", gm + 2 * wm), ("gm", gm), ("wm", wm)):
        nib.save(nib.Nifti1Image(arr, aff), tmp_path / stem.format(name))
    case = mni152_case(tmp_path)
    assert case.label[0, 0, 0] == 30001 and case.label[1, 0, 0] == 30002 and case.label[2, 0, 0] == 0
    assert case.labels == {"MNI152_grey_matter": 30001, "MNI152_white_matter": 30002}


def test_build_training_set_writes_an_nnunet_folder(tmp_path, monkeypatch):
    ct = _phantom_ct()
    _write_inv3(tmp_path / "head.inv3", ct)
    monkeypatch.setitem(open_data.SOURCES, "invesalius", lambda: open_data.invesalius_case(tmp_path / "head.inv3"))
    labels = open_data.build_training_set(tmp_path / "out", ["invesalius"])
    assert labels == {"background": 0, "CT_skull": 20001, "CT_head": 20002}
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["numTraining"] == 1 and meta["held_out_aal"] == sorted(HELD_OUT_AAL)
    img = read_image(tmp_path / "out" / "imagesTr" / "invesalius_head_ct_0000.nii.gz")
    lab = read_image(tmp_path / "out" / "labelsTr" / "invesalius_head_ct.nii.gz", dtype=None)
    np.testing.assert_array_equal(img.array, ct)
    np.testing.assert_array_equal(lab.array == 20001, ct >= 226)
    with pytest.raises(ValueError, match="unknown source"):
        open_data.build_training_set(tmp_path / "o2", ["ixi"])
    with pytest.raises(FileNotFoundError, match="apt-get install invesalius-examples"):
        open_data.invesalius_case(tmp_path / "missing.inv3")


def test_colin27_case_drops_the_held_out_structures():
    if not (open_data.MRICRON_TEMPLATES / "aal.nii.gz").exists():
        pytest.skip("Debian mricron-data not installed")
    case = open_data.colin27_case()
    assert not np.isin(case.label, list(HELD_OUT_AAL)).any()
    assert "AAL_Thalamus_L" not in case.labels and "AAL_Precentral_L" in case.labels


def test_write_image_keeps_grid_and_refuses_its_input(tmp_path):
    vol = volume_from_array(np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5, np.diag([0.5, 2.0, 3.0, 1.0]))
    for ext in (".nii.gz", ".nrrd", ".mha"):
        back = read_image(write_image(vol, tmp_path / f"v{ext}"))
        np.testing.assert_array_equal(back.array, vol.array)
        np.testing.assert_allclose(back.affine, vol.affine, atol=1e-6)
    src = read_image(tmp_path / "v.nii.gz")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        write_image(src, tmp_path / "v.nii.gz")


def test_shapes_cases_values_and_determinism():
    a = open_data.shapes_cases(count=2, seed=5, size=48, shapes=6)
    b = open_data.shapes_cases(count=2, seed=5, size=48, shapes=6)
    assert [c.name for c in a] == ["shapes_00", "shapes_01"]
    for ca, cb in zip(a, b, strict=True):
        assert np.array_equal(ca.label, cb.label) and np.array_equal(ca.image.array, cb.image.array)
    values = [v for c in a for v in c.labels.values()]
    assert len(values) == len(set(values)) and all(open_data.SHAPES_BASE < v < 65536 for v in values)
    for c in a:
        present = set(np.unique(c.label).tolist())
        assert set(c.labels.values()) <= present
        assert present - set(c.labels.values()) <= {open_data.TISSUE_BASE + k for k in (1, 2, 3)}


def test_large_cases_brain_halves_and_whole_head(tmp_path, monkeypatch):
    stem = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = (-20.0, -20.0, -20.0)  # world x = 2 i - 20: the mid-sagittal plane between i = 9 and 10
    i, j, k = np.ogrid[:20, :20, :20]
    ball = (i - 9.5) ** 2 + (j - 10) ** 2 + (k - 10) ** 2 <= 49
    gm = np.where(ball, 0.6, 0.0).astype(np.float32)
    wm = np.zeros_like(gm)
    wm[9:11, 9:11, 9:11] = 0.7  # deep white matter: the brain has no hole
    gm[9:11, 9:11, 9:11] = 0.0
    gm[0, 0, 0] = 0.9  # a speck apart from the brain: not the largest component
    for name, arr in (("t1", gm + 2 * wm), ("gm", gm), ("wm", wm)):
        nib.save(nib.Nifti1Image(arr, aff), tmp_path / stem.format(name))
    _write_inv3(tmp_path / "head.inv3", _phantom_ct())
    monkeypatch.setattr(open_data, "LARGE_SHAPES_VOLUMES", 1)
    monkeypatch.setattr(open_data, "_large_shapes", lambda i, seed, base: open_data.shapes_cases(1, size=24)[0])
    cases = open_data.large_cases(tmp_path, tmp_path / "head.inv3")
    brain, halves, head = cases[:3]
    assert brain.labels == {"MNI152_brain": 63001}
    b = brain.label == 63001
    np.testing.assert_array_equal(b, ball)  # speck dropped, deep white matter included
    assert (halves.label == 63002).sum() + (halves.label == 63003).sum() == b.sum()
    assert (halves.label[:10] == 63003).sum() == 0 and (halves.label[10:] == 63002).sum() == 0  # left = x < 0
    assert head.labels == {"CT_whole_head": 63004}
    np.testing.assert_array_equal(head.label == 63004, ct_head_labels(_phantom_ct()) > 0)
    assert all(v >= 60000 for c in cases for v in c.labels.values())  # never drawn for validation


def test_large_shapes_are_large():
    case = open_data._large_shapes(0, 0, open_data.LARGE_BASE + 100)
    assert case.image.spacing == (2.5, 2.5, 2.5)
    sizes = [(case.label == v).sum() * 2.5**3 / 1e3 for v in case.labels.values()]
    assert sizes and max(sizes) > 100  # cm3: organ-sized
