"""NIfTI reading: file voxel order, affine, dtype and form codes; a real image when installed."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from tests.io.helpers import CH2, _image, _oblique_affine, _write_nifti, nifti_with_extensions
from volsam import io
from volsam.io import ImageReadError, read_image


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


# Peak memory of read_image on each file, in a child process (ru_maxrss is per process): "message|MiB".
_PEAK = """
import resource, sys
from volsam.io import ImageReadError, read_image
for name in sys.argv[1:]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        read_image(name)
        msg = "read"
    except ImageReadError as e:
        msg = str(e)
    print(msg, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, sep="|")
"""


def test_header_extension_bomb_is_refused_before_nibabel_inflates_it(tmp_path: Path) -> None:
    """80 MiB of extensions in an ~80 KB .nii.gz: nibabel would read them whole while parsing the header
    (up to vox_offset, or to the end of the file when vox_offset is 0 or negative); refused, and the
    process's peak memory does not grow by them."""
    import subprocess
    import sys

    big = (80 << 20) + 16
    files = [
        nifti_with_extensions(tmp_path / "to_end.nii.gz", [big], vox_offset=0),
        nifti_with_extensions(tmp_path / "negative.nii.gz", [1024, big], vox_offset=-1.0),
    ]
    assert all(f.stat().st_size < 200_000 for f in files)
    r = subprocess.run([sys.executable, "-c", _PEAK, *map(str, files)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for f, line, total in zip(files, r.stdout.splitlines(), (big, big + 1024), strict=True):
        msg, grown = line.rsplit("|", 1)
        assert msg == (
            f"{f} has NIfTI header extensions of {total} bytes or more; "
            "expected at most 64 MiB of extensions, each at least 8 bytes"
        )
        assert float(grown) < 24, f"peak memory grew {grown} MiB reading {f.name}"


def test_vox_offset_is_checked_as_nibabel_uses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nibabel resets the image header's vox_offset to 0; the offset it inflates up to is the array
    proxy's. Past 64 MiB the image is refused, by the header check and, without it, after loading."""
    import volsam.io.nifti

    far = (65 << 20) + 16
    path = nifti_with_extensions(tmp_path / "far.nii.gz", [], vox_offset=far)
    img = nib.load(path)
    assert img.dataobj.offset == far and img.header.get_data_offset() == 0
    expected = f"{path} puts its voxels {far} bytes in (vox_offset); expected at most 64 MiB of header extensions"
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(err.value) == expected
    monkeypatch.setattr(volsam.io.nifti, "check_nifti_header", lambda p: None)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(err.value) == expected


def test_odd_extension_blocks(tmp_path: Path) -> None:
    many = nifti_with_extensions(tmp_path / "many.nii.gz", [16] * 1100)
    with pytest.raises(ImageReadError, match="more than 1024 NIfTI header extensions"):
        read_image(many)
    negative = nifti_with_extensions(tmp_path / "negative.nii", [], vox_offset=0)
    raw = bytearray(gzip.decompress(negative.read_bytes()))
    raw[348:352] = b"\1\0\0\0"
    negative.write_bytes(bytes(raw[:352]) + np.array([-8, 0], "<i4").tobytes() + bytes(64))
    with pytest.raises(ImageReadError, match="extensions of one of -8 bytes"):
        read_image(negative)
    fine = nifti_with_extensions(tmp_path / "fine.nii.gz", [32, 4096], data=bytes(range(8)))
    assert read_image(fine, dtype=None).array.tobytes(order="F") == bytes(range(8))
    assert len(nib.load(fine).header.extensions) == 2
