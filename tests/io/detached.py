"""Headers that make SimpleITK read files other than themselves (NRRD via teem, MetaImage via MetaIO), in
the spellings the readers accept: line ends CR, CRLF or mixed, any case, LIST, printf patterns, values on
the next line. Shared by the io and server tests. Each reads ``SECRET`` (8 bytes: a 2 x 2 x 2 uint8
image) from files named by ``outside`` when nothing guards it."""

from __future__ import annotations

SECRET = b"SECRET!!"
NRRD_FIELDS = b"type: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
MHA_FIELDS = b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"


def write_secret(folder) -> tuple[str, str]:
    """Write the secret whole (``secret.raw``) and in two slices (``sec1.raw``, ``sec2.raw``) into ``folder``;
    returns the whole file's path and the slices' printf pattern, as text."""
    (folder / "secret.raw").write_bytes(SECRET)
    (folder / "sec1.raw").write_bytes(SECRET[:4])
    (folder / "sec2.raw").write_bytes(SECRET[4:])
    return str(folder / "secret.raw"), str(folder / "sec%d.raw")


def _nrrd(data_file: bytes, end: bytes = b"\n") -> bytes:
    return b"NRRD0004" + end + NRRD_FIELDS.replace(b"\n", end) + b"data file: " + data_file + end + end


def attacks(secret: str, pattern: str) -> dict[str, tuple[str, bytes]]:
    """Name -> (file name, header bytes) for every spelling, reading ``secret`` or the ``pattern`` slices."""
    s, pat = secret.encode(), pattern.encode()
    slices = pat.replace(b"%d", b"1") + b"\n" + pat.replace(b"%d", b"2") + b"\n"  # LIST: one 2D slice a file
    mixed = b"NRRD0004\r\ntype: uint8\rdimension: 3\nsizes: 2 2 2\r\nencoding: raw\rdata file: " + s + b"\r\n\n"
    return {
        "nrrd CR line ends": ("x.nrrd", _nrrd(s, b"\r")),
        "nrrd CRLF line ends": ("x.nrrd", _nrrd(s, b"\r\n")),
        "nrrd mixed line ends": ("x.nrrd", mixed),
        "nrrd DATAFILE upper case, CR": ("x.nrrd", _nrrd(s, b"\r").replace(b"data file", b"DATAFILE")),
        "nrrd value after two spaces": ("x.nrrd", _nrrd(b" " + s)),
        "nrrd byte skip window, CR": (
            "x.nrrd",
            _nrrd(s, b"\r").replace(b"sizes: 2 2 2", b"sizes: 2 2 1\rbyte skip: 4"),
        ),
        "nrrd LIST": ("x.nhdr", b"NRRD0004\n" + NRRD_FIELDS + b"data file: LIST\n" + slices),
        "nrrd LIST, CR": ("x.nhdr", _nrrd(b"LIST 3\r" + s, b"\r")[:-1]),
        "nrrd pattern": ("x.nrrd", _nrrd(pat + b" 1 2 1 2")),
        "mha CRLF line ends": ("x.mha", (MHA_FIELDS + b"ElementDataFile = " + s + b"\n").replace(b"\n", b"\r\n")),
        "mha colon": ("x.mha", MHA_FIELDS + b"ElementDataFile: " + s + b"\n"),
        "mha indented": ("x.mha", MHA_FIELDS + b" \t ElementDataFile = " + s + b"\n"),
        "mha value on the next line": ("x.mha", MHA_FIELDS + b"ElementDataFile\r\n= " + s + b"\n"),
        "mha value after a CR": ("x.mha", MHA_FIELDS + b"ElementDataFile\rjunk = " + s + b"\n"),
        "mha LIST": ("x.mhd", MHA_FIELDS + b"ElementDataFile = LIST\n" + slices),
        "mha pattern": ("x.mha", MHA_FIELDS + b"ElementDataFile = " + pat + b" 1 2 1\n"),
        "mha pattern, bounds guessed": ("x.mha", MHA_FIELDS + b"ElementDataFile = " + pat + b"\n"),
        ".mhd NUL in the key": ("x.mhd", MHA_FIELDS + b"ElementDataFile\0x = " + s + b"\nElementDataFile = LOCAL\n"),
    }
