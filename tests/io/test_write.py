"""Writing masks: round trips per format, label dtypes, refusals, atomic writes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from tests.io.helpers import _digest, _image, _oblique_affine, _write_ct_series, _write_nifti
from volsam.io import read_image, volume_from_array, write_mask
from volsam.transforms import voxel_to_world, world_to_voxel


@pytest.mark.parametrize("ref_ext", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("out_ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_write_mask_round_trip(tmp_path: Path, ref_ext: str, out_ext: str) -> None:
    data, affine = _image(), _oblique_affine()
    nii = _write_nifti(tmp_path / "ref.nii.gz", data, affine)
    if ref_ext != ".nii.gz":
        sitk.WriteImage(sitk.ReadImage(str(nii)), str(tmp_path / f"ref{ref_ext}"))
    ref = read_image(tmp_path / f"ref{ref_ext}")
    mask = (data > 300).astype(np.uint8) + (data > 2000)
    out = write_mask(mask, ref, tmp_path / "out" / f"mask{out_ext}")
    assert out == tmp_path / "out" / f"mask{out_ext}" and out.is_file()
    back = read_image(out, dtype=None)
    assert back.array.dtype == np.uint8 and np.array_equal(back.array, mask)
    assert np.allclose(back.affine, ref.affine, atol=1e-4)
    world = voxel_to_world([[3.0, 4.0, 5.0]], ref.affine)
    assert np.allclose(world_to_voxel(world, back.affine), [[3.0, 4.0, 5.0]], atol=1e-4)
    leftovers = [p.name for p in (tmp_path / "out").iterdir()]
    assert sorted(leftovers) == sorted([f"mask{out_ext}"] + (["mask.zraw"] if out_ext == ".mhd" else []))


def test_write_mask_uint16_and_bool(tmp_path: Path) -> None:
    ref = volume_from_array(np.zeros((5, 6, 7), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    labels = np.zeros((5, 6, 7), np.int64)
    labels[1, 2, 3] = 300
    back = read_image(write_mask(labels, ref, tmp_path / "l.nii.gz"), dtype=None)
    assert back.array.dtype == np.uint16 and back.array[1, 2, 3] == 300
    back = read_image(write_mask(labels > 0, ref, tmp_path / "b.nrrd"), dtype=None)
    assert back.array.dtype == np.uint8 and back.array.sum() == 1
    assert np.allclose(back.affine, ref.affine)


def test_write_refuses_input_and_bad_masks(tmp_path: Path) -> None:
    src = _write_nifti(tmp_path / "img.nii.gz", _image(), np.eye(4))
    ref = read_image(src)
    before = _digest(src)
    mask = np.zeros(ref.shape, np.uint8)
    with pytest.raises(ValueError, match="refusing to overwrite the input"):
        write_mask(mask, ref, src)
    link = tmp_path / "link.nii.gz"
    link.symlink_to(src)
    with pytest.raises(ValueError, match="refusing to overwrite the input"):
        write_mask(mask, ref, link)
    with pytest.raises(ValueError, match="differs from the reference"):
        write_mask(np.zeros((2, 2, 2), np.uint8), ref, tmp_path / "m.nii.gz")
    with pytest.raises(ValueError, match="integer labels"):
        write_mask(mask + 0.5, ref, tmp_path / "m.nii.gz")
    with pytest.raises(ValueError, match="output format"):
        write_mask(mask, ref, tmp_path / "m.png")
    with pytest.raises(ValueError, match="DICOM-SEG"):
        write_mask(mask, ref, tmp_path / "m.dcm")
    write_mask(mask, ref, tmp_path / "m.nii.gz")
    with pytest.raises(FileExistsError):
        write_mask(mask, ref, tmp_path / "m.nii.gz", overwrite_ok=False)
    assert _digest(src) == before

    _write_ct_series(tmp_path / "ct", _image((6, 5, 4)))
    dref = read_image(tmp_path / "ct")
    for bad in (tmp_path / "ct", tmp_path / "ct" / "mask.nii.gz", tmp_path / "ct" / "sub" / "seg.dcm"):
        with pytest.raises(ValueError, match="refusing"):
            write_mask(np.zeros(dref.shape, np.uint8), dref, bad)
    assert sorted(p.name for p in (tmp_path / "ct").iterdir()) == [f"im{i:03d}.dcm" for i in range(4)]


def test_failed_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = volume_from_array(np.zeros((4, 4, 4), np.float32))
    target = write_mask(np.ones((4, 4, 4), np.uint8), ref, tmp_path / "m.nii.gz")
    before = _digest(target)

    def broken_save(img: nib.Nifti1Image, path: str | Path) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_mask(np.zeros((4, 4, 4), np.uint8), ref, target)
    assert _digest(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.nii.gz"]
