from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture()
def image(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(10, 1, (40, 44, 30)).astype(np.float32)
    data[10:25, 12:30, 8:20] += 100
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.1, 0.9, 2.0, 1.0])), path)
    return path
