"""NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) via SimpleITK; ITK geometry is LPS, converted
to and from RAS+ here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import DTypeLike

from volsam.io.volume import ImageHeader, ImageReadError, Volume

# RAS <-> LPS: negate world x and y (its own inverse).
_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])


def _sitk_affine(img: sitk.Image) -> np.ndarray:
    """RAS+ voxel -> mm affine of a 3D SimpleITK image (whose geometry is LPS)."""
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)
    lps[:3, 3] = img.GetOrigin()
    return _FLIP_XY @ lps


def _sitk_array(img: sitk.Image, dtype: DTypeLike | None) -> np.ndarray:
    """(X, Y, Z) copy of a SimpleITK image's voxels (Fortran-contiguous, like nibabel's arrays)."""
    view = sitk.GetArrayViewFromImage(img).transpose(2, 1, 0)
    return np.array(view, dtype=view.dtype if dtype is None else dtype, order="K", copy=True)


def _reader(p: Path, fmt: str) -> sitk.ImageFileReader:
    """A reader pinned to the ImageIO whose header :mod:`volsam.io.guards` parsed (not one ITK picks)."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NrrdImageIO" if fmt == "nrrd" else "MetaImageIO")
    reader.SetFileName(str(p))
    return reader


def _itk_header(p: Path, fmt: str, files: tuple[Path, ...]) -> ImageHeader:
    reader = _reader(p, fmt)
    reader.ReadImageInformation()
    shape = tuple(int(s) for s in reader.GetSize())
    return ImageHeader(fmt, shape, int(reader.GetNumberOfComponents()), files)


def _read_itk(p: Path, fmt: str, dtype: DTypeLike | None) -> Volume:
    reader = _reader(p, fmt)
    reader.ReadImageInformation()
    size = tuple(int(s) for s in reader.GetSize())
    if reader.GetNumberOfComponents() != 1:
        raise ImageReadError(
            f"expected a scalar image, got {reader.GetNumberOfComponents()} components per voxel in {p}"
        )
    if len(size) > 3 and all(s == 1 for s in size[3:]):
        reader.SetExtractIndex([0] * len(size))
        reader.SetExtractSize([*size[:3]] + [0] * (len(size) - 3))
    elif len(size) != 3:
        raise ImageReadError(f"expected a 3D image, got shape {size} in {p}")
    img = reader.Execute()
    return Volume(_sitk_array(img, dtype), _sitk_affine(img), p, fmt, {})


def _write_itk(data: np.ndarray, reference: Volume, tmp: Path) -> None:
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    lps = _FLIP_XY @ reference.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(d) for d in (lps[:3, :3] / spacing).ravel()])
    img.SetOrigin([float(o) for o in lps[:3, 3]])
    sitk.WriteImage(img, str(tmp), useCompression=True)
