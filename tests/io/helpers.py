"""Shared builders for the image I/O tests: test patterns, NIfTI files and a synthetic CT DICOM series."""

from __future__ import annotations

import gzip
import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

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


def _assert_one_line(err: pytest.ExceptionInfo[BaseException], path: Path) -> None:
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg


def nifti_with_extensions(
    path: Path, sizes: list[int], vox_offset: float | None = None, data: bytes = bytes(8)
) -> Path:
    """A 2 x 2 x 2 uint8 NIfTI-1 ``.nii.gz`` whose header extensions have ``sizes`` (bytes each, the 8-byte
    size/code prefix included; zeros as content), with ``vox_offset`` (None: just past the extensions) and
    ``data`` after them. Written as gzip members, one per MiB of zeros compressed once, so GiBs of
    extensions take neither memory nor time to make (readers take concatenated members as one stream)."""
    hdr = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)).header.copy()
    hdr["vox_offset"] = 352 + sum(sizes) if vox_offset is None else vox_offset
    mib = gzip.compress(b"\0" * (1 << 20), compresslevel=9)

    def zeros(n: int) -> Iterator[bytes]:
        yield from itertools.repeat(mib, n >> 20)
        if n % (1 << 20):
            yield gzip.compress(b"\0" * (n % (1 << 20)))

    with path.open("wb") as f:
        f.write(gzip.compress(hdr.binaryblock + (b"\1\0\0\0" if sizes else b"\0\0\0\0")))
        for size in sizes:
            f.write(gzip.compress(np.array([size, 0], "<i4").tobytes()))
            f.writelines(zeros(max(size - 8, 0)))
        f.writelines(zeros(max(int(hdr["vox_offset"]) - 352 - sum(sizes), 0)))
        f.write(gzip.compress(data))
    return path
