"""Reading any supported image: the header first (:func:`read_header`, guards), then the format's reader."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import DTypeLike

from volsam.io.dicom import _dicom_header, _read_dicom
from volsam.io.guards import DataFilePolicy, _check_budget, _check_data_files, _data_files
from volsam.io.itk import _itk_header, _read_itk
from volsam.io.nifti import _nifti_header, _read_nifti
from volsam.io.volume import ImageHeader, ImageReadError, Volume, _checked_path, _one_line


@contextlib.contextmanager
def _library_errors(fmt: str, p: Path) -> Iterator[None]:
    """Turn the many exception types the libraries raise for corrupt files into one-line ImageReadErrors,
    with ITK's own warning lines (``WARNING: In /tmp/SimpleITK-build/...``) kept off stderr."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    except ImageReadError:
        raise
    except MemoryError as err:
        raise ImageReadError(f"cannot read {fmt} image {p}: not enough memory for its voxels") from err
    except Exception as err:
        why = _one_line(str(err).replace(str(p), p.name))  # the path is said once, in full, up front
        raise ImageReadError(f"cannot read {fmt} image {p} (corrupt or truncated?): {why}") from err
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def read_header(path: str | os.PathLike[str], *, data_files: DataFilePolicy = "allow") -> ImageHeader:
    """Read what an image's header declares (shape, components, detached data files), no voxels.

    The one header reader of volsam: :func:`read_image` checks its voxel budget with it, and ``volsam
    serve`` refuses detached data files with it. NRRD headers are parsed whole, up to their blank line
    (or the end of an ``.nhdr``) with teem's line ends (CR, LF, CRLF), MetaImage headers up to
    ``ElementDataFile`` (plain 'Key = value' lines only); ``LIST`` and ``%d`` patterns are expanded, as
    :mod:`volsam.io.guards` describes; a header longer than :data:`MAX_HEADER_BYTES` is refused.
    ``data_files``: ``"allow"`` detached data files, ``"refuse"`` them, or a folder they must resolve
    inside (checked before any library opens them).
    Raises :class:`ImageReadError` (one line), :class:`DetachedDataError` for a refused data file.
    """
    p, fmt = _checked_path(path)
    files = _data_files(p, fmt) if fmt in ("nrrd", "mha", "mhd") else None
    if files is not None:
        _check_data_files(p, files, data_files)
    with _library_errors(fmt, p):
        if fmt == "nifti":
            return _nifti_header(p)
        if fmt == "dicom":
            return _dicom_header(p)
        return _itk_header(p, fmt, files.paths() if files is not None else ())


def read_image(
    path: str | os.PathLike[str],
    dtype: DTypeLike | None = np.float32,
    *,
    max_voxels: int | None = None,
    data_files: DataFilePolicy = "allow",
) -> Volume:
    """Read a 3D scalar image (NIfTI, NRRD, MHA/MHD, or a DICOM series directory) into a :class:`Volume`.

    The array keeps file voxel order (X, Y, Z) and is cast to ``dtype`` (None keeps the stored type
    after intensity scaling, e.g. for label maps). Trailing singleton dimensions (X, Y, Z, 1) are dropped.
    A ``.dcm`` file selects the series it belongs to in its directory; a directory holding several series
    gives the first one GDCM lists (all are named in ``meta["series_ids"]``). The header is read first
    (:func:`read_header`): an empty image, or one declaring more than ``max_voxels`` voxels (None: no
    limit), is refused before any voxel is read or inflated; ``data_files`` as for :func:`read_header`.
    Raises :class:`ImageReadError` for a missing, unsupported, corrupt, non-3D or vector-valued image.
    """
    p, fmt = _checked_path(path)
    _check_budget(read_header(p, data_files=data_files), p, max_voxels)
    with _library_errors(fmt, p):
        if fmt == "nifti":
            return _read_nifti(p, dtype)
        if fmt == "dicom":
            return _read_dicom(p, dtype)
        return _read_itk(p, fmt, dtype)


def image_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of an image: path, format, shape, spacing (mm), orientation codes, stored dtype,
    intensity min/max/mean (finite voxels, after scaling) and the 4x4 affine (nested lists, RAS+ mm)."""
    vol = read_image(path, dtype=None)
    arr = vol.array
    finite = arr[np.isfinite(arr)] if np.issubdtype(arr.dtype, np.floating) else arr
    stats = (
        (float(finite.min()), float(finite.max()), float(finite.mean(dtype=np.float64)))
        if finite.size
        else (float("nan"),) * 3
    )
    info: dict[str, Any] = {
        "path": str(vol.path),
        "format": vol.format,
        "shape": vol.shape,
        "spacing": vol.spacing,
        "orientation": vol.orientation,
        "dtype": str(arr.dtype),
        "min": stats[0],
        "max": stats[1],
        "mean": stats[2],
        "affine": vol.affine.tolist(),
    }
    if vol.format == "dicom":
        info["series_instance_uid"] = vol.meta["series_instance_uid"]
        info["n_files"] = len(vol.meta["dicom_files"])
    return info
