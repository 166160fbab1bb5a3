"""Image I/O tests: geometry round trips per format, DICOM series and DICOM-SEG, errors, atomic writes."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from volsam import io
from volsam.io import ImageReadError, Volume, read_image, volume_from_array, write_mask
from volsam.transforms import voxel_to_world, world_to_voxel

CH2 = Path("/usr/share/mricron/templates/ch2.nii.gz")


def _rot(axis: int, deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    a, b = [i for i in range(3) if i != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return r


def _oblique_affine() -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = _rot(0, 20) @ _rot(2, -35) @ np.diag([0.7, 0.9, 2.5])
    a[:3, 3] = [-31.5, 12.25, 40.0]
    return a


def _image(shape: tuple[int, int, int] = (20, 16, 12)) -> np.ndarray:
    """Asymmetric test pattern, so any axis flip or permutation changes it."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (3 * i + 50 * j + 700 * k - 400).astype(np.int16)


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def _digest(path: Path) -> str:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files if f.is_file())).hexdigest()


def _write_ct_series(
    directory: Path,
    hu: np.ndarray,
    *,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),  # DICOM order: (row spacing, column spacing)
    slice_spacing: float = 2.5,
    origin_lps: tuple[float, float, float] = (-30.0, 40.0, 100.0),
    iop: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    prefix: str = "im",
) -> tuple[np.ndarray, list[str], str]:
    """Write ``hu`` (X=columns, Y=rows, Z=slices) as a CT series with shuffled file names.

    Returns the RAS affine the DICOM standard implies, the SOP instance UIDs by slice and the series UID.
    """
    directory.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_dir, col_dir)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    order = np.random.default_rng(7).permutation(hu.shape[2])
    uids = []
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "P001", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "test"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 3, int(order[k]) + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in np.array(origin_lps) + k * slice_spacing * normal]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
        ds.SliceThickness = slice_spacing
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = (hu[:, :, k].T + 1024).astype("<i2").tobytes()
        ds.save_as(directory / f"{prefix}{order[k]:03d}.dcm", enforce_file_format=True)
        uids.append(uid)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel_spacing[1]
    lps[:3, 1] = col_dir * pixel_spacing[0]
    lps[:3, 2] = normal * slice_spacing
    lps[:3, 3] = origin_lps
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, uids, series


# ----------------------------------------------------------------------------------------------- reading


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


# ----------------------------------------------------------------------------------------------- writing


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


# ------------------------------------------------------------------------------------------------ errors


def _assert_one_line(err: pytest.ExceptionInfo[BaseException], path: Path) -> None:
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg


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


@pytest.mark.parametrize("ndims", ["-1", "-2", "0", "70", "x"])
def test_metaimage_with_a_bad_ndims_is_refused_before_metaio_sees_it(tmp_path, ndims):
    """MetaIO never returns from ``NDims = -1`` followed by ``DimSize`` (found by tests/fuzz): run in a child
    process with a timeout, so a regression fails instead of hanging the suite."""
    import subprocess
    import sys

    path = tmp_path / "bad.mha"
    path.write_bytes(
        f"ObjectType = Image\nNDims = {ndims}\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
        "ElementDataFile = LOCAL\n".encode() + bytes(8)
    )
    code = (
        "import sys\nfrom volsam.io import ImageReadError, read_image\n"
        "try:\n    read_image(sys.argv[1])\nexcept ImageReadError as e:\n    print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == (
        f"{path} declares NDims = {ndims!r}; expected an integer from 1 to {io.MAX_META_DIMS}"
    ), r.stdout + r.stderr
