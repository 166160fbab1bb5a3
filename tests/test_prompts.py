from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from volsam.prompts import (
    CLICK_PROTOCOLS,
    Box,
    Click,
    cvpr25_box,
    cvpr25_click,
    dt_click,
    first_click,
    random_click,
    simulate_click,
)


def _cube(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


def _blobs(seed: int, shape=(40, 36, 30), sigma=3.0, thr=0.4) -> np.ndarray:
    """Smooth random blobs, some touching the volume border."""
    r = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(r.standard_normal(shape), sigma)
    return f > thr * f.std()


def _pred_gt(seed: int) -> tuple[np.ndarray, np.ndarray]:
    gt = _blobs(seed)
    pred = ndimage.binary_dilation(_blobs(seed + 1000, thr=1.0) | ndimage.shift(gt, (2, -1, 1), order=0))
    return pred, gt


def _full_edt(mask: np.ndarray, spacing) -> np.ndarray:
    """Reference: EDT on the whole volume zero-padded by one voxel (borders are boundary)."""
    return ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]


# ----------------------------------------------------------------------------------------------- types


def test_box_from_mask_and_back():
    m = _cube((20, 20, 20), (3, 5, 7), (9, 12, 8))
    m[15, 2, 10] = True
    box = Box.from_mask(m)
    assert box == Box((3, 2, 7), (15, 11, 10))
    assert box.mid_slice is None
    bm = box.to_mask(m.shape)
    assert bm.sum() == 13 * 10 * 4 and bm[m].all()
    with pytest.raises(ValueError, match="empty"):
        Box.from_mask(np.zeros((4, 4, 4), bool))
    with pytest.raises(ValueError):
        Box((3, 0, 0), (2, 5, 5))


def test_click_voxel():
    assert Click((1.0, 2.6, 3.2), True).voxel == (1, 3, 3)


# ----------------------------------------------------------------------------------------------- random


def test_random_click_in_error_with_right_sign():
    pred, gt = _pred_gt(0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        c = random_click(pred, gt, rng)
        assert c is not None
        i, j, k = c.voxel
        assert pred[i, j, k] != gt[i, j, k]
        assert c.positive == bool(gt[i, j, k])


def test_random_click_none_without_error():
    gt = _blobs(3)
    assert random_click(gt.copy(), gt, np.random.default_rng(0)) is None
    assert random_click(np.zeros_like(gt), np.zeros_like(gt), np.random.default_rng(0)) is None


def test_random_click_uint8_inputs_and_shape_check():
    gt = _cube((10, 10, 10), (2, 2, 2), (5, 5, 5)).astype(np.uint8)
    c = random_click(np.zeros_like(gt), gt, np.random.default_rng(1))
    assert c is not None and c.positive and gt[c.voxel]
    with pytest.raises(ValueError, match="shapes differ"):
        random_click(np.zeros((10, 10, 9), bool), gt, np.random.default_rng(0))


def _run(protocol: str, seed: int, n: int = 6) -> list[Click]:
    """Click loop with a fake model: each click paints (or erases) a ball of radius 2."""
    _, gt = _pred_gt(5)
    pred = np.zeros_like(gt)
    grid = np.indices(gt.shape)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c = simulate_click(protocol, pred, gt, rng)
        assert c is not None
        out.append(c)
        ball = sum((g - p) ** 2 for g, p in zip(grid, c.point, strict=True)) <= 4
        pred = pred | ball if c.positive else pred & ~ball
    return out


@pytest.mark.parametrize("protocol", CLICK_PROTOCOLS)
def test_same_seed_same_sequence(protocol):
    assert _run(protocol, 7) == _run(protocol, 7)


def test_random_different_seed_different_sequence():
    assert _run("random", 7) != _run("random", 8)


# ----------------------------------------------------------------------------------------------- dt


def test_dt_click_centre_of_missed_cube():
    gt = _cube((30, 30, 30), (10, 10, 10), (21, 21, 21))
    c = dt_click(np.zeros_like(gt), gt, np.random.default_rng(0))
    assert c == Click((15.0, 15.0, 15.0), True)


def test_dt_click_negative_on_larger_false_positive():
    gt = _cube((40, 40, 40), (5, 5, 5), (10, 10, 10))
    pred = _cube(gt.shape, (20, 20, 20), (31, 31, 31))  # FP cube, deeper than the FN cube
    assert dt_click(pred, gt, np.random.default_rng(0)) == Click((25.0, 25.0, 25.0), False)
    assert dt_click(gt, gt, np.random.default_rng(0)) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", [None, (1.5, 0.8, 2.0)])
def test_bbox_restricted_edt_equals_full_volume_edt(seed, spacing):
    from volsam.prompts import _inside_edt  # the helper every EDT-based simulator uses

    pred, gt = _pred_gt(seed)
    for mask in (gt & ~pred, pred & ~gt, pred ^ gt):
        dist, origin = _inside_edt(mask, spacing)
        full = np.zeros(mask.shape)
        lo = np.maximum(origin, 0)
        hi = np.minimum(origin + dist.shape, mask.shape)
        full[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = dist[
            tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin, strict=True))
        ]
        np.testing.assert_array_equal(full, _full_edt(mask, spacing))


def _dt_reference(pred, gt, rng, spacing):
    maps = [(_full_edt(gt & ~pred, spacing), True), (_full_edt(pred & ~gt, spacing), False)]
    best = max(d.max() for d, _ in maps)
    cands = [(idx, sign) for d, sign in maps if d.max() == best for idx in np.argwhere(d == best)]
    idx, sign = cands[int(rng.integers(len(cands)))]
    return Click(tuple(float(x) for x in idx), sign)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", [None, (1.5, 0.8, 2.0)])
def test_dt_click_bbox_restriction_is_exact(seed, spacing):
    pred, gt = _pred_gt(seed)
    got = dt_click(pred, gt, np.random.default_rng(seed), spacing)
    assert got == _dt_reference(pred, gt, np.random.default_rng(seed), spacing)


def test_dt_click_band_mode():
    pred, gt = _pred_gt(4)
    fn, fp = _full_edt(gt & ~pred, None), _full_edt(pred & ~gt, None)
    winner, positive = (fn, True) if fn.max() > fp.max() else (fp, False)
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = dt_click(pred, gt, rng, band=0.5)
        assert c is not None and c.positive == positive
        assert winner[c.voxel] > 0.5 * max(fn.max(), fp.max())
    with pytest.raises(ValueError):
        dt_click(pred, gt, rng, band=1.5)


# ----------------------------------------------------------------------------------------------- cvpr25


def _cvpr25_reference(pred, gt, spacing):
    """Full-volume version of the challenge's rule (no cropping)."""
    lab, _ = ndimage.label(pred ^ gt, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    comp = lab == np.argmax(sizes)
    edt = _full_edt(comp, spacing)
    cands = np.argwhere(edt == edt.max())
    idx = tuple(cands[np.random.RandomState(42).choice(len(cands))])  # the challenge script's draw
    return Click(tuple(float(x) for x in idx), bool(gt[idx])), comp, edt


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("spacing", [None, (0.7, 1.0, 2.5)])
def test_cvpr25_click_bbox_restriction_is_exact(seed, spacing):
    pred, gt = _pred_gt(seed)
    ref, comp, edt = _cvpr25_reference(pred, gt, spacing)
    got = cvpr25_click(pred, gt, spacing)
    assert got == ref
    # in the largest error component, at an EDT maximum, sign from gt
    assert comp[got.voxel] and edt[got.voxel] == edt.max()
    assert got.positive == bool(gt[got.voxel]) != bool(pred[got.voxel])


def test_cvpr25_click_uses_26_connectivity():
    gt = np.zeros((40, 40, 40), bool)
    gt[2:8, 2:8, 2:8] = True  # 216 voxels
    gt[8:14, 8:14, 8:14] = True  # 216 voxels, touching the first only at a corner
    pred = _cube(gt.shape, (25, 25, 25), (32, 32, 32))  # FP cube of 343 voxels
    c = cvpr25_click(pred, gt)
    assert c is not None and c.positive and gt[c.voxel]  # the 432-voxel FN pair wins


def test_cvpr25_click_volume_border_counts_as_boundary():
    gt = _cube((30, 30, 30), (0, 0, 0), (9, 9, 9))  # FN cube in the corner of the volume
    pred = _cube(gt.shape, (20, 20, 20), (25, 25, 25))  # smaller FP cube
    assert cvpr25_click(pred, gt) == Click((4.0, 4.0, 4.0), True)  # not the corner voxel
    assert cvpr25_click(gt, gt) is None


def test_cvpr25_click_ties_with_rng():
    gt = _cube((20, 20, 20), (5, 5, 5), (11, 11, 11))  # even side: 8 tied centre voxels
    a = {cvpr25_click(np.zeros_like(gt), gt, rng=np.random.default_rng(s)).voxel for s in range(40)}
    assert a <= {(i, j, k) for i in (7, 8) for j in (7, 8) for k in (7, 8)} and len(a) > 1


def test_cvpr25_box_cuboid():
    gt = _cube((30, 30, 30), (3, 5, 7), (9, 12, 18))
    assert cvpr25_box(gt) == Box((3, 5, 7), (8, 11, 17), mid_slice=12)
    assert cvpr25_box(np.zeros_like(gt)) is None


def test_cvpr25_box_median_slice_rule():
    gt = np.zeros((20, 20, 20), bool)
    gt[2:12, 2:12, 3:5] = True  # 200 voxels on slices 3, 4
    gt[5, 6, 5:15] = True  # 1 voxel on each of slices 5..14
    box = cvpr25_box(gt)
    z = np.sort(np.nonzero(gt)[2])
    assert box.mid_slice == z[len(z) // 2] == 4
    assert box == Box((2, 2, 3), (11, 11, 14), mid_slice=4)
    gt[5, 6, 15:] = True
    gt[:, :, 3] = False
    gt[1, 1, 4] = True
    box = cvpr25_box(gt)
    assert box.mid_slice == 4 and box.lo == (1, 1, 4) and box.hi == (11, 11, 19)


def test_cvpr25_box_perturbation():
    gt = _cube((512, 300, 8), (100, 100, 2), (200, 150, 6))
    tight = cvpr25_box(gt)
    seen = set()
    for s in range(30):
        b = cvpr25_box(gt, np.random.default_rng(s))
        sft = np.random.default_rng(s).integers(0, 6)
        di, dj = int(sft * 512 / 256), int(sft * 300 / 256)
        assert b.lo == (100 - di, 100 - dj, 2) and b.hi == (199 + di, 149 + dj, 5)
        assert b.mid_slice == tight.mid_slice
        seen.add(b)
    assert len(seen) > 1
    edge = _cube((64, 64, 8), (0, 0, 0), (64, 64, 8))
    b = cvpr25_box(edge, np.random.default_rng(0))
    assert b.lo == (0, 0, 0) and b.hi == (63, 63, 7)


# --------------------------------------------------------------------------------- first click, dispatch


def test_first_click_modes():
    gt = _cube((30, 30, 30), (10, 12, 14), (21, 23, 25))
    rng = np.random.default_rng(0)
    c = first_click(gt, rng, "random")
    assert c.positive and gt[c.voxel]
    assert first_click(gt, rng, "center") == Click((15.0, 17.0, 19.0), True)
    assert first_click(np.zeros_like(gt), rng, "center") is None
    assert first_click(np.zeros_like(gt), rng, "random") is None
    with pytest.raises(ValueError, match="center"):
        first_click(gt, rng, "middle")


def test_simulate_click_dispatch():
    pred, gt = _pred_gt(6)
    assert simulate_click("random", pred, gt, np.random.default_rng(3)) == random_click(
        pred, gt, np.random.default_rng(3)
    )
    sp = (1.0, 2.0, 0.5)
    assert simulate_click("dt", pred, gt, np.random.default_rng(3), sp) == dt_click(
        pred, gt, np.random.default_rng(3), sp
    )
    assert simulate_click("cvpr25", pred, gt, np.random.default_rng(3)) == cvpr25_click(pred, gt)
    with pytest.raises(ValueError, match="random, dt, cvpr25"):
        simulate_click("ritm", pred, gt, np.random.default_rng(0))
    with pytest.raises(ValueError, match="spacing"):
        simulate_click("dt", pred, gt, np.random.default_rng(0), (1.0, 0.0, 1.0))
