"""volsam info (volsam.cli.info)."""

from __future__ import annotations

import numpy as np

from volsam.cli import main


def test_info(image, capsys):
    assert main(["info", str(image)]) == 0
    out = capsys.readouterr().out
    assert "(40, 44, 30)" in out and "1.1 x 0.9 x 2 mm" in out and "RAS" in out


def test_itk_warnings_are_kept_off_stderr(tmp_path, capfd):
    import pydicom

    from tests.io.helpers import _write_ct_series

    _write_ct_series(tmp_path / "ct", np.zeros((6, 5, 6), np.float32))
    files = sorted((tmp_path / "ct").iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    files[3].unlink()  # a missing slice: ITK's series reader warns on stderr from its C++ source
    assert main(["info", str(tmp_path / "ct")]) == 0
    err = capfd.readouterr().err
    assert "WARNING: In" not in err and "SimpleITK-build" not in err
