"""NRRD and MetaImage via SimpleITK: LPS geometry converted to the RAS+ that nibabel gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.io.helpers import _image, _oblique_affine, _write_nifti
from volsam.io import read_image
from volsam.transforms import world_to_voxel


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".mhd", ".nhdr"])
def test_itk_formats_agree_with_nibabel_geometry(tmp_path: Path, ext: str) -> None:
    """SimpleITK converts the NIfTI (LPS inside ITK); reading the copy must give nibabel's RAS geometry."""
    data, affine = _image(), _oblique_affine()
    nii = _write_nifti(tmp_path / "img.nii.gz", data, affine)
    copy = tmp_path / f"img{ext}"
    sitk.WriteImage(sitk.ReadImage(str(nii)), str(copy))
    ref, vol = read_image(nii), read_image(copy)
    assert vol.format == {".nhdr": "nrrd"}.get(ext, ext[1:])
    assert np.array_equal(vol.array, ref.array)
    assert np.allclose(vol.affine, ref.affine, atol=1e-4)
    world = np.array([[0.0, 0.0, 50.0], [-12.0, 30.0, 44.0]])
    assert np.allclose(world_to_voxel(world, vol.affine), world_to_voxel(world, ref.affine), atol=1e-4)


def test_itk_lps_geometry_by_hand(tmp_path: Path) -> None:
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))  # (z, y, x) -> size (6, 5, 4)
    img.SetSpacing((0.7, 0.9, 2.5))
    img.SetOrigin((10.0, 20.0, 30.0))  # LPS
    sitk.WriteImage(img, str(tmp_path / "a.mha"))
    vol = read_image(tmp_path / "a.mha")
    assert vol.shape == (6, 5, 4)
    want = np.diag([-0.7, -0.9, 2.5, 1.0])
    want[:3, 3] = [-10.0, -20.0, 30.0]
    assert np.allclose(vol.affine, want) and vol.orientation == ("L", "P", "S")
