"""NIfTI-1/2 (``.nii``, ``.nii.gz``) via nibabel: reading, writing, and in-memory ``.nii.gz`` bytes."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import DTypeLike

from volsam.io.guards import _MAX_NIFTI_OFFSET, check_nifti_header
from volsam.io.volume import ImageHeader, ImageReadError, Volume, _compact_intensities


def _cast(data: np.ndarray, dtype: DTypeLike | None) -> np.ndarray:
    return data if dtype is None else data.astype(dtype, copy=False)


def _load(p: Path) -> nib.spatialimages.SpatialImage:
    """nibabel's image of ``p``, after :func:`~volsam.io.guards.check_nifti_header` bounded what it reads."""
    check_nifti_header(p)
    return nib.load(p, mmap=False)


def _nifti_header(p: Path) -> ImageHeader:
    hdr = _load(p).header
    shape = tuple(int(s) for s in hdr.get_data_shape())
    return ImageHeader("nifti", shape, len(hdr.get_data_dtype().fields or ()) or 1)


def _read_nifti(p: Path, dtype: DTypeLike | None) -> Volume:
    img = _load(p)
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageReadError(f"expected a NIfTI image, got {type(img).__name__} in {p}")
    # nibabel inflates a .nii.gz only up to the data offset + the declared voxel bytes (which the budget
    # bounds); a huge offset would make it inflate and discard that much first. The offset it uses is the
    # array proxy's: the image's header has vox_offset reset to 0.
    offset = int(getattr(img.dataobj, "offset", 0))
    if offset > _MAX_NIFTI_OFFSET:
        raise ImageReadError(
            f"{p} puts its voxels {offset} bytes in (vox_offset); "
            f"expected at most {_MAX_NIFTI_OFFSET >> 20} MiB of header extensions"
        )
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ImageReadError(f"expected a 3D image, got shape {tuple(img.shape)} in {p}")
    if img.get_data_dtype().fields is not None:
        raise ImageReadError(f"expected a scalar image, got vector voxels ({img.get_data_dtype()}) in {p}")
    if dtype is not None and np.dtype(dtype) in (np.float32, np.float64):
        data = img.get_fdata(dtype=np.dtype(dtype))
    else:
        data = _cast(np.asanyarray(img.dataobj), dtype)
    meta = {"qform_code": int(img.header["qform_code"]), "sform_code": int(img.header["sform_code"])}
    return Volume(np.asarray(data).reshape(shape, order="A"), img.affine, p, "nifti", meta)


def nifti_bytes(array: np.ndarray, reference: Volume, compresslevel: int = 1) -> bytes:
    """``array`` (X, Y, Z) on ``reference``'s grid as the bytes of a gzip-compressed NIfTI-1 file.

    Float arrays holding only integers within int16 are stored as int16 (most CT and MR images), which
    halves what a viewer downloads; others keep their dtype.
    """
    data = np.asarray(array)
    if data.shape != reference.shape:
        raise ValueError(f"array shape {data.shape} differs from the reference image shape {reference.shape}")
    img = _nifti_image(_compact_intensities(data), reference)
    return gzip.compress(img.to_bytes(), compresslevel=compresslevel)


def _nifti_image(data: np.ndarray, reference: Volume) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, reference.affine)
    img.set_data_dtype(data.dtype)
    # Keep a NIfTI reference's form codes (e.g. sform 4 = MNI); others are scanner coordinates (1).
    codes = reference.meta if reference.format == "nifti" else {}
    img.set_sform(reference.affine, code=int(codes.get("sform_code", 1)) or 1)
    img.set_qform(reference.affine, code=int(codes.get("qform_code", 1)))
    img.header.set_xyzt_units("mm")
    return img


def _write_nifti(data: np.ndarray, reference: Volume, tmp: Path) -> None:
    nib.save(_nifti_image(data, reference), tmp)
