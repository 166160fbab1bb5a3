"""DICOM series reading: slice order, several series in one folder, oblique orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from tests.io.helpers import _image, _rot, _write_ct_series
from volsam.io import read_image
from volsam.transforms import voxel_to_world


def test_dicom_series_read(tmp_path: Path) -> None:
    hu = _image((16, 12, 8))
    want, uids, series = _write_ct_series(tmp_path / "ct", hu)
    vol = read_image(tmp_path / "ct")
    assert vol.format == "dicom" and vol.shape == (16, 12, 8)
    assert np.array_equal(vol.array, hu)  # HU after rescale, slices sorted by position, not file name
    assert np.allclose(vol.affine, want, atol=1e-5)
    assert vol.orientation == ("L", "P", "S") and np.allclose(vol.spacing, [0.7, 0.8, 2.5])
    assert [pydicom.dcmread(f).SOPInstanceUID for f in vol.meta["dicom_files"]] == uids
    assert vol.meta["series_instance_uid"] == series
    one_file = read_image(vol.meta["dicom_files"][3])  # a file selects its series
    assert np.array_equal(one_file.array, hu)


def test_dicom_directory_with_two_series(tmp_path: Path) -> None:
    a, b = _image((6, 5, 3)), _image((6, 5, 4)) + 7
    _, _, series_a = _write_ct_series(tmp_path / "mixed", a, prefix="a")
    _, _, series_b = _write_ct_series(tmp_path / "mixed", b, prefix="b")
    vol = read_image(tmp_path / "mixed")
    assert sorted(vol.meta["series_ids"]) == sorted([series_a, series_b])
    first = vol.meta["series_ids"][0]
    assert vol.meta["series_instance_uid"] == first
    assert np.array_equal(vol.array, a if first == series_a else b)
    assert len(vol.meta["dicom_files"]) == (3 if first == series_a else 4)
    chosen = read_image(tmp_path / "mixed" / "b000.dcm")  # a file picks its own series
    assert chosen.meta["series_instance_uid"] == series_b and np.array_equal(chosen.array, b)


def test_dicom_oblique_series_matches_standard(tmp_path: Path) -> None:
    r = _rot(0, 10) @ _rot(2, 30)  # row and column directions: first two columns (LPS)
    iop = tuple(float(v) for v in (*r[:, 0], *r[:, 1]))
    hu = _image((10, 9, 6))
    want, _, _ = _write_ct_series(tmp_path / "obl", hu, iop=iop, pixel_spacing=(1.1, 0.6), slice_spacing=3.0)
    vol = read_image(tmp_path / "obl")
    assert np.array_equal(vol.array, hu)
    assert np.allclose(vol.affine, want, atol=1e-4)
    lin = vol.affine[:3, :3]
    assert not np.allclose(lin, np.diag(np.diag(lin)), atol=0.05)  # really oblique
    p = np.array([[2.0, 3.0, 4.0]])
    assert np.allclose(voxel_to_world(p, vol.affine), voxel_to_world(p, want), atol=1e-3)
