"""NIfTI reading: file voxel order, affine, dtype and form codes; a real image when installed."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from tests.io.helpers import CH2, _image, _oblique_affine, _write_nifti
from volsam import io
from volsam.io import read_image


def test_nifti_read_keeps_file_order_affine_and_dtype(tmp_path: Path) -> None:
    data, affine = _image(), _oblique_affine()
    path = _write_nifti(tmp_path / "img.nii.gz", data, affine)
    vol = read_image(path)
    assert vol.format == "nifti" and vol.path == path and vol.shape == data.shape
    assert vol.array.dtype == np.float32 and np.array_equal(vol.array, data)
    assert np.allclose(vol.affine, affine, atol=1e-5)
    assert np.allclose(vol.spacing, [0.7, 0.9, 2.5], atol=1e-5)
    assert vol.orientation == nib.aff2axcodes(affine)
    assert read_image(path, dtype=None).array.dtype == np.int16
    assert vol.meta["sform_code"] == 1


def test_real_data_colin27() -> None:
    if not CH2.exists():
        pytest.skip(f"{CH2} absent (Debian package mricron-data)")
    vol = read_image(CH2)
    assert vol.shape == (181, 217, 181)
    assert np.allclose(vol.spacing, 1.0) and vol.orientation == ("R", "A", "S")
    assert vol.array.dtype == np.float32 and vol.array.max() > 100
    ref = sitk.ReadImage(str(CH2))  # independent reader: same voxels in (x, y, z) order
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(ref).transpose(2, 1, 0))
    info = io.image_info(CH2)
    assert info["shape"] == (181, 217, 181) and info["dtype"] == "uint8" and info["format"] == "nifti"
    assert info["orientation"] == ("R", "A", "S") and info["min"] == 0.0 and info["max"] > 100
