"""Property-based fuzzing of the image readers (hypothesis): random NRRD, MetaImage and NIfTI headers,
some naming data files outside themselves, some declaring huge or empty sizes, with LF, CR or CRLF line
ends mixed line by line, and NIfTI header extension blocks of any size. Whatever the bytes,
:func:`volsam.io.read_image` with ``data_files="refuse"`` or the data folder as root, and a voxel budget,
either returns a volume within the budget made from the file's own bytes, or raises a one-line
:class:`ImageReadError`.
``VOLSAM_FUZZ_EXAMPLES`` sets the cases per format (default 100)."""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from volsam.io import ImageReadError, read_image

EXAMPLES = int(os.environ.get("VOLSAM_FUZZ_EXAMPLES", "100"))
BUDGET = 1 << 16  # voxels
SENTINEL = 0xA5  # every byte of the file outside; the files' own voxel bytes never hold it
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)

body = st.binary(max_size=3000).map(lambda b: b.replace(bytes([SENTINEL]), b"\0"))
small = st.integers(-2, 70) | st.sampled_from([0, 1, 2**31, 2**40, 10**6])
words = st.text(st.characters(codec="ascii", exclude_characters="\n\r"), max_size=30)


def _lines(draw: st.DrawFn, lines: list[str]) -> str:
    """``lines`` joined with line ends drawn one by one (teem ends a line at CR, LF or CRLF; MetaIO at LF)."""
    style = draw(st.sampled_from(["\n", "\r", "\r\n", "mixed"]))
    ends = st.sampled_from(["\n", "\r", "\r\n"]) if style == "mixed" else st.just(style)
    return "".join(line + draw(ends) for line in lines)


def _data_file_values(outside: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [outside, "secret.raw", "../secret.raw", "LIST", f"{outside[:-4]}%d.raw 0 2 1", "%999999999d.raw 1 2 1"]
    ) | words


@st.composite
def nrrd_files(draw: st.DrawFn, outside: str) -> bytes:
    lines = [draw(st.sampled_from(["NRRD0004", "NRRD0005", "NRRD0001"]) | words)]
    fields = {
        "type": st.sampled_from(["uint8", "int16", "float", "double", "uint64", "block"]) | words,
        "dimension": st.integers(-1, 6).map(str) | words,
        "sizes": st.lists(small, max_size=5).map(lambda v: " ".join(map(str, v))),
        "encoding": st.sampled_from(["raw", "gzip", "ascii", "hex", "bzip2"]) | words,
        "endian": st.sampled_from(["little", "big"]),
        "space directions": st.sampled_from(["(1,0,0) (0,1,0) (0,0,1)", "(0,0,0) (0,1,0) (0,0,1)", "none"]),
        "data file": _data_file_values(outside),
        "datafile": _data_file_values(outside),
    }
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=8)):
        sep = draw(st.sampled_from([": ", ":", ":= ", " : "]))
        lines.append(f"{name}{sep}{draw(fields[name])}")
    lines += draw(st.lists(st.sampled_from(["# comment", "#" + "x" * 200, "key:=value"]) | words, max_size=4))
    if draw(st.booleans()):
        lines.append(f"sizes: {draw(st.lists(small, min_size=3, max_size=3)).__str__()[1:-1].replace(',', '')}")
    if draw(st.booleans()):
        lines.append(f"data file: LIST{draw(st.sampled_from(['', ' 2', ' 3']))}")
        lines += draw(st.lists(st.sampled_from([outside, "secret.raw", "../secret.raw", ""]) | words, max_size=3))
        return _lines(draw, lines).encode()
    return (_lines(draw, lines) + draw(st.sampled_from(["\n", "\r", "\r\n"]))).encode() + draw(body)


@st.composite
def mha_files(draw: st.DrawFn, outside: str) -> bytes:
    fields = {
        "ObjectType": st.sampled_from(["Image", "Mesh"]) | words,
        "NDims": st.integers(-1, 5).map(str),
        "DimSize": st.lists(small, max_size=5).map(lambda v: " ".join(map(str, v))),
        "ElementType": st.sampled_from(["MET_UCHAR", "MET_SHORT", "MET_FLOAT", "MET_DOUBLE", "MET_NONE"]) | words,
        "ElementNumberOfChannels": st.integers(0, 4).map(str),
        "CompressedData": st.sampled_from(["True", "False"]),
        "TransformMatrix": st.sampled_from(["1 0 0 0 1 0 0 0 1", "0 0 0 0 0 0 0 0 0"]),
        "BinaryDataByteOrderMSB": st.sampled_from(["True", "False"]),
    }
    lines = []
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=9)):
        lines.append(f"{name}{draw(st.sampled_from([' = ', '=', ' : ']))}{draw(fields[name])}")
    for _ in range(draw(st.integers(0, 2))):  # spellings MetaIO may or may not take for the last field
        key = draw(st.sampled_from(["ElementDataFile", "elementdatafile", "ELEMENTDATAFILE", " ElementDataFile"]))
        lines.append(f"{key} = {draw(st.sampled_from(['LOCAL', 'local']) | _data_file_values(outside))}")
    lines.append(f"ElementDataFile = {draw(st.sampled_from(['LOCAL']) | _data_file_values(outside))}")
    if lines[-1].endswith("LIST"):
        lines += draw(st.lists(st.sampled_from([outside, "secret.raw", "../secret.raw"]) | words, max_size=3))
    return _lines(draw, lines).encode() + draw(body)


@st.composite
def nifti_files(draw: st.DrawFn) -> bytes:
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    hdr = img.header.binaryblock
    raw = bytearray(hdr + b"\0" * 4)
    h = np.frombuffer(raw[:348], dtype=img.header.structarr.dtype).copy()
    dims = draw(st.lists(st.integers(-3, 2**15 - 1) | st.sampled_from([0, 1, 2, 4096]), min_size=8, max_size=8))
    h["dim"] = dims
    h["datatype"] = draw(st.sampled_from([2, 4, 8, 16, 64, 128, 256, 512, 768, 1024, 1280, 2304, 0, 3, 9999]))
    h["bitpix"] = draw(st.sampled_from([8, 16, 32, 64, 24, 0]))
    h["vox_offset"] = draw(st.sampled_from([352.0, 0.0, 348.0, 1e9, -5.0, 2.0**40, 400.0]))
    h["scl_slope"] = draw(st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -2.0]))
    # Header extension blocks: sizes up to 2 GiB (only their first bytes written), negative, tiny, many.
    sizes = st.sampled_from([16, 32, 8, 0, -8, 12, 2**31 - 1, 80 << 20, 65 << 20]) | st.integers(-(2**31), 2**31 - 1)
    exts = draw(st.lists(sizes, max_size=6)) if draw(st.booleans()) else []
    if draw(st.integers(0, 9)) == 0:
        exts = [16] * 1100
    if exts and draw(st.booleans()):
        h["vox_offset"] = draw(st.sampled_from([0.0, -1.0, 352.0 + sum(max(e, 0) for e in exts), 352.0 + 16]))
    blocks = b"".join(np.array([e, 4], "<i4").tobytes() + b"\0" * min(max(e - 8, 0), 64) for e in exts)
    data = h.tobytes() + (b"\1\0\0\0" + blocks if exts else b"\0" * 4) + draw(body)
    return gzip.compress(data) if draw(st.booleans()) else data


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "data").mkdir()
        for name in ("secret.raw", "secret0.raw", "secret1.raw", "secret2.raw"):
            (root / name).write_bytes(bytes([SENTINEL]) * 4096)  # beside the data folder: "outside"
        yield root


def _check(path: Path) -> None:
    for policy in ("refuse", path.parent):
        try:
            vol = read_image(path, dtype=None, max_voxels=BUDGET, data_files=policy)
        except ImageReadError as e:
            assert "\n" not in str(e) and str(e)
            kinds = ("separate data file", "outside the data root", "more than the limit", "empty image")
            kinds += ("extensions", "vox_offset", "bare CR")
            event(next((f"refused: {k}" for k in kinds if k in str(e)), "refused: unreadable"))
            continue
        event("read")
        assert vol.array.size <= BUDGET and vol.array.ndim == 3
        assert bytes([SENTINEL]) * 8 not in np.ascontiguousarray(vol.array).tobytes(), "read bytes outside the file"


@FUZZ
@given(data=st.data())
def test_random_nrrd_headers(folder, data):
    path = folder / "data" / "x.nrrd"
    path.write_bytes(data.draw(nrrd_files(str(folder / "secret.raw"))))
    _check(path)


@FUZZ
@given(data=st.data())
def test_random_metaimage_headers(folder, data):
    path = folder / "data" / "x.mha"
    path.write_bytes(data.draw(mha_files(str(folder / "secret.raw"))))
    _check(path)


@FUZZ
@given(data=nifti_files())
def test_random_nifti_headers(folder, data):
    path = folder / "data" / ("x.nii.gz" if data[:2] == b"\x1f\x8b" else "x.nii")
    path.write_bytes(data)
    _check(path)
