"""Header guards: MetaImage NDims checked before MetaIO sees it; detached data files found the way the
readers find them (any line end, LIST, patterns, odd spellings) and refused outside the file or data root."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.io.detached import MHA_FIELDS, NRRD_FIELDS, SECRET, attacks, write_secret
from volsam import io
from volsam.io import ImageReadError, read_header, read_image

ATTACKS = sorted(attacks("s", "p%d"))


@pytest.mark.parametrize("ndims", ["-1", "-2", "0", "70", "x"])
def test_metaimage_with_a_bad_ndims_is_refused_before_metaio_sees_it(tmp_path, ndims):
    """MetaIO never returns from ``NDims = -1`` followed by ``DimSize`` (found by tests/fuzz): run in a child
    process with a timeout, so a regression fails instead of hanging the suite."""
    import subprocess
    import sys

    path = tmp_path / "bad.mha"
    path.write_bytes(
        f"ObjectType = Image\nNDims = {ndims}\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
        "ElementDataFile = LOCAL\n".encode() + bytes(8)
    )
    code = (
        "import sys\nfrom volsam.io import ImageReadError, read_image\n"
        "try:\n    read_image(sys.argv[1])\nexcept ImageReadError as e:\n    print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == (
        f"{path} declares NDims = {ndims!r}; expected an integer from 1 to {io.MAX_META_DIMS}"
    ), r.stdout + r.stderr


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
@pytest.mark.parametrize("name", ATTACKS)
def test_data_files_outside_are_refused_in_every_spelling_the_readers_take(tmp_path, name, relative):
    root, outside = _folders(tmp_path)
    secret, pattern = write_secret(outside)
    if relative:
        secret, pattern = os.path.relpath(secret, root), os.path.relpath(pattern, root)
    filename, header = attacks(secret, pattern)[name]
    path = root / filename
    path.write_bytes(header)
    # The header is an attack on the reader itself: unguarded, SimpleITK returns the outside file's bytes.
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).tobytes() in SECRET
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    for policy in ("refuse", root):
        with pytest.raises(ImageReadError) as err:
            read_image(path, data_files=policy)
        assert "\n" not in str(err.value) and str(err.value).startswith(str(path)), err.value


@pytest.mark.parametrize(
    "name", ["nrrd CR line ends", "nrrd mixed line ends", "nrrd LIST", "nrrd pattern", "mha CRLF line ends", "mha LIST"]
)
def test_data_files_inside_the_root_are_still_read(tmp_path, name):
    root, _ = _folders(tmp_path)
    (root / "sub").mkdir()
    secret, pattern = write_secret(root / "sub")
    filename, header = attacks(os.path.relpath(secret, root), os.path.relpath(pattern, root))[name]
    path = root / filename
    path.write_bytes(header)
    vol = read_image(path, dtype=None, data_files=root)
    assert np.asfortranarray(vol.array).tobytes(order="F") == SECRET
    assert read_header(path).data_files and all(f.resolve().is_relative_to(root) for f in read_header(path).data_files)


def test_inline_voxels_with_cr_or_crlf_line_ends_are_read(tmp_path):
    for end in (b"\r", b"\r\n"):
        nrrd = tmp_path / "inline.nrrd"
        nrrd.write_bytes(b"NRRD0004" + end + NRRD_FIELDS.replace(b"\n", end) + end + SECRET)
        mha = tmp_path / "inline.mha"
        mha.write_bytes((MHA_FIELDS + b"ElementDataFile = LOCAL\n").replace(b"\n", b"\r\n") + SECRET)
        for path in (nrrd, mha):
            vol = read_image(path, dtype=None, data_files="refuse")
            assert vol.array.tobytes(order="F") == SECRET and read_header(path).data_files == ()


def test_a_crlf_split_between_two_reads_is_one_line_end(tmp_path):
    """The header is read in 64 KiB chunks: a CR last in one chunk and its LF first in the next must not
    read as an empty line (which would end an NRRD header before the data file named after it)."""
    head = b"NRRD0004\r\n# "
    comment = head + b"x" * ((1 << 16) - len(head) - 1) + b"\r\n"
    assert comment[(1 << 16) - 1 : (1 << 16) + 1] == b"\r\n"
    path = tmp_path / "x.nrrd"
    path.write_bytes(comment + NRRD_FIELDS.replace(b"\n", b"\r\n") + b"data file: /etc/hostname\r\n\r\n")
    with pytest.raises(io.DetachedDataError, match="names a separate data file"):
        read_header(path, data_files="refuse")


def test_names_the_checks_cannot_follow_are_refused_under_a_data_root(tmp_path):
    root, _ = _folders(tmp_path)
    cases = {
        "long.nrrd": b"NRRD0004\n" + NRRD_FIELDS + b"data file: " + b"a/" * 200 + b"x.raw\n\n",
        "printf.mha": MHA_FIELDS + b"ElementDataFile = x%s.raw 1 2 1\n",
        "width.nrrd": b"NRRD0004\n" + NRRD_FIELDS + b"data file: x%999999999d.raw 1 2 1\n\n",
    }
    for filename, header in cases.items():
        (root / filename).write_bytes(header)
        with pytest.raises(io.DetachedDataError, match=r"longer than 255 bytes|pattern volsam cannot expand"):
            read_header(root / filename, data_files=root)
