"""Writing masks and images on a reference grid, atomically, in the format the output extension names."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from volsam.io.itk import _write_itk
from volsam.io.nifti import _write_nifti
from volsam.io.seg import _write_dicom_seg
from volsam.io.volume import Volume, _compact_intensities, _format_of

_OUTPUT_EXTENSIONS = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd"}
_OUTPUT_EXTENSIONS.update({".mha": "mha", ".mhd": "mhd", ".dcm": "dicom-seg"})


def _output_format(path: Path) -> str:
    name = path.name.lower()
    for ext in sorted(_OUTPUT_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext) and len(name) > len(ext):
            return _OUTPUT_EXTENSIONS[ext]
    raise ValueError(f"cannot tell the output format of {path}: use .nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd or .dcm")


def _label_array(mask: np.ndarray, shape: tuple[int, int, int]) -> NDArray[np.unsignedinteger]:
    """Validate a label map and return it as uint8, or uint16 when a label exceeds 255."""
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} differs from the reference image shape {shape}")
    if m.dtype == np.bool_:
        return m.astype(np.uint8)
    if m.size == 0:
        return m.astype(np.uint8)
    if np.issubdtype(m.dtype, np.floating):
        if not np.all(np.isfinite(m)) or not np.array_equal(m, np.round(m)):
            raise ValueError("mask must hold integer labels, got non-integer values")
    elif not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"mask must hold integer labels, got dtype {m.dtype}")
    lo, hi = m.min(), m.max()
    if lo < 0 or hi > 65535:
        raise ValueError(f"mask labels must lie in 0..65535, got {lo}..{hi}")
    return m.astype(np.uint8 if hi <= 255 else np.uint16)


def check_output_path(path: str | os.PathLike[str], reference: Volume | str | os.PathLike[str]) -> Path:
    """Refuse an output path before any work is done: an unknown extension, the input file itself, a path
    inside a DICOM input folder, a directory, or DICOM-SEG for an input that is not a DICOM series.

    ``reference`` is the input as a :class:`Volume` or as the path given (not yet read). Returns the path.
    """
    target = Path(path).expanduser()
    if isinstance(reference, Volume):
        source, dicom = reference.path, reference.format == "dicom"
        directory = Path(reference.meta.get("directory", reference.path or "")) if dicom else None
    else:
        source = Path(reference).expanduser()
        dicom = _format_of(source) == "dicom"
        directory = (source if source.is_dir() else source.parent) if dicom else None
    resolved = target.resolve()
    if source is not None and resolved == source.resolve():
        raise ValueError(f"refusing to overwrite the input image {source}")
    if directory is not None:
        directory = directory.resolve()
        if resolved == directory or directory in resolved.parents:
            raise ValueError(f"refusing to write inside the DICOM input directory {directory}")
    if resolved.is_dir():
        raise ValueError(f"output path {target} is a directory; give a file name")
    if _output_format(target) == "dicom-seg" and not dicom:
        raise ValueError(f"DICOM-SEG output ({target}) needs a DICOM series reference; give .nii.gz, .nrrd or .mha")
    return target


@contextlib.contextmanager
def _atomic_output(target: Path) -> Iterator[Path]:
    """Yield a path with ``target``'s name inside a fresh temporary directory beside it.

    On success every file written there (the header last, after detached data files such as
    ``.raw``/``.zraw``) is moved into place with :func:`os.replace`; the temporary directory is always
    removed, so a failure leaves any existing output untouched and no partial files behind.
    """
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".volsam-tmp", dir=target.parent))
    try:
        tmp = tmpdir / target.name
        yield tmp
        if not tmp.is_file():
            raise OSError(f"writer produced no file for {target}")
        for extra in sorted(tmpdir.iterdir()):
            if extra != tmp:
                os.replace(extra, target.parent / extra.name)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def write_mask(
    mask: np.ndarray,
    reference: Volume,
    path: str | os.PathLike[str],
    *,
    overwrite_ok: bool = True,
) -> Path:
    """Write a label map (X, Y, Z) on exactly ``reference``'s grid; returns the written path.

    Labels are stored as uint8 (uint16 when a label exceeds 255). The format follows the extension:
    ``.nii``/``.nii.gz`` (NIfTI, reference affine), ``.nrrd``/``.nhdr``/``.mha``/``.mhd`` (ITK, LPS
    origin/spacing/direction from the affine), ``.dcm`` (DICOM-SEG referencing the source series, one
    BINARY segment per label value; DICOM references only). Writes go to a temporary file beside the
    target and are moved into place atomically. Raises ValueError for a shape mismatch, non-integer
    labels, an unknown extension, or a path equal to the input or inside a DICOM input directory;
    FileExistsError when the target exists and ``overwrite_ok`` is False.
    """
    target = Path(path).expanduser()
    data = _label_array(mask, reference.shape)
    check_output_path(target, reference)
    fmt = _output_format(target)
    if fmt == "dicom-seg" and (reference.format != "dicom" or not reference.meta.get("dicom_files")):
        raise ValueError(f"DICOM-SEG output ({target}) needs a DICOM series reference, got {reference.format}")
    if not overwrite_ok and (target.exists() or target.is_symlink()):
        raise FileExistsError(f"output exists and overwriting is off: {target}")
    return _write_on_grid(data, reference, target, fmt)


def write_image(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write ``volume``'s intensities on its own grid as NIfTI, NRRD or MHA/MHD (by extension), atomically.

    Float arrays holding only integers within int16 are stored as int16 (CT in HU, most MR); others keep
    their dtype. Refuses to overwrite ``volume``'s own file; returns the written path.
    """
    target = Path(path).expanduser()
    fmt = _output_format(target)
    if fmt != "dicom-seg":
        check_output_path(target, volume)
    if fmt == "dicom-seg":
        raise ValueError(f"write_image writes NIfTI, NRRD or MHA/MHD, not DICOM ({target})")
    return _write_on_grid(_compact_intensities(np.asarray(volume.array)), volume, target, fmt)


def _write_on_grid(data: np.ndarray, reference: Volume, target: Path, fmt: str) -> Path:
    """Write ``data`` (X, Y, Z) on ``reference``'s grid in format ``fmt``, atomically; returns ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_output(target) as tmp:
        if fmt == "nifti":
            _write_nifti(data, reference, tmp)
        elif fmt == "dicom-seg":
            _write_dicom_seg(data, reference, tmp)
        else:
            _write_itk(data, reference, tmp)
    return target


def default_output_path(reference: Volume, stem_suffix: str | None = None) -> Path:
    """Default mask path beside the input, in the input's own format.

    ``scan.nii.gz`` -> ``scan_mask.nii.gz`` (likewise ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``; ``.nhdr``
    -> ``.nrrd``). A DICOM series directory ``dir`` -> the DICOM-SEG file ``dir_seg.dcm`` beside it (never
    inside it). ``stem_suffix`` replaces ``_mask`` (``_seg`` for DICOM). In-memory volumes have no default.
    """
    if reference.path is None or reference.format == "array":
        raise ValueError("the volume has no source path; give an output path")
    if reference.format == "dicom":
        directory = Path(reference.meta.get("directory", reference.path))
        suffix = "_seg" if stem_suffix is None else stem_suffix
        return directory.parent / f"{directory.name}{suffix}.dcm"
    suffix = "_mask" if stem_suffix is None else stem_suffix
    name = reference.path.name
    ext = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "mhd": ".mhd"}[reference.format]
    if name.lower().endswith(".nii"):
        ext = ".nii"
    for known in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(known):
            name = name[: -len(known)]
            break
    return reference.path.parent / f"{name}{suffix}{ext}"
