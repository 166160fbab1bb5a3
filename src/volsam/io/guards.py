"""Checks made on a header before any library reads voxels: voxel budget, header length, MetaImage
``NDims``, the detached data files an NRRD or MetaImage header names (and the policy on them), and
what a NIfTI header's extensions and ``vox_offset`` would make nibabel read or inflate."""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from volsam.io.volume import DetachedDataError, ImageHeader, ImageReadError, _one_line

#: Voxel budget a server gives one image (``volsam serve --max-voxels``): 2^28 voxels is 1 GiB as float32,
#: e.g. 512 x 512 x 1024; :func:`read_image` checks it against the header before reading any voxel.
DEFAULT_MAX_VOXELS = 2**28
# A header (NRRD up to its blank line, MetaImage up to ElementDataFile) longer than this is refused: real
# ones are kilobytes, and one that never ends must not be scanned (or its data read) without bound.
MAX_HEADER_BYTES = 8 << 20
# Most NIfTI extension bytes (between the header and vox_offset) a .nii.gz may make nibabel read into memory
# (it reads each extension whole while parsing the header), and the largest vox_offset (bytes inflated and
# skipped before the voxels).
_MAX_NIFTI_OFFSET = 64 << 20
# Most NIfTI header extensions: nibabel keeps an object per extension, and 8-byte ones cost nothing to send.
_MAX_NIFTI_EXTENSIONS = 1024
# Detached data files a pattern or LIST may name before the header is refused.
_MAX_DATA_FILES = 4096
# Longest detached data file name accepted where data files are checked (a name is cut at 499 bytes by MetaIO).
_MAX_NAME_BYTES = 255


DataFilePolicy = Literal["allow", "refuse"] | Path


def _check_data_files(p: Path, files: _DataFiles, policy: DataFilePolicy) -> None:
    """Apply ``policy`` to what ``p``'s header makes the reader open besides ``p`` (see :func:`_data_files`)."""
    if policy == "allow" or not (files.names or files.problem):
        return
    what = "an .nrrd file must hold its voxels inline (no 'data file:' field)"
    if p.name.lower().endswith((".mha", ".mhd")):
        what = "an .mha file must hold its voxels inline (ElementDataFile = LOCAL)"
    if policy == "refuse":
        raise DetachedDataError(f"{p} names a separate data file: {what}")
    if files.problem:
        raise DetachedDataError(f"{p} {files.problem}")
    root = Path(policy).resolve()
    for f in files.paths():
        # MetaIO also tries a missing data file's .gz and .Z siblings.
        for g in (f, f.with_name(f.name + ".gz"), f.with_name(f.name + ".Z")) if f.name else (f,):
            try:
                inside = g.resolve().is_relative_to(root)
            except (OSError, RuntimeError, ValueError):
                inside = False
            if not inside:
                raise DetachedDataError(
                    f"{p} names a data file outside the data root: {what}, or name one inside it"
                )


MAX_META_DIMS = 16
"""Largest ``NDims`` a MetaImage header may declare (ITK images have at most a few; volsam reads 3 or 4)."""

# Line ends as the readers see them: teem's NRRD reader ends a line at CR, LF or CRLF; MetaIO reads each
# value up to LF (a CR inside stays part of the value, so ``x\r`` and ``x\ry`` both count there).
_ANY_END = re.compile(rb"\r\n|\r|\n")
_LF = re.compile(rb"\n")
_CHUNK = 1 << 16


def _lines(p: Path, ends: re.Pattern[bytes]) -> Iterator[bytes]:
    """The lines of ``p`` (without line ends) up to :data:`MAX_HEADER_BYTES`; ImageReadError past that.

    Read in chunks as the caller asks for lines, so a header's inline voxels are not read."""
    read, buf, scan = 0, b"", 0
    with p.open("rb") as f:
        while True:
            m = ends.search(buf, scan)
            # A CR last in the buffer may be the first half of a CRLF: read on before deciding.
            if m and not (m.group() == b"\r" and m.end() == len(buf) and read <= MAX_HEADER_BYTES):
                yield buf[: m.start()]
                buf, scan = buf[m.end() :], 0
                continue
            chunk = f.read(_CHUNK)
            if not chunk:
                if m:
                    yield buf[: m.start()]
                    buf, scan = buf[m.end() :], 0
                    continue
                if buf:
                    yield buf
                return
            read += len(chunk)
            if read > MAX_HEADER_BYTES:
                raise ImageReadError(f"{p} has a header longer than {MAX_HEADER_BYTES >> 20} MiB (not an image?)")
            scan = max(0, len(buf) - 1)
            buf += chunk


@dataclass
class _DataFiles:
    """What a header makes its reader open besides the header file: ``names`` as written (a superset: every
    reading the reader might make of an odd header), ``problem`` why they could not all be listed."""

    header: Path
    names: list[bytes] = field(default_factory=list)
    problem: str = ""

    def add(self, value: bytes) -> None:
        """One name, in every spelling a reader may take from ``value``: as is, stripped, cut at a NUL (C
        strings end there) and each piece between CRs."""
        forms = {value, value.strip(), value[1:] if value[:1] == b" " else value}
        forms |= {piece.strip() for piece in value.split(b"\r")}
        for form in sorted(forms):
            form = form.split(b"\0", 1)[0]
            if len(form) > _MAX_NAME_BYTES:  # MetaIO cuts a value at 499 bytes: the cut name would be read
                self.problem = f"names a data file longer than {_MAX_NAME_BYTES} bytes"
            self.names.append(form)
        if len(self.names) > 4 * _MAX_DATA_FILES:
            raise ImageReadError(f"{self.header} names more than {_MAX_DATA_FILES} data files")

    def spec(self, value: bytes, rest: Iterator[bytes]) -> None:
        """A ``data file:``/``ElementDataFile`` value: one name, ``LIST`` (names on the lines that follow, to
        the end of the file) or a printf pattern (``%d``, with ``min max step``)."""
        self.add(value)  # a value the reader takes literally, whatever else it might be read as
        words = value.split()
        if not words:
            return
        if words[0].upper().startswith(b"LIST"):
            for count, line in enumerate(rest):
                if count >= _MAX_DATA_FILES:
                    raise ImageReadError(f"{self.header} names more than {_MAX_DATA_FILES} data files")
                if line.strip():
                    self.add(line)
                    for word in line.split():  # names split at white space, as `>>` reads them
                        self.add(word)
        elif b"%" in value:
            try:
                # One plain %d (width at most 2 digits): a pattern like %999999999d would allocate gigabytes,
                # and any other % sequence goes to the reader's printf as it stands.
                if not re.fullmatch(rb"[^%]*%0?\d{0,2}d[^%]*", words[0]):
                    raise ValueError(f"expected one %d in {words[0][:40]!r}")
                if len(words) < 4:
                    raise ValueError("expected the pattern's min, max and step (MetaIO guesses them)")
                lo, hi, step = (int(w) for w in words[1:4])
                count = (hi - lo) // step + 1 if step else -1
                if not 0 < count <= _MAX_DATA_FILES:
                    raise ValueError(f"{count} files")
                for i in range(count):
                    self.add(words[0] % (lo + i * step))
            except (ValueError, TypeError, OverflowError) as err:
                self.problem = f"names data files by a pattern volsam cannot expand: {_one_line(err)}"

    def paths(self) -> tuple[Path, ...]:
        """The names joined to the header's folder (an absolute name stays absolute), without repeats."""
        return tuple(dict.fromkeys(self.header.parent / os.fsdecode(n) for n in self.names))


def _data_files(p: Path, fmt: str) -> _DataFiles:
    """What an NRRD or MetaImage header makes the reader open besides itself (see :func:`read_header`).

    Read the way the readers read (NRRD: teem's line ends, fields to the first blank line; MetaImage:
    MetaIO's fields up to the first exact ``ElementDataFile``), but matched more loosely (any case, any
    spacing, ``:`` or ``=``), so no header a reader takes as naming a data file is taken here as inline.
    """
    return _nrrd_data_files(p) if fmt == "nrrd" else _meta_data_files(p)


def _field_name(key: bytes) -> bytes:
    return b"".join(key.split()).lower()


def _nrrd_data_files(p: Path) -> _DataFiles:
    files = _DataFiles(p)
    lines = _lines(p, _ANY_END)
    if not next(lines, b"").startswith(b"NRRD"):
        raise ImageReadError(f"{p} is not an NRRD file (its first line is not NRRD000N)")
    for line in lines:
        if not line:
            break  # the blank line that ends an NRRD header; the voxels follow
        line = line.split(b"\0", 1)[0]  # teem reads each line as a C string
        if line.startswith(b"#"):
            continue
        key, sep, value = _split_field(line)
        if sep and _field_name(key) == b"datafile":
            files.spec(value.lstrip(b"="), lines)  # `data file:= x` is a key/value pair to teem: refused anyway
    return files


def _meta_data_files(p: Path) -> _DataFiles:
    """MetaIO starts a field name after white space (CR and LF included), ends it at '=', ':', CR or LF, and
    takes the value from the next '=' or ':' (on a later line if need be) to LF; a C string ends at NUL.
    Rather than follow every turn of that, a header is read only in the plain form MetaIO surely reads
    the same way: up to the first ``ElementDataFile``, 'Key = value' lines ending in LF or CRLF."""
    files = _DataFiles(p)
    lines = _lines(p, _LF)
    for number, raw in enumerate(lines, start=1):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if b"\0" in line or b"\r" in line:
            raise ImageReadError(
                f"{p} has a NUL or a bare CR in header line {number}; expected text lines ending in LF or CRLF"
            )
        if not line.strip():
            continue
        key, sep, value = _split_field(line)
        if not sep:
            raise ImageReadError(f"{p} has a header line with no '=' (line {number}); expected 'Key = value' lines")
        name = _field_name(key)
        if name == b"ndims":
            _check_ndims(p, value.strip())
        if name != b"elementdatafile":
            continue
        if key.strip(b" \t") != b"ElementDataFile":
            shown = key.strip()[:40].decode("ascii", "replace")
            raise ImageReadError(f"{p} spells {shown!r} in header line {number}; expected 'ElementDataFile = ...'")
        value = value.lstrip(b"=: \t")  # MetaIO skips every separator and blank before the value
        if value.strip().upper() != b"LOCAL":
            files.spec(value, lines)
        return files
    raise ImageReadError(f"{p} has no ElementDataFile line (not a MetaImage header?)")


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


def _check_budget(header: ImageHeader, p: Path, max_voxels: int | None) -> None:
    """One-line ImageReadError for a declared size that is empty or over ``max_voxels`` (None: no limit)."""
    if any(s <= 0 for s in header.shape):
        raise ImageReadError(f"{p} declares an empty image (shape {header.shape}); expected every size >= 1")
    voxels = header.voxels * header.components
    if max_voxels is not None and voxels > max_voxels:
        raise ImageReadError(
            f"{p} declares {voxels} voxels (shape {header.shape}), more than the limit of {max_voxels} (--max-voxels)"
        )


def check_nifti_header(p: Path) -> None:
    """Refuse a NIfTI file whose header would make nibabel read or inflate more than
    :data:`_MAX_NIFTI_OFFSET` bytes before any size check: call before nibabel opens ``p``.

    nibabel reads the header's extensions whole while it parses the header, from the end of the header
    (byte 352, NIfTI-2: 544) up to ``vox_offset``, or to the end of the file when ``vox_offset`` is at
    most that (each extension's size comes from the file, up to 2 GiB); then it inflates and skips
    ``vox_offset`` bytes before the voxels. Here the same walk is made over the decompressed stream
    with nibabel's own arithmetic, skipping extension bytes instead of keeping them, so at most
    :data:`_MAX_NIFTI_OFFSET` bytes are inflated (in 1 MiB pieces). Headers nibabel cannot parse are
    left to nibabel's own error.
    """
    with (gzip.open(p, "rb") if p.name.lower().endswith(".gz") else p.open("rb")) as f:
        head = f.read(348)
        if len(head) < 348:
            return
        order = next((o for o in "<>" if int(np.frombuffer(head[:4], o + "i4")[0]) in (348, 540)), None)
        if order is None:
            return
        if int(np.frombuffer(head[:4], order + "i4")[0]) == 540:
            head += f.read(540 - 348)
            if len(head) < 540:
                return
            vox_offset = np.frombuffer(head[168:176], order + "i8")[0]
        else:
            vox_offset = np.frombuffer(head[108:112], order + "f4")[0]
        if vox_offset > _MAX_NIFTI_OFFSET:
            raise ImageReadError(
                f"{p} puts its voxels {float(vox_offset):.0f} bytes in (vox_offset); "
                f"expected at most {_MAX_NIFTI_OFFSET >> 20} MiB of header extensions"
            )
        extender = f.read(4)
        if len(extender) < 4 or extender[:1] == b"\0":
            return
        size, total = vox_offset - f.tell(), 0  # nibabel's Nifti1Extensions.from_fileobj, step by step
        for count in range(_MAX_NIFTI_EXTENSIONS + 1):
            if not (size >= 16 or size < 0):
                return
            ext_def = f.read(8)
            if len(ext_def) < 8:
                return  # the end of the file (nibabel stops there or refuses the header itself)
            if count == _MAX_NIFTI_EXTENSIONS:
                raise ImageReadError(f"{p} has more than {_MAX_NIFTI_EXTENSIONS} NIfTI header extensions")
            esize = np.frombuffer(ext_def, order + "i4")[0]
            total += int(esize)
            if esize < 8 or total > _MAX_NIFTI_OFFSET:
                shown = f"one of {int(esize)} bytes" if esize < 8 else f"{total} bytes or more"
                raise ImageReadError(
                    f"{p} has NIfTI header extensions of {shown}; expected at most "
                    f"{_MAX_NIFTI_OFFSET >> 20} MiB of extensions, each at least 8 bytes"
                )
            left = int(esize) - 8
            while left > 0:
                piece = len(f.read(min(left, 1 << 20)))
                if not piece:
                    return  # truncated: nibabel refuses it, having read no more than this
                left -= piece
            size -= esize
