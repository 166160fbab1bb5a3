"""DICOM series for the datastore: refuse irregular series before reading them, and write a Volume as a
series (to put a NIfTI image, or a test volume, into a PACS).

Irregular series are refused, not resampled: a series whose slice positions along the slice normal are
not evenly spaced (a missing slice, a gantry-tilt or variable-thickness acquisition), that mixes
orientations or in-plane sizes, or repeats a position. ITK's series reader would read such a series onto
an even grid with only a warning (placing every slice at the wrong depth past a gap); a segmentation
saved on that grid would not lie on the source slices, and its DICOM-SEG would be wrong. dcm2niix and 3D
Slicer also stop or ask before resampling such series; a user who wants it resampled does it explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from volsam.datastore.base import SeriesGeometryError
from volsam.io import Volume

__all__ = ["check_series_files", "check_series_geometry", "write_dicom_series"]

# Relative tolerance on slice gaps: scanners write positions rounded to ~0.01 mm, and 1% of a 0.5 mm
# gap is 5 um, far below any real missing slice (a whole gap) or uneven spacing worth refusing.
_GAP_TOLERANCE = 0.01
_ORIENTATION_TOLERANCE = 1e-4
_MR_CT = {"CT": CTImageStorage, "MR": MRImageStorage}


def check_series_geometry(headers: Sequence[Dataset], what: str = "series") -> list[int]:
    """Check that ``headers`` (one dataset per slice, pixels not needed) form a regular 3D grid.

    Returns the slice order (indices into ``headers``, increasing along the slice normal). Raises
    :class:`SeriesGeometryError` naming the problem: fewer than 2 slices is accepted as is; a missing
    ImagePositionPatient/ImageOrientationPatient, mixed orientations or sizes, repeated positions, a
    missing slice (a gap a whole multiple of the usual spacing) or otherwise uneven spacing are refused.
    """
    if len(headers) < 2:
        return list(range(len(headers)))
    try:
        iops = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
        ipps = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
        sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    except (AttributeError, TypeError, ValueError) as err:
        raise SeriesGeometryError(f"{what}: a slice lacks a usable position, orientation or size ({err})") from err
    if iops.shape != (len(headers), 6) or ipps.shape != (len(headers), 3):
        raise SeriesGeometryError(f"{what}: malformed ImageOrientationPatient or ImagePositionPatient")
    if np.abs(iops - iops[0]).max() > _ORIENTATION_TOLERANCE:
        raise SeriesGeometryError(f"{what}: slices have different orientations; expected one stack of parallel slices")
    if len(sizes) != 1:
        raise SeriesGeometryError(f"{what}: slices have different sizes {sorted(sizes)}; expected one size")
    normal = np.cross(iops[0, :3], iops[0, 3:])
    depth = ipps @ normal
    order = [int(i) for i in np.argsort(depth, kind="stable")]
    gaps = np.diff(depth[order])
    step = float(np.median(gaps))
    if step <= 0 or gaps.min() <= _GAP_TOLERANCE * max(step, 1e-6):
        i = int(np.argmin(gaps))
        raise SeriesGeometryError(
            f"{what}: two slices share the position {depth[order][i]:.2f} mm along the slice normal; "
            "expected one slice per position"
        )
    off = np.flatnonzero(np.abs(gaps - step) > _GAP_TOLERANCE * step)
    if off.size:
        i = int(off[0])
        z0, z1 = depth[order][i], depth[order][i + 1]
        ratio = gaps[i] / step
        if abs(ratio - round(ratio)) <= _GAP_TOLERANCE * round(ratio) and round(ratio) >= 2:
            raise SeriesGeometryError(
                f"{what}: {round(ratio) - 1} slice(s) missing between {z0:.2f} and {z1:.2f} mm along the slice "
                f"normal (gap {gaps[i]:.2f} mm, slices {step:.2f} mm apart); refusing an incomplete series"
            )
        raise SeriesGeometryError(
            f"{what}: uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm, mostly {step:.3f} mm); "
            "refusing a series that is not one regular grid (resample it first)"
        )
    # Slices must also lie on one line along the normal: an in-plane shift between slices is a sheared
    # grid, which a 4x4 affine cannot hold.
    ortho = ipps[order] - np.outer(depth[order] - depth[order][0], normal) - ipps[order][0]
    spacing = [float(v) for v in headers[0].PixelSpacing] if "PixelSpacing" in headers[0] else [1.0, 1.0]
    if np.abs(ortho).max() > 0.5 * min(spacing):
        raise SeriesGeometryError(
            f"{what}: slice origins shift in-plane by up to {np.abs(ortho).max():.2f} mm (a sheared or tilted "
            "stack); refusing a series that is not one regular grid"
        )
    return order


def check_series_files(files: Sequence[str | Path], what: str = "series") -> None:
    """:func:`check_series_geometry` on the DICOM image files among ``files``, reading only their headers.

    Files that are not DICOM, and DICOM objects without pixels (a DICOMDIR, a report), are skipped, as
    the series reader skips them; images of more than one series are refused (one series per folder).
    """
    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "Rows" in ds:
            headers.append(ds)
    series = {str(getattr(h, "SeriesInstanceUID", "")) for h in headers}
    if len(series) > 1:
        raise SeriesGeometryError(f"{what}: holds {len(series)} DICOM series; expected one series per folder")
    check_series_geometry(headers, what)


def write_dicom_series(
    volume: Volume,
    directory: str | Path,
    *,
    modality: str = "CT",
    patient_name: str = "Anonymous^volsam",
    patient_id: str = "VOLSAM0001",
    series_description: str = "volsam",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> list[Path]:
    """Write ``volume`` as a DICOM series (one CT or MR Image Storage file per slice k) in ``directory``.

    Geometry comes from the affine (RAS+ -> DICOM LPS): row direction = array axis X, column direction =
    axis Y, slice k at origin + k * axis Z. Intensities must be integers within int16 (CT in HU, most MR);
    they are stored as signed 16-bit with RescaleSlope 1 and RescaleIntercept 0. Files are named
    ``IM{k:04d}.dcm``; an existing file is never overwritten (FileExistsError). Returns the paths in slice
    order.
    """
    if modality not in _MR_CT:
        raise ValueError(f"expected modality 'CT' or 'MR', got {modality!r}")
    data = np.asarray(volume.array)
    if not np.array_equal(data, np.round(data)) or data.min() < -32768 or data.max() > 32767:
        raise ValueError("expected integer intensities within int16 (CT in HU, most MR) to write a DICOM series")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    sx, sy, sz = (float(v) for v in np.linalg.norm(lps[:3, :3], axis=0))
    row_dir, col_dir = lps[:3, 0] / sx, lps[:3, 1] / sy
    normal = np.cross(row_dir, col_dir)
    if float(np.dot(normal, lps[:3, 2] / sz)) < 1 - 1e-3:
        # A left-handed or sheared grid: slices would stack against the normal DICOM readers derive.
        raise ValueError("expected an affine whose slice axis follows row x column directions (right-handed)")
    study = study_instance_uid or generate_uid()
    series = series_instance_uid or generate_uid()
    frame = generate_uid()
    sop_class = _MR_CT[modality]
    paths = []
    for k in range(data.shape[2]):
        target = out / f"IM{k:04d}.dcm"
        if target.exists():
            raise FileExistsError(f"refusing to overwrite {target}")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = uid = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "volsam"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, k + 1
        ds.SeriesDescription = series_description
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [round(float(v), 6) for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [round(sy, 6), round(sx, 6)]  # DICOM order: between rows, between columns
        ds.SliceThickness = round(sz, 6)
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if modality == "CT":
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
            ds.KVP = ""
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
            ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "3D", "", "", ""
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T).astype("<i2").tobytes()
        ds.save_as(target, enforce_file_format=True)
        paths.append(target)
    return paths
