"""Header guards: MetaImage NDims checked before MetaIO sees it."""

from __future__ import annotations

import pytest

from volsam import io


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
