"""Reading and writing image files; the only module of volsam that touches image files.

Arrays and affines follow the coordinate convention of :mod:`volsam.transforms`: arrays in file voxel
order (X, Y, Z), affines voxel -> world mm RAS+. Supported inputs: NIfTI (``.nii``, ``.nii.gz``) via
nibabel; NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) via SimpleITK; a DICOM series
as a directory (or one of its files) via SimpleITK's ``ImageSeriesReader``. Masks are written as label
maps on exactly the reference grid in the format named by the output extension, or as DICOM-SEG
(``.dcm``, via highdicom) for a DICOM reference. ITK/DICOM world coordinates are LPS; they are converted
to and from RAS+ here.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from numpy.typing import DTypeLike, NDArray

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "FORMATS",
    "DetachedDataError",
    "ImageHeader",
    "ImageReadError",
    "Volume",
    "check_output_path",
    "default_output_path",
    "image_info",
    "nifti_bytes",
    "read_header",
    "read_image",
    "volume_from_array",
    "write_mask",
]

#: Values of :attr:`Volume.format`.
FORMATS = ("nifti", "nrrd", "mha", "mhd", "dicom", "array")

_EXPECTED = "expected a .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd file or a DICOM series directory"
# RAS <-> LPS: negate world x and y (its own inverse).
_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])


#: Voxel budget a server gives one image (``volsam serve --max-voxels``): 2^28 voxels is 1 GiB as float32,
#: e.g. 512 x 512 x 1024; :func:`read_image` checks it against the header before reading any voxel.
DEFAULT_MAX_VOXELS = 2**28
# A header (NRRD up to its blank line, MetaImage up to ElementDataFile) longer than this is refused: real
# ones are kilobytes, and one that never ends must not be scanned (or its data read) without bound.
MAX_HEADER_BYTES = 8 << 20
# Most NIfTI extension bytes (between the header and vox_offset) a .nii.gz may make us inflate and skip.
_MAX_NIFTI_OFFSET = 64 << 20
# Detached data files a pattern or LIST may name before the header is refused.
_MAX_DATA_FILES = 4096


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
    paths joined to the header's folder (not resolved); empty when the voxels follow the header inline.
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


DataFilePolicy = Literal["allow", "refuse"] | Path


def read_header(path: str | os.PathLike[str], *, data_files: DataFilePolicy = "allow") -> ImageHeader:
    """Read what an image's header declares (shape, components, detached data files), no voxels.

    The one header reader of volsam: :func:`read_image` checks its voxel budget with it, and ``volsam
    serve`` refuses detached data files with it. NRRD headers are parsed whole, up to their blank line
    (or the end of an ``.nhdr``), MetaImage headers up to ``ElementDataFile``; a header longer than
    :data:`MAX_HEADER_BYTES` is refused. ``data_files``: ``"allow"`` detached data files, ``"refuse"``
    them, or a folder they must resolve inside (checked before any library opens them).
    Raises :class:`ImageReadError` (one line), :class:`DetachedDataError` for a refused data file.
    """
    p, fmt = _checked_path(path)
    files = _data_files(p, fmt) if fmt in ("nrrd", "mha", "mhd") else ()
    _check_data_files(p, files, data_files)
    with _library_errors(fmt, p):
        if fmt == "nifti":
            hdr = nib.load(p, mmap=False).header
            shape = tuple(int(s) for s in hdr.get_data_shape())
            return ImageHeader(fmt, shape, len(hdr.get_data_dtype().fields or ()) or 1)
        if fmt == "dicom":
            return _dicom_header(p)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        shape = tuple(int(s) for s in reader.GetSize())
        return ImageHeader(fmt, shape, int(reader.GetNumberOfComponents()), files)


def _check_data_files(p: Path, files: tuple[Path, ...], policy: DataFilePolicy) -> None:
    if not files or policy == "allow":
        return
    what = "an .nrrd file must hold its voxels inline (no 'data file:' field)"
    if p.name.lower().endswith((".mha", ".mhd")):
        what = "an .mha file must hold its voxels inline (ElementDataFile = LOCAL)"
    if policy == "refuse":
        raise DetachedDataError(f"{p} names a separate data file: {what}")
    root = Path(policy).resolve()
    for f in files:
        try:
            inside = f.resolve().is_relative_to(root)
        except (OSError, RuntimeError):
            inside = False
        if not inside:
            raise DetachedDataError(f"{p} names a data file outside the data root: {what}, or name one inside it")


MAX_META_DIMS = 16
"""Largest ``NDims`` a MetaImage header may declare (ITK images have at most a few; volsam reads 3 or 4)."""


def _header_lines(p: Path) -> Iterator[bytes]:
    """The lines of ``p`` (without line ends) up to :data:`MAX_HEADER_BYTES`; ImageReadError past that."""
    read = 0
    with p.open("rb") as f:
        while line := f.readline(MAX_HEADER_BYTES + 1 - read):
            read += len(line)
            if read > MAX_HEADER_BYTES:
                raise ImageReadError(f"{p} has a header longer than {MAX_HEADER_BYTES >> 20} MiB (not an image?)")
            yield line.rstrip(b"\r\n")


def _data_files(p: Path, fmt: str) -> tuple[Path, ...]:
    """Detached data files named by an NRRD or MetaImage header (see :func:`read_header`).

    Matching is looser than the libraries' own (any case, any spacing, ``:`` or ``=``), so a header they
    read as naming a data file is never read here as inline.
    """
    lines = _header_lines(p)
    first = next(lines, b"")
    nrrd = fmt == "nrrd"
    if nrrd and not first.startswith(b"NRRD"):
        raise ImageReadError(f"{p} is not an NRRD file (its first line is not NRRD000N)")
    spec: bytes | None = None
    for line in itertools.chain([] if nrrd else [first], lines):
        if nrrd and not line:
            break  # the blank line that ends an NRRD header; the voxels follow
        if nrrd and line.lstrip().startswith(b"#"):
            continue
        key, sep, value = _split_field(line)
        if not sep:
            continue
        name = key.lower().replace(b" ", b"").replace(b"\t", b"")
        if not nrrd and name == b"ndims":
            _check_ndims(p, value.strip())
        if nrrd and name == b"datafile":
            spec = value.lstrip(b"=").strip()
            break
        if not nrrd and name == b"elementdatafile":
            if key.strip() != b"ElementDataFile" and value.strip().upper() == b"LOCAL":
                continue  # MetaIO may not take this spelling as the end of the header: read on
            spec = value.strip()
            break
    else:
        if not nrrd:
            raise ImageReadError(f"{p} has no ElementDataFile line (not a MetaImage header?)")
    if spec is None or (not nrrd and spec.upper() == b"LOCAL"):
        return ()
    return _expand_data_files(p, spec, lines)


def _check_ndims(p: Path, value: bytes) -> None:
    """A MetaImage ``NDims`` must be an integer 1..MAX_META_DIMS: MetaIO (SimpleITK 2.x) never returns from a
    negative NDims followed by a DimSize line, so such a header must not reach it."""
    if not value.isdigit() or not 1 <= int(value) <= MAX_META_DIMS:
        shown = value[:20].decode("ascii", "replace")
        raise ImageReadError(f"{p} declares NDims = {shown!r}; expected an integer from 1 to {MAX_META_DIMS}")


def _split_field(line: bytes) -> tuple[bytes, bytes, bytes]:
    """``key``, separator and value of a header line, split at its first ``:`` or ``=``."""
    cut = min((i for i in (line.find(b":"), line.find(b"=")) if i >= 0), default=-1)
    if cut < 0:
        return line, b"", b""
    return line[:cut], line[cut : cut + 1], line[cut + 1 :]


def _expand_data_files(p: Path, spec: bytes, rest: Iterator[bytes]) -> tuple[Path, ...]:
    """Data files of a ``data file:``/``ElementDataFile`` value: one name, ``LIST`` (names on the lines
    that follow) or a printf pattern with ``min max step``."""
    words = spec.split()
    if not words:
        raise ImageReadError(f"{p} names an empty data file")
    names: list[bytes]
    if words[0].upper() == b"LIST":
        names = [line.strip() for line in itertools.islice(rest, _MAX_DATA_FILES + 1) if line.strip()]
    elif len(words) >= 4 and b"%" in words[0]:
        try:
            # One plain %d (width at most 2 digits): a pattern like %999999999d would allocate gigabytes.
            if not re.fullmatch(rb"[^%]*%0?\d{0,2}d[^%]*", words[0]):
                raise ValueError(f"expected one %d in {words[0][:40]!r}")
            lo, hi, step = (int(w) for w in words[1:4])
            count = (hi - lo) // step + 1 if step else -1
            if not 0 < count <= _MAX_DATA_FILES:
                raise ValueError(f"{count} files")
            names = [words[0] % (lo + i * step) for i in range(count)]
        except (ValueError, TypeError, OverflowError) as err:
            raise ImageReadError(f"{p} names data files by a pattern volsam cannot expand: {_one_line(err)}") from err
    else:
        names = [spec]
    if len(names) > _MAX_DATA_FILES:
        raise ImageReadError(f"{p} names more than {_MAX_DATA_FILES} data files")
    return tuple(p.parent / os.fsdecode(n) for n in names)


def _dicom_header(p: Path) -> ImageHeader:
    _, files, _, _ = _dicom_series(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.ReadImageInformation()
    size = [int(s) for s in reader.GetSize()]
    shape = (*size[:2], len(files) * (size[2] if len(size) > 2 else 1))
    return ImageHeader("dicom", shape, int(reader.GetNumberOfComponents()))


def _check_budget(header: ImageHeader, p: Path, max_voxels: int | None) -> None:
    """One-line ImageReadError for a declared size that is empty or over ``max_voxels`` (None: no limit)."""
    if any(s <= 0 for s in header.shape):
        raise ImageReadError(f"{p} declares an empty image (shape {header.shape}); expected every size >= 1")
    voxels = header.voxels * header.components
    if max_voxels is not None and voxels > max_voxels:
        raise ImageReadError(
            f"{p} declares {voxels} voxels (shape {header.shape}), more than the limit of {max_voxels} (--max-voxels)"
        )


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


def _cast(data: np.ndarray, dtype: DTypeLike | None) -> np.ndarray:
    return data if dtype is None else data.astype(dtype, copy=False)


def _read_nifti(p: Path, dtype: DTypeLike | None) -> Volume:
    img = nib.load(p, mmap=False)
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageReadError(f"expected a NIfTI image, got {type(img).__name__} in {p}")
    # nibabel inflates a .nii.gz only up to vox_offset + the declared voxel bytes (which the budget
    # bounds); a huge vox_offset would make it inflate and discard that much first.
    if int(img.header.get_data_offset()) > _MAX_NIFTI_OFFSET:
        raise ImageReadError(
            f"{p} puts its voxels {int(img.header.get_data_offset())} bytes in (vox_offset); "
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


def _read_itk(p: Path, fmt: str, dtype: DTypeLike | None) -> Volume:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
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


# --------------------------------------------------------------------------------------------- writing

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


def _compact_intensities(data: np.ndarray) -> np.ndarray:
    """int16 for float arrays holding only integers within int16 (CT in HU, most MR), else unchanged."""
    if np.issubdtype(data.dtype, np.floating) and data.size:
        lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
        if -32768 <= lo and hi <= 32767 and np.array_equal(data, np.round(data)):
            return data.astype(np.int16)
    return data


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


def _write_itk(data: np.ndarray, reference: Volume, tmp: Path) -> None:
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    lps = _FLIP_XY @ reference.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(d) for d in (lps[:3, :3] / spacing).ravel()])
    img.SetOrigin([float(o) for o in lps[:3, 3]])
    sitk.WriteImage(img, str(tmp), useCompression=True)


def _software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("volsam")
    except PackageNotFoundError:
        return "unknown"


def _write_dicom_seg(data: np.ndarray, reference: Volume, tmp: Path) -> None:
    """DICOM-SEG with one BINARY segment per nonzero label; frame k is source file ``dicom_files[k]``."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    files = list(reference.meta["dicom_files"])
    if len(files) != reference.shape[2]:
        raise ValueError(f"DICOM reference lists {len(files)} files for {reference.shape[2]} slices; cannot map frames")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    frames = data.transpose(2, 1, 0)  # (slice k, row j, column i)
    labels = [int(v) for v in np.unique(frames) if v != 0]
    version = _software_version()
    algorithm = hd.AlgorithmIdentificationSequence(
        name="volsam", family=codes.cid7162.ArtificialIntelligence, version=version
    )

    def describe(number: int, label: str) -> hd.seg.SegmentDescription:
        return hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.cid7150.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
        )

    if labels:
        # Segment numbers must run 1..N; label value v becomes segment labels.index(v) + 1.
        lut = np.zeros(max(labels) + 1, dtype=np.uint16)
        lut[labels] = np.arange(1, len(labels) + 1)
        pixels = lut[frames]
        if len(labels) < 256:
            pixels = pixels.astype(np.uint8)
        descriptions = [describe(n, f"label {v}") for n, v in enumerate(labels, start=1)]
    else:
        pixels = np.zeros(frames.shape, dtype=np.bool_)
        descriptions = [describe(1, "label 1")]
    series_number = int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="volsam",
        manufacturer_model_name="volsam",
        software_versions=version,
        device_serial_number="0",
        content_label="VOLSAM",
        content_description="volsam promptable segmentation",
        omit_empty_frames=bool(labels),
    )
    seg.save_as(tmp)


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
