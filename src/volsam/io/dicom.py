"""DICOM series (a directory, or one of its files) via SimpleITK's ``ImageSeriesReader``."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk
from numpy.typing import DTypeLike

from volsam.io.itk import _sitk_affine, _sitk_array
from volsam.io.volume import _EXPECTED, ImageHeader, ImageReadError, Volume


def _dicom_header(p: Path) -> ImageHeader:
    _, files, _, _ = _dicom_series(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.ReadImageInformation()
    size = [int(s) for s in reader.GetSize()]
    shape = (*size[:2], len(files) * (size[2] if len(size) > 2 else 1))
    return ImageHeader("dicom", shape, int(reader.GetNumberOfComponents()))


def _dicom_series(p: Path) -> tuple[Path, list[str], str, list[str]]:
    """(directory, files in slice order, series UID, every series UID in the directory) for ``p``."""
    directory = p if p.is_dir() else p.parent
    ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory)))
    if not ids:
        raise ImageReadError(f"no DICOM series found in {directory} ({_EXPECTED})")
    series = {sid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), sid)) for sid in ids}
    if p.is_dir():
        sid = ids[0]
    else:
        target = p.resolve()
        found = [s for s, files in series.items() if any(Path(f).resolve() == target for f in files)]
        if not found:
            raise ImageReadError(f"expected a DICOM image of a series, found none for {p}")
        sid = found[0]
    return directory, series[sid], sid, ids


def _read_dicom(p: Path, dtype: DTypeLike | None) -> Volume:
    directory, files, sid, ids = _dicom_series(p)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    img = reader.Execute()
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"expected a scalar image, got {img.GetNumberOfComponentsPerPixel()} components per voxel in {p}"
        )
    if img.GetDimension() == 2:
        img = sitk.JoinSeries([img])
    if img.GetDimension() != 3:
        raise ImageReadError(f"expected a 3D image, got shape {img.GetSize()} in {p}")
    meta = {
        "dicom_files": [str(f) for f in files],
        "series_instance_uid": sid,
        "series_ids": ids,
        "directory": str(directory),
    }
    return Volume(_sitk_array(img, dtype), _sitk_affine(img), p, "dicom", meta)
