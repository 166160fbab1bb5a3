"""Geometry tests: windows, resampling onto windows and pasting masks back, on synthetic volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from volsam.transforms import (
    Window,
    _extract_general,
    _paste_general,
    extract_window,
    normalize_window,
    normalize_windows,
    paste_back,
    voxel_to_window,
    voxel_to_world,
    window_footprint,
    window_for_point,
    window_to_voxel,
    world_to_voxel,
)


def _rot(axis: int, deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    a, b = [i for i in range(3) if i != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


# Voxel -> world linear parts; each maps the volume's centre voxel to the world point CENTRE.
GEOMETRIES = {
    "anisotropic RAS 0.7x0.9x2.5": np.diag([0.7, 0.9, 2.5]),
    "LPS-like flips": np.diag([-0.8, -0.8, 1.5]),
    "permuted+flipped": np.array([[0.0, 0.0, -1.2], [-0.9, 0.0, 0.0], [0.0, 0.8, 0.0]]),
    "oblique": _rot(0, 25) @ _rot(2, 30) @ np.diag([0.9, 1.1, 1.6]),
}
CENTRE = np.array([12.0, -30.0, 45.0])  # mm RAS
EXTENT_MM = 72.0


def _volume(linear: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape covering ~72 mm per axis and the affine placing its centre voxel at CENTRE."""
    spacing = np.linalg.norm(linear, axis=0)
    shape = tuple(int(np.ceil(EXTENT_MM / s)) for s in spacing)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = CENTRE - linear @ ((np.array(shape) - 1) / 2)
    return (shape[0], shape[1], shape[2]), affine


def _world_grid(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return voxel_to_world(idx, affine)


def _ball(shape: tuple[int, ...], affine: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    return (np.linalg.norm(_world_grid(shape, affine) - centre, axis=-1) <= radius).astype(np.uint8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ----------------------------------------------------------------------------------- points and windows


def test_voxel_world_round_trip() -> None:
    _, affine = _volume(GEOMETRIES["oblique"])
    pts = np.random.default_rng(0).uniform(-5, 60, size=(20, 3))
    world = voxel_to_world(pts, affine)
    assert np.allclose(world, pts @ affine[:3, :3].T + affine[:3, 3])
    assert np.allclose(world_to_voxel(world, affine), pts)
    assert voxel_to_world(pts[0], affine).shape == (3,)


def test_window_affine_and_centre() -> None:
    w = Window(np.array([10.0, -20.0, 30.0]))
    assert w.size == 128 and w.spacing == 1.5 and w.center_index == 64
    assert np.allclose(w.window_to_world([64, 64, 64]), [10.0, -20.0, 30.0])
    assert np.allclose(w.affine[:3, :3], np.eye(3) * 1.5)  # axes point R, A, S
    assert np.allclose(w.window_to_world([65, 64, 63]) - w.center_world, [1.5, 0.0, -1.5])
    assert np.allclose(w.world_to_window(w.window_to_world([[3.5, 100, 7]])), [[3.5, 100, 7]])
    assert np.allclose(w.affine @ [64, 64, 64, 1], [10, -20, 30, 1])
    odd = Window([0.0, 0.0, 0.0], size=5, spacing=2.0)
    assert np.allclose(odd.window_to_world([2, 2, 2]), 0.0)
    assert np.allclose(odd.origin_world, -4.0)


def test_window_contains_and_equality() -> None:
    w = Window([0.0, 0.0, 0.0], size=8)
    got = w.contains([[0, 0, 0], [-0.5, 7.49, 3], [-0.51, 0, 0], [0, 7.5, 0], [7, 7, 7]])
    assert got.tolist() == [True, True, False, False, True]
    assert w == Window(np.zeros(3), size=8) and hash(w) == hash(Window(np.zeros(3), size=8))
    assert w != Window([0.0, 0.0, 0.1], size=8)
    with pytest.raises(ValueError):
        w.center_world[0] = 1.0  # read-only
    with pytest.raises(ValueError, match="center_world"):
        Window([1.0, 2.0])


def test_window_for_point_and_voxel_window_maps() -> None:
    _, affine = _volume(GEOMETRIES["permuted+flipped"])
    p = np.array([10.25, 20.0, 33.5])
    w = window_for_point(affine, p, size=64, spacing=2.0)
    assert w.size == 64 and w.spacing == 2.0
    assert np.allclose(w.center_world, voxel_to_world(p, affine))
    assert np.allclose(voxel_to_window(p, affine, w), [32, 32, 32])
    q = np.array([[1.0, 2.0, 3.0], [40.0, 5.0, 9.0]])
    assert np.allclose(window_to_voxel(voxel_to_window(q, affine, w), affine, w), q)


# ------------------------------------------------------------------------------------- extract_window


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_extract_window_reproduces_linear_field(name: str) -> None:
    """Trilinear interpolation is exact for a field linear in world space: checks the full geometry."""
    shape, affine = _volume(GEOMETRIES[name])
    g, b = np.array([0.5, -1.25, 2.0]), 7.0
    field = (_world_grid(shape, affine) @ g + b).astype(np.float32)
    win = Window(CENTRE + np.array([3.0, -2.0, 4.0]), size=64, spacing=1.5)
    out = extract_window(field, affine, win, order=1, cval=-999.0)
    assert out.shape == (64, 64, 64) and out.dtype == np.float32
    grid = np.stack(np.meshgrid(*[np.arange(64)] * 3, indexing="ij"), axis=-1)
    vox = window_to_voxel(grid, affine, win)
    inside = np.all((vox >= 1e-3) & (vox <= np.array(shape) - 1 - 1e-3), axis=-1)
    outside = np.any((vox < -1e-3) | (vox > np.array(shape) - 1 + 1e-3), axis=-1)
    assert inside.sum() > 20000 and outside.sum() > 1000
    expected = win.window_to_world(grid) @ g + b
    assert np.allclose(out[inside], expected[inside], atol=2e-3)
    assert np.all(out[outside] == -999.0)


@pytest.mark.parametrize("name", [n for n in GEOMETRIES if n != "oblique"])
@pytest.mark.parametrize("order", [0, 1])
def test_separable_extract_matches_scipy(name: str, order: int) -> None:
    shape, affine = _volume(GEOMETRIES[name])
    data = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    win = Window(CENTRE + np.array([17.3, -5.1, 2.2]), size=48, spacing=1.5)
    fast = extract_window(data, affine, win, order=order, cval=3.0)
    ref = _extract_general(data, np.linalg.inv(affine) @ win.affine, 48, order, 3.0)
    grid = np.stack(np.meshgrid(*[np.arange(48)] * 3, indexing="ij"), axis=-1)
    vox = window_to_voxel(grid, affine, win)
    # Samples within 1e-4 voxel of the volume's edge may fall either side of it.
    edge = np.any((np.abs(vox) < 1e-4) | (np.abs(vox - (np.array(shape) - 1)) < 1e-4), axis=-1)
    assert np.allclose(fast[~edge], ref[~edge], atol=1e-5)
    assert (fast == 3.0).sum() > 1000  # the window does stick out of the volume


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_ball_lands_at_expected_window_voxels(name: str) -> None:
    shape, affine = _volume(GEOMETRIES[name])
    ball_centre = CENTRE + np.array([5.0, -4.0, 6.0])
    image = _ball(shape, affine, ball_centre, 15.0).astype(np.float32)
    win = Window(ball_centre + np.array([-9.0, 6.0, 3.0]))  # ball centre at window voxel 64 + (9, -6, -3) / 1.5
    expected = np.array([70.0, 60.0, 62.0])
    out = extract_window(image, affine, win)
    assert out[70, 60, 62] == pytest.approx(1.0)
    assert out[70 + 14, 60, 62] == 0.0 and out[70, 60 - 14, 62] == 0.0 and out[70, 60, 62 + 14] == 0.0
    idx = np.argwhere(out > 0)
    centroid = (idx * out[out > 0][:, None]).sum(axis=0) / out.sum()
    assert np.allclose(centroid, expected, atol=0.35)
    # Volume of the ball in mm^3 is preserved by trilinear resampling to within a few percent.
    assert out.sum() * 1.5**3 == pytest.approx(4 / 3 * np.pi * 15.0**3, rel=0.05)


def test_extract_window_outside_volume_is_cval() -> None:
    shape, affine = _volume(np.diag([1.0, 1.0, 1.0]))
    win = Window(CENTRE + 500.0, size=16)
    for order in (0, 1, 3):
        out = extract_window(np.ones(shape, np.float32), affine, win, order=order, cval=-2.0)
        assert np.all(out == -2.0)


def test_extract_window_integer_and_bool_inputs() -> None:
    shape, affine = _volume(np.diag([1.5, 1.5, 1.5]))
    labels = np.zeros(shape, np.int16)
    labels[20:30, 20:30, 20:30] = 3
    win = window_for_point(affine, (25, 25, 25), size=32)
    out = extract_window(labels, affine, win, order=0)
    assert out.dtype == np.float32 and set(np.unique(out)) == {0.0, 3.0}
    assert np.array_equal(extract_window(labels > 0, affine, win, order=0), (out > 0).astype(np.float32))


# ------------------------------------------------------------------------------------------ paste_back


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_paste_back_recovers_ball(name: str) -> None:
    shape, affine = _volume(GEOMETRIES[name])
    ball_centre = CENTRE + np.array([5.0, -4.0, 6.0])
    mask = _ball(shape, affine, ball_centre, 18.0)
    win = Window(ball_centre + np.array([-9.0, 6.0, 3.0]))
    # Trilinear resampling of the label then > 0.5 keeps the boundary sub-voxel accurate, so the loss
    # left is the 1.5 mm window lattice itself.
    window_mask = extract_window(mask, affine, win, order=1) > 0.5
    back = paste_back(window_mask, win, shape, affine)
    assert back.dtype == np.uint8 and back.shape == shape
    assert _dice(back, mask) > 0.95
    centre_voxel = tuple(np.round(world_to_voxel(ball_centre, affine)).astype(int))
    assert back[centre_voxel] == 1
    far = (np.linalg.norm(_world_grid(shape, affine) - ball_centre, axis=-1) > 18.0 + 3.0) & (back == 1)
    assert not far.any()


@pytest.mark.parametrize(
    "linear", [np.diag([1.5, 1.5, 1.5]), np.diag([-1.5, -1.5, 1.5]), np.array([[0, 0, 1.5], [0, -1.5, 0], [1.5, 0, 0]])]
)
def test_paste_back_exact_on_matching_grid(linear: np.ndarray) -> None:
    """Volume on the window's own 1.5 mm lattice: extract (nearest) then paste back is the identity."""
    shape = (40, 50, 30)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = [-20.0, 7.0, 3.0]
    rng = np.random.default_rng(2)
    mask = (rng.random(shape) > 0.6).astype(np.uint8)
    win = window_for_point(affine, (20, 10, 22), size=32)
    back = paste_back(extract_window(mask, affine, win, order=0) > 0.5, win, shape, affine)
    foot = window_footprint(win, shape, affine)
    assert np.array_equal(back[foot], mask[foot])
    rest = np.ones(shape, bool)
    rest[foot] = False
    assert rest.any() and not back[rest].any()
    assert all(s.stop - s.start == min(32, n) or s.start == 0 or s.stop == n for s, n in zip(foot, shape, strict=True))


@pytest.mark.parametrize("name", [n for n in GEOMETRIES if n != "oblique"])
def test_separable_paste_matches_general_path(name: str) -> None:
    shape, affine = _volume(GEOMETRIES[name])
    win = Window(CENTRE + np.array([20.3, -7.7, 11.1]), size=40, spacing=1.5)
    wm = (np.random.default_rng(3).random((40, 40, 40)) > 0.5).astype(np.uint8)
    fast = paste_back(wm, win, shape, affine)
    general = np.zeros(shape, np.uint8)
    _paste_general(wm, np.linalg.inv(win.affine) @ affine, general)
    assert fast.any() and np.array_equal(fast, general)


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_paste_back_matches_brute_force_nearest(name: str) -> None:
    """Every volume voxel takes the window voxel its centre rounds to (floor(x + 0.5)); others stay 0."""
    shape, affine = _volume(GEOMETRIES[name])
    win = Window(CENTRE + np.array([4.0, 2.0, -3.0]), size=24, spacing=2.0)
    wm = (np.random.default_rng(4).random((24, 24, 24)) > 0.5).astype(np.uint8)
    back = paste_back(wm, win, shape, affine)
    wc = np.floor(voxel_to_window(np.argwhere(np.ones(shape)), affine, win) + 0.5).astype(int)
    ok = np.all((wc >= 0) & (wc < 24), axis=1)
    expected = np.zeros(int(np.prod(shape)), np.uint8)
    expected[ok] = wm[wc[ok, 0], wc[ok, 1], wc[ok, 2]]
    assert ok.sum() > 1000 and (~ok).sum() > 1000
    assert np.array_equal(back.ravel(), expected)


def test_paste_back_threshold_out_and_labels() -> None:
    shape, affine = _volume(np.diag([1.0, 1.0, 1.0]))
    win = window_for_point(affine, (36, 36, 36), size=16, spacing=1.0)  # covers voxels 28..43
    logits = np.full((1, 1, 16, 16, 16), -3.0, np.float32)
    logits[..., 8, 8, 8] = 0.4
    assert paste_back(logits, win, shape, affine).sum() == 1
    assert paste_back(logits, win, shape, affine, threshold=0.5).sum() == 0
    assert paste_back(logits, win, shape, affine)[36, 36, 36] == 1

    out = np.full(shape, 7, np.uint8)
    res = paste_back(np.zeros((16, 16, 16), bool), win, shape, affine, out=out)
    assert res is out
    foot = window_footprint(win, shape, affine)
    assert foot == (slice(28, 44), slice(28, 44), slice(28, 44))
    assert np.all(out[foot] == 0) and (out == 7).sum() == np.prod(shape) - 16**3

    labels = np.zeros((16, 16, 16), np.int32)
    labels[0, 0, 0] = 5
    assert paste_back(labels, win, shape, affine)[28, 28, 28] == 5
    with pytest.raises(ValueError, match="shape"):
        paste_back(np.zeros((8, 8, 8), bool), win, shape, affine)
    with pytest.raises(ValueError, match="uint8"):
        paste_back(logits, win, shape, affine, out=np.zeros(shape, np.int32))


def test_paste_back_window_outside_volume_is_noop() -> None:
    shape, affine = _volume(np.diag([1.0, 1.0, 1.0]))
    win = Window(CENTRE + 400.0, size=16)
    for a in (affine, np.block([[GEOMETRIES["oblique"], affine[:3, 3:]], [np.zeros((1, 3)), np.ones((1, 1))]])):
        assert not paste_back(np.ones((16, 16, 16), bool), win, shape, a).any()
        foot = window_footprint(win, shape, a)
        assert any(s.stop == s.start for s in foot)


def test_window_footprint_known_box_and_bounds() -> None:
    affine = np.eye(4)  # 1 mm RAS, voxel (i, j, k) at world (i, j, k)
    win = Window([100.0, 100.0, 100.0])  # covers world [100 - 96.75, 100 + 95.25)
    assert window_footprint(win, (256, 256, 256), affine) == (slice(4, 196),) * 3
    assert window_footprint(win, (150, 300, 50), affine) == (slice(4, 150), slice(4, 196), slice(4, 50))
    # Oblique: the box is the tight bounding box of the voxels paste_back writes.
    shape, obl = _volume(GEOMETRIES["oblique"])
    w2 = Window(CENTRE + np.array([30.0, 0.0, 0.0]), size=32)
    written = np.argwhere(paste_back(np.ones((32, 32, 32), bool), w2, shape, obl))
    foot = window_footprint(w2, shape, obl)
    for ax, s in enumerate(foot):
        assert s.start <= written[:, ax].min() and written[:, ax].max() < s.stop
        assert written[:, ax].min() - s.start <= 1 and s.stop - 1 - written[:, ax].max() <= 1


# ------------------------------------------------------------------------------------ normalize_window


def test_normalize_window_matches_torchio_rule() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(50, 30, size=(16, 16, 16)).astype(np.float32)
    x[:4] = 0.0
    got = normalize_window(x)
    t = torch.from_numpy(x)
    vals = t[t > 0]
    want = ((t - vals.mean()) / vals.std()).numpy()  # torch std is unbiased, as in torchio
    assert got.dtype == np.float32 and np.allclose(got, want, atol=1e-5)
    assert not np.allclose(got, (x - x.mean()) / x.std(), atol=1e-2)


def test_normalize_window_clip_and_degenerate_inputs() -> None:
    x = np.array([-3000.0, -500.0, 0.0, 400.0, 2500.0], np.float32).reshape(1, 1, 5)
    got = normalize_window(x, clip=(-1000.0, 1000.0))
    c = np.clip(x, -1000, 1000)
    fg = c[c > 0]
    assert np.allclose(got, (c - fg.mean()) / fg.std(ddof=1), atol=1e-5)
    neg = -np.arange(1.0, 9.0, dtype=np.float32).reshape(2, 2, 2)  # no voxel > 0: all voxels
    assert np.allclose(normalize_window(neg), (neg - neg.mean()) / neg.std(ddof=1), atol=1e-5)
    const = np.full((4, 4, 4), 5.0, np.float32)
    assert np.all(normalize_window(const) == 0.0)
    assert np.all(normalize_window(np.zeros((4, 4, 4))) == 0.0)
    nan = np.ones((2, 2, 2), np.float32)
    nan[0, 0, 0] = np.nan
    assert np.all(np.isfinite(normalize_window(nan)))
    one = -np.ones((3, 3, 3), np.float32)
    one[1, 1, 1] = 4.0  # one voxel > 0: its value is the mean, its std (0) counts as 1
    assert np.array_equal(normalize_window(one), one - 4.0)


def test_normalize_windows_is_the_batched_normalize_window() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 6, 7, 8, generator=g) * 300 - 90
    x[2] = -x[2].abs()  # no voxel > 0: statistics from all voxels
    x[3] = -1.0
    x[3, 2, 2, 2] = 7.0  # a single voxel > 0
    got = normalize_windows(x)
    for k in range(4):
        assert np.array_equal(got[k].numpy(), normalize_window(x[k].numpy()))
    assert not torch.equal(got[0], got[1]) and float(got[0][x[0] > 0].mean().abs()) < 1e-5


def test_paste_back_bounded_by_mask_box_equals_full_footprint():
    """Painting into zeros only around the non-zero window voxels gives the full result (oblique grid)."""
    from volsam.transforms import Window, paste_back

    t = np.deg2rad(20)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]) @ np.diag(
        [0.9, 1.1, 1.7]
    )
    shape = (60, 70, 40)
    window = Window(affine[:3, :3] @ (np.array(shape) / 2), size=32, spacing=1.5)
    rng = np.random.default_rng(0)
    wm = np.zeros((32, 32, 32), bool)
    wm[10:19, 5:12, 20:30] = rng.random((9, 7, 10)) > 0.3
    fast = paste_back(wm, window, shape, affine)
    full = paste_back(wm, window, shape, affine, out=np.zeros(shape, np.uint8))
    assert fast.sum() > 0 and np.array_equal(fast, full)
