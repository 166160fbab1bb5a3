"""Reading errors (4D, vector, missing, corrupt, unsupported files) and Volume properties / image_info."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.io.helpers import _assert_one_line, _write_nifti
from volsam import io
from volsam.io import ImageReadError, Volume, read_image, volume_from_array, write_mask


def test_4d_and_vector_images_rejected(tmp_path: Path) -> None:
    p4 = _write_nifti(tmp_path / "t.nii.gz", np.zeros((6, 6, 6, 2), np.float32), np.eye(4))
    with pytest.raises(ImageReadError, match=r"expected a 3D image, got shape \(6, 6, 6, 2\)") as err:
        read_image(p4)
    _assert_one_line(err, p4)
    p1 = _write_nifti(tmp_path / "s.nii.gz", np.ones((6, 5, 4, 1), np.float32), np.eye(4))
    assert read_image(p1).shape == (6, 5, 4)
    pv = tmp_path / "v.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.float32), isVector=True), str(pv))
    with pytest.raises(ImageReadError, match="3 components") as err:
        read_image(pv)
    _assert_one_line(err, pv)
    p2 = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.float32)), str(p2))
    with pytest.raises(ImageReadError, match="expected a 3D image"):
        read_image(p2)


def test_missing_corrupt_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file") as err:
        read_image(tmp_path / "nope.nii.gz")
    _assert_one_line(err, tmp_path / "nope.nii.gz")
    good = _write_nifti(tmp_path / "g.nii.gz", np.random.default_rng(0).random((30, 30, 30)), np.eye(4))
    truncated = tmp_path / "t.nii.gz"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ImageReadError) as err:
        read_image(truncated)
    _assert_one_line(err, truncated)
    cut_data = tmp_path / "c.nii.gz"  # intact header, data cut short
    cut_data.write_bytes(gzip.compress(gzip.decompress(good.read_bytes())[:2000]))
    with pytest.raises(ImageReadError) as err:
        read_image(cut_data)
    _assert_one_line(err, cut_data)
    garbage = tmp_path / "x.mha"
    garbage.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ImageReadError) as err:
        read_image(garbage)
    _assert_one_line(err, garbage)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no DICOM series"):
        read_image(tmp_path / "empty")
    (tmp_path / "a.png").write_bytes(b"png")
    with pytest.raises(ImageReadError, match="unsupported image type"):
        read_image(tmp_path / "a.png")
    assert issubclass(ImageReadError, ValueError)


def test_volume_properties_and_info(tmp_path: Path) -> None:
    affine = np.array([[0.0, 0.0, 2.0, 1.0], [-0.5, 0.0, 0.0, 2.0], [0.0, -3.0, 0.0, 3.0], [0, 0, 0, 1.0]])
    vol = volume_from_array(np.arange(24, dtype=np.float32).reshape(2, 3, 4), affine)
    assert vol.format == "array" and vol.path is None and vol.shape == (2, 3, 4)
    assert vol.spacing == (0.5, 3.0, 2.0) and vol.orientation == ("P", "I", "R")
    assert "shape=(2, 3, 4)" in repr(vol)
    assert np.array_equal(volume_from_array(np.zeros((2, 2, 2))).affine, np.eye(4))
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((2, 2)), np.eye(4))
    path = write_mask(np.arange(24).reshape(2, 3, 4) % 5, vol, tmp_path / "i.mha")
    info = io.image_info(path)
    assert info["shape"] == (2, 3, 4) and info["format"] == "mha" and info["dtype"] == "uint8"
    assert info["min"] == 0.0 and info["max"] == 4.0 and info["mean"] == pytest.approx(np.mean(np.arange(24) % 5))
    assert np.allclose(info["affine"], affine) and info["orientation"] == ("P", "I", "R")
    assert np.allclose(info["spacing"], (0.5, 3.0, 2.0))
