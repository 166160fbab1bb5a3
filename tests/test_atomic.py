from __future__ import annotations

import pytest

from volsam.atomic import atomic_path


def test_success_replaces_and_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]  # no temporary file left


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_file_follows_the_umask(tmp_path, umask):
    import os

    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "out.png") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o666 & ~umask  # mkstemp's 0600 before
