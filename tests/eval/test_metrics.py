from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from volsam.eval import metrics
from volsam.eval.metrics import (
    StepMetrics,
    auc,
    case_metrics,
    cvpr25_nsd,
    cvpr25_summary,
    dice,
    hd95,
    nsd,
)

SHAPE = (40, 40, 40)


def _cube(lo, hi, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


A = _cube((10, 10, 10), (20, 20, 20))  # 10^3 cube: 488 surface voxels
B = _cube((12, 10, 10), (22, 20, 20))  # A shifted by 2 voxels along i


def test_dice_known_overlaps():
    assert dice(A, B) == pytest.approx(0.8, abs=1e-6)  # overlap 8x10x10 of two 1000-voxel cubes
    half = _cube((10, 10, 10), (15, 20, 20))
    assert dice(half, A) == pytest.approx(2 * 500 / 1500, abs=1e-6)
    assert dice(A, A) == pytest.approx(1.0)
    assert dice(A.astype(np.uint8), B.astype(np.uint8)) == pytest.approx(0.8, abs=1e-6)


def test_nsd_shifted_cube_below_and_above_tolerance():
    # Surface voxels at 2 voxels from the other surface: 36 on the inner shifted face + 100 on the
    # outer one, per cube (see the geometry in the module under test); all others are within 1.
    assert nsd(A, B, (1, 1, 1), 1.5) == pytest.approx((488 - 136) / 488, abs=1e-6)
    assert nsd(A, B, (1, 1, 1), 2.0) == pytest.approx(1.0)  # the tolerance is inclusive
    assert nsd(A, B, (1, 1, 1), 2.5) == pytest.approx(1.0)
    # anisotropic: the shift is 2 x 1.5 mm = 3 mm
    sp = (1.5, 0.8, 2.0)
    assert nsd(A, B, sp, 2.9) < 0.9
    assert nsd(A, B, sp, 3.0) == pytest.approx(1.0)


def test_nsd_subvoxel_option():
    assert nsd(A, B, (1, 1, 1), 2.5, use_subvoxels=True) == pytest.approx(1.0)
    assert 0.5 < nsd(A, B, (1, 1, 1), 1.5, use_subvoxels=True) < 0.9
    assert nsd(A, A, (0.5, 1, 3), 0.0, use_subvoxels=True) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("shift_axis", "spacing", "expected"),
    [(0, (1.5, 0.8, 2.0), 3.0), (2, (1.5, 0.8, 2.0), 4.0), (1, (1.0, 0.7, 1.0), 1.4)],
)
def test_hd95_of_shifted_cube_is_the_shift_in_mm(shift_axis, spacing, expected):
    lo, hi = [10, 10, 10], [20, 20, 20]
    lo[shift_axis] += 2
    hi[shift_axis] += 2
    assert hd95(A, _cube(lo, hi), spacing) == pytest.approx(expected, rel=1e-6)
    assert hd95(A, A, spacing) == 0.0


def test_empty_conventions():
    empty = np.zeros(SHAPE, dtype=bool)
    sp = (1.0, 1.0, 1.0)
    assert (dice(empty, empty), nsd(empty, empty, sp, 1.0), hd95(empty, empty, sp)) == (1.0, 1.0, 0.0)
    for p, g in ((empty, A), (A, empty)):
        assert dice(p, g) == 0.0
        assert nsd(p, g, sp, 1.0) == 0.0
        assert hd95(p, g, sp) == math.inf
    assert case_metrics(empty, A, sp) == {"dice": 0.0, "nsd": 0.0, "hd95": math.inf}


def test_input_checks():
    with pytest.raises(ValueError, match="shape"):
        dice(A, A[:-1])
    with pytest.raises(ValueError, match="spacing"):
        nsd(A, B, (1.0, -1.0, 1.0), 1.0)
    with pytest.raises(ValueError, match="spacing"):
        hd95(A, B, (1.0, 1.0))


def _blobs(seed: int, shape=(24, 28, 20), thr=0.5) -> np.ndarray:
    r = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(r.standard_normal(shape), 2.0)
    return f > thr * f.std()


@pytest.mark.parametrize("seed", [0, 1])
def test_cropping_is_exact(seed, monkeypatch):
    gt = _blobs(seed)  # touches the volume border
    small = _cube((5, 6, 7), (12, 15, 11), gt.shape)
    cases = [
        (ndimage.binary_dilation(gt), gt),
        (_blobs(seed + 10), gt),
        (small, ndimage.shift(small, (3, 1, 0), order=0)),
    ]
    sp = (0.9, 1.3, 2.2)

    def all_metrics(p, g):
        return [dice(p, g), nsd(p, g, sp, 1.0), nsd(p, g, sp, 2.0, use_subvoxels=True), hd95(p, g, sp)]

    cropped = [all_metrics(p, g) for p, g in cases]
    monkeypatch.setattr(metrics, "_crop_union", lambda p, g: (p, g) if (p | g).any() else None)
    uncropped = [all_metrics(p, g) for p, g in cases]
    assert cropped == uncropped


def test_cvpr25_helpers():
    assert cvpr25_nsd(0.2, 0.9) == 0.0
    assert cvpr25_nsd(0.21, 0.9) == 0.9
    assert auc([1.0] * 5) == pytest.approx(4.0)
    assert auc([0.0, 1.0, 1.0, 1.0, 1.0]) == pytest.approx(3.5)
    assert auc([0.5]) == 0.0
    s = cvpr25_summary([0.9, 0.0, 1.0, 1.0, 1.0, 0.5], [0.1, 0.0, 1.0, 1.0, 1.0, 0.5])
    assert s == pytest.approx({"DSC_AUC": 3.25, "NSD_AUC": 3.25, "DSC_Final": 0.5, "NSD_Final": 0.5})
    with pytest.raises(ValueError):
        cvpr25_summary([1.0] * 4, [1.0] * 4)


def test_case_metrics_matches_single_metrics():
    sp = (1.5, 0.8, 2.0)
    got = case_metrics(A, B, sp, nsd_tolerance_mm=2.0)
    assert got == {"dice": dice(A, B), "nsd": nsd(A, B, sp, 2.0), "hd95": hd95(A, B, sp)}
    assert StepMetrics(**got).as_dict() == got
