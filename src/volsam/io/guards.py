"""Checks made on a header before any library reads voxels: voxel budget, header length, MetaImage
``NDims``, and the detached data files an NRRD or MetaImage header names (and the policy on them)."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from volsam.io.volume import DetachedDataError, ImageHeader, ImageReadError, _one_line

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


DataFilePolicy = Literal["allow", "refuse"] | Path


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


def _check_budget(header: ImageHeader, p: Path, max_voxels: int | None) -> None:
    """One-line ImageReadError for a declared size that is empty or over ``max_voxels`` (None: no limit)."""
    if any(s <= 0 for s in header.shape):
        raise ImageReadError(f"{p} declares an empty image (shape {header.shape}); expected every size >= 1")
    voxels = header.voxels * header.components
    if max_voxels is not None and voxels > max_voxels:
        raise ImageReadError(
            f"{p} declares {voxels} voxels (shape {header.shape}), more than the limit of {max_voxels} (--max-voxels)"
        )
