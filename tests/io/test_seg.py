"""DICOM-SEG output and the default output paths for a DICOM reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.io.helpers import _digest, _image, _write_ct_series, _write_nifti
from volsam import io
from volsam.io import read_image, volume_from_array, write_mask


def test_dicom_seg_round_trip(tmp_path: Path) -> None:
    hd = pytest.importorskip("highdicom")
    hu = _image((16, 12, 8))
    _, uids, series = _write_ct_series(tmp_path / "ct", hu)
    ref = read_image(tmp_path / "ct")
    before = _digest(tmp_path / "ct")
    mask = np.zeros(ref.shape, np.uint8)
    mask[2:9, 3:7, 1:4] = 1
    mask[10:14, 1:11, 5:7] = 3
    out = write_mask(mask, ref, tmp_path / "seg.dcm")
    assert _digest(tmp_path / "ct") == before
    seg = hd.seg.segread(out)
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    assert [seg.get_segment_description(n).segment_label for n in (1, 2)] == ["label 1", "label 3"]
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    assert frames.shape == (8, 12, 16)  # (slices, rows = Y, columns = X)
    got = np.array([0, 1, 3])[frames].transpose(2, 1, 0)
    assert np.array_equal(got, mask)


def test_dicom_reference_to_nifti_and_default_paths(tmp_path: Path) -> None:
    want, _, _ = _write_ct_series(tmp_path / "ct", _image((16, 12, 8)))
    ref = read_image(tmp_path / "ct")
    assert io.default_output_path(ref) == tmp_path / "ct_seg.dcm"
    mask = np.zeros(ref.shape, np.uint8)
    mask[4, 5, 6] = 1
    back = read_image(write_mask(mask, ref, tmp_path / "m.nii.gz"), dtype=None)
    assert np.array_equal(back.array, mask) and np.allclose(back.affine, want, atol=1e-4)
    assert io.default_output_path(read_image(_write_nifti(tmp_path / "a.nii.gz", _image(), np.eye(4)))) == (
        tmp_path / "a_mask.nii.gz"
    )
    nrrd = tmp_path / "b.nhdr"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 3, 3), np.uint8)), str(nrrd))
    assert io.default_output_path(read_image(nrrd), "_liver") == tmp_path / "b_liver.nrrd"
    with pytest.raises(ValueError, match="no source path"):
        io.default_output_path(volume_from_array(np.zeros((2, 2, 2))))
