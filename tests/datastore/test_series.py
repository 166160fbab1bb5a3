"""DICOM series for the datastore: a Volume written as a series reads back identical; irregular series
(a missing slice, uneven spacing, repeated positions, a sheared stack) are refused with a clear message."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from volsam.datastore import SeriesGeometryError
from volsam.datastore.series import check_series_files, check_series_geometry, write_dicom_series
from volsam.io import Volume, read_image


def _headers(depths, iop=(1, 0, 0, 0, 1, 0), shift=None) -> list[Dataset]:
    out = []
    for n, z in enumerate(depths):
        ds = Dataset()
        ds.ImageOrientationPatient = list(iop)
        ds.ImagePositionPatient = [0.0 + (shift if shift is not None and n == 1 else 0.0), 0.0, float(z)]
        ds.Rows, ds.Columns, ds.PixelSpacing = 4, 4, [1.0, 1.0]
        out.append(ds)
    return out


def test_regular_series_gives_its_slice_order():
    assert check_series_geometry(_headers([5.0, 0.0, 2.5, 7.5])) == [1, 2, 0, 3]


@pytest.mark.parametrize(
    ("depths", "message"),
    [
        ([0.0, 2.5, 7.5, 10.0], "1 slice(s) missing between 2.50 and 7.50 mm"),
        ([0.0, 2.5, 5.0, 12.5], "2 slice(s) missing between 5.00 and 12.50 mm"),
        ([0.0, 2.5, 5.0, 8.0, 10.5], "uneven slice spacing (2.500 to 3.000 mm"),
        ([0.0, 2.5, 2.5, 5.0], "two slices share the position 2.50 mm"),
    ],
)
def test_irregular_series_refused(depths, message):
    with pytest.raises(SeriesGeometryError) as err:
        check_series_geometry(_headers(depths), "series X")
    assert str(err.value).startswith("series X: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_mixed_orientation_and_shear_refused():
    heads = _headers([0.0, 1.0, 2.0])
    heads[2].ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    with pytest.raises(SeriesGeometryError, match="different orientations"):
        check_series_geometry(heads)
    with pytest.raises(SeriesGeometryError, match="shift in-plane"):
        check_series_geometry(_headers([0.0, 1.0, 2.0], shift=3.0))


def test_written_series_reads_back_exactly(tmp_path, head_crop):
    files = write_dicom_series(head_crop, tmp_path / "mr", modality="MR")
    assert len(files) == head_crop.shape[2]
    back = read_image(tmp_path / "mr", dtype=None)
    assert back.format == "dicom" and back.shape == head_crop.shape
    assert np.array_equal(back.array, head_crop.array)
    assert np.allclose(back.affine, head_crop.affine, atol=1e-4)
    assert pydicom.dcmread(files[0]).Modality == "MR"
    with pytest.raises(FileExistsError):
        write_dicom_series(head_crop, tmp_path / "mr")  # never over an existing file


def test_oblique_ct_series_geometry(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[0.8 * c, -0.7 * s, 0, -20], [0.8 * s, 0.7 * c, 0, 10], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    hu = np.random.default_rng(0).integers(-1000, 2000, (6, 5, 4)).astype(np.int16)
    write_dicom_series(Volume(hu, affine), tmp_path / "ct")
    back = read_image(tmp_path / "ct", dtype=None)
    assert np.array_equal(back.array, hu) and np.allclose(back.affine, affine, atol=1e-4)
    with pytest.raises(ValueError, match="integer intensities within int16"):
        write_dicom_series(Volume(hu + 0.5, affine), tmp_path / "bad")


def test_series_files_skip_non_images_and_refuse_two_series(tmp_path, head_crop):
    small = Volume(np.asarray(head_crop.array)[:8, :8, :6], head_crop.affine)
    files = write_dicom_series(small, tmp_path / "a")
    (tmp_path / "a" / "README.txt").write_text("not DICOM")
    check_series_files([*files, tmp_path / "a" / "README.txt"], "folder a")  # the text file is skipped
    other = write_dicom_series(small, tmp_path / "b")
    with pytest.raises(SeriesGeometryError, match="folder a: holds 2 DICOM series; expected one series per folder"):
        check_series_files([*files, *other], "folder a")
