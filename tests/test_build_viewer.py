"""scripts/build_viewer.py (run by setup.py for every wheel and sdist): offline behaviour only."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests import load_script


@pytest.fixture(scope="module")
def bv():
    return load_script("build_viewer")


def _fake_tarball(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("package/dist/niivue.umd.js", b"// not niivue"), ("package/package.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_tarball_without_the_pinned_integrity_is_refused(bv, tmp_path):
    dest = tmp_path / "vendor"
    with pytest.raises(RuntimeError, match="integrity mismatch"):
        bv.install(dest, _fake_tarball(tmp_path / "n.tgz"))
    assert not dest.exists()


def test_an_installed_viewer_is_left_alone(bv, tmp_path, monkeypatch):
    dest = tmp_path / "vendor"
    dest.mkdir()
    (dest / "niivue.umd.js").write_text("x")
    (dest / "VERSION.json").write_text(json.dumps({"version": bv.VERSION}))
    monkeypatch.setenv("VOLSAM_NIIVUE_TGZ", str(tmp_path / "absent.tgz"))  # would fail if it were read
    assert bv.install(dest) is False
    (dest / "VERSION.json").write_text(json.dumps({"version": "0.0.1"}))
    assert not bv.installed(dest)
    with pytest.raises(RuntimeError, match="cannot read"):
        bv.install(dest)
