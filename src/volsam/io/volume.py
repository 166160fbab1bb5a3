"""The in-memory image (:class:`Volume`), what a header declares (:class:`ImageHeader`), the errors of
reading, and the format of a path; shared by every format module of :mod:`volsam.io`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

#: Values of :attr:`Volume.format`.
FORMATS = ("nifti", "nrrd", "mha", "mhd", "dicom", "array")

_EXPECTED = "expected a .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd file or a DICOM series directory"


class ImageReadError(ValueError):
    """An image file is missing, unreadable, corrupt or not a 3D scalar image (one-line message)."""


class DetachedDataError(ImageReadError):
    """A header names a separate data file where the caller refuses them (:func:`read_header`)."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header declares, read without touching its voxels (:func:`read_header`).

    ``shape`` is the full declared size (trailing singleton axes included; for DICOM, the first slice's
    size with the number of slices last), ``components`` the values per voxel, ``data_files`` the
    detached data files an NRRD (``data file:``) or MetaImage (``ElementDataFile``) header names, as
    paths joined to the header's folder (not resolved; every name the reader might take from an odd
    header, so possibly more than it opens); empty when the voxels follow the header inline.
    """

    format: str
    shape: tuple[int, ...]
    components: int = 1
    data_files: tuple[Path, ...] = ()

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 0


def _one_line(err: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(repr=False)
class Volume:
    """A 3D image: ``array`` (X, Y, Z) in file voxel order and ``affine`` (4x4 voxel -> mm RAS+).

    ``path`` is the source file or DICOM directory (None for in-memory arrays), ``format`` one of
    :data:`FORMATS`, ``meta`` format details (DICOM: ``dicom_files`` in slice order k,
    ``series_instance_uid``, ``series_ids``, ``directory``; NIfTI: ``qform_code``, ``sform_code``).
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    format: str = "array"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or 0 in self.array.shape:
            raise ValueError(f"expected a 3D array with every size >= 1, got shape {self.array.shape}")
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise ValueError(f"expected a finite 4x4 affine, got shape {aff.shape}")
        self.affine = aff
        if self.path is not None:
            self.path = Path(self.path)
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; expected one of {FORMATS}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (X, Y, Z) in voxels."""
        s = self.array.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along each array axis in mm (column norms of the affine)."""
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    @property
    def orientation(self) -> tuple[str, str, str]:
        """Direction each array axis increases towards, e.g. ('R', 'A', 'S') or ('L', 'P', 'S')."""
        codes = nib.aff2axcodes(self.affine)
        return (str(codes[0]), str(codes[1]), str(codes[2]))

    def __repr__(self) -> str:
        sp = "x".join(f"{s:g}" for s in self.spacing)
        return (
            f"Volume(shape={self.shape}, spacing={sp} mm, orientation={''.join(self.orientation)}, "
            f"dtype={self.array.dtype}, format={self.format!r}, path={str(self.path) if self.path else None!r})"
        )


def volume_from_array(array: np.ndarray, affine: np.ndarray | None = None) -> Volume:
    """Wrap an in-memory (X, Y, Z) array; ``affine`` None means identity (1 mm voxels, RAS)."""
    arr = np.asarray(array)
    return Volume(arr, np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64), None, "array")


def _format_of(path: Path) -> str | None:
    """Input format from the path: a directory or ``.dcm`` is DICOM, else by extension."""
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith(".mha"):
        return "mha"
    if name.endswith(".mhd"):
        return "mhd"
    if name.endswith(".dcm"):
        return "dicom"
    return None


def _checked_path(path: str | os.PathLike[str]) -> tuple[Path, str]:
    p = Path(path).expanduser()
    try:
        exists = p.exists()
    except OSError as err:  # e.g. a name longer than the file system allows (ENAMETOOLONG)
        raise ImageReadError(f"cannot open {p}: {_one_line(err)}") from err
    if not exists:
        raise ImageReadError(f"no such file or directory: {p} ({_EXPECTED})")
    fmt = _format_of(p)
    if fmt is None:
        raise ImageReadError(f"unsupported image type: {p} ({_EXPECTED})")
    return p, fmt


def _compact_intensities(data: np.ndarray) -> np.ndarray:
    """int16 for float arrays holding only integers within int16 (CT in HU, most MR), else unchanged."""
    if np.issubdtype(data.dtype, np.floating) and data.size:
        lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
        if -32768 <= lo and hi <= 32767 and np.array_equal(data, np.round(data)):
            return data.astype(np.int16)
    return data
