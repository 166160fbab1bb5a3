"""The session's prompts in voxel space, and their geometry: strokes sampled to clicks, lasso polygons filled,
prompts drawn into a window's grid.

Coordinates follow :mod:`volsam.transforms`: voxel indices ``(i, j, k)`` of the image array, spacings in mm
per axis. The prompt types of evaluation (``Click``, ``Box`` and the click simulators) are in
:mod:`volsam.prompts`; these are what a :class:`~volsam.session.Session` keeps per object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volsam.transforms import Window, extract_window, voxel_to_window, world_to_voxel

__all__ = [
    "PROMPT_CHANNELS",
    "PROMPT_KINDS",
    "VoxelPrompt",
    "box_channels",
    "box_prompt",
    "clip_segments",
    "deepest_points",
    "farthest_points",
    "fill_polygon",
    "lasso_voxels",
    "point_prompt",
    "prompt_channels",
    "prompt_from_voxels",
    "prompt_in_window",
    "to_voxel",
    "voxel_set",
    "voxels_inside",
]

PROMPT_KINDS = ("point", "box", "scribble", "lasso")
PROMPT_CHANNELS = tuple(f"{k}{sign}" for k in PROMPT_KINDS for sign in "+-")
"""Order of :meth:`Session.prompt_channels`: point+, point-, box+, box-, scribble+, scribble-, lasso+, lasso-."""


@dataclass(frozen=True, eq=False)
class VoxelPrompt:
    """One user prompt in volume voxel space: ``mask`` (bool sub-volume) placed at voxel ``origin``.

    Never modified after creation, so undo snapshots share them."""

    kind: str  # one of PROMPT_KINDS, or "paint" (a brush or eraser stroke, positive: brush)
    positive: bool
    origin: np.ndarray  # (3,) int64, the volume voxel of mask[0, 0, 0]
    mask: np.ndarray  # bool (a, b, c) >= 1 voxel per axis

    def voxels(self) -> np.ndarray:
        """Volume voxel indices (N, 3) int64 of the prompt."""
        return np.argwhere(self.mask) + self.origin


_SCATTER_MAX = 1 << 20  # voxels of a prompt also scattered into windows (strokes; not huge boxes)


def prompt_in_window(p: VoxelPrompt, affine: np.ndarray, window: Window) -> np.ndarray:
    """``p`` drawn on ``window``'s grid: bool ``(size,)*3``. A prompt covers each window voxel its voxels
    round to (thin strokes are never lost on a coarser window) and each window voxel whose centre falls in
    one of its voxels (none is sparse on a finer window); ``affine`` is the image's voxel -> mm RAS+."""
    shift = np.eye(4)
    shift[:3, 3] = p.origin - 1  # the crop is padded by one empty voxel: its hull then covers every voxel
    sub = np.pad(p.mask, 1).view(np.uint8)
    inside = extract_window(sub, affine @ shift, window, order=0) > 0.5
    if p.mask.sum() <= _SCATTER_MAX:
        wc = np.floor(voxel_to_window(p.voxels(), affine, window) + 0.5).astype(np.int64)
        ok = np.all((wc >= 0) & (wc < window.size), axis=1)
        inside[tuple(wc[ok].T)] = True
    return inside


def prompt_channels(prompts: list[VoxelPrompt], affine: np.ndarray, window: Window) -> np.ndarray:
    """``prompts`` as dense masks on ``window``'s grid: float32 ``[len(PROMPT_CHANNELS), size, size, size]``
    (0/1, channel order :data:`PROMPT_CHANNELS`), each drawn as :func:`prompt_in_window` does."""
    out = np.zeros((len(PROMPT_CHANNELS), *window.shape), dtype=np.float32)
    for p in prompts:
        c = PROMPT_CHANNELS.index(f"{p.kind}{'+' if p.positive else '-'}")
        out[c][prompt_in_window(p, affine, window)] = 1.0
    return out


def box_channels(prompts: list[VoxelPrompt], affine: np.ndarray, window: Window) -> dict[str, np.ndarray]:
    """The box prompts among ``prompts`` on ``window``'s grid, by early-fusion channel name (``box_pos``,
    ``box_neg``): float32 ``(size,)*3`` 0/1, the union of each sign's boxes; empty without boxes."""
    out: dict[str, np.ndarray] = {}
    for p in prompts:
        if p.kind == "box":
            name = "box_pos" if p.positive else "box_neg"
            m = prompt_in_window(p, affine, window).astype(np.float32)
            out[name] = np.maximum(out[name], m) if name in out else m
    return out


def prompt_from_voxels(kind: str, positive: bool, idx: np.ndarray) -> VoxelPrompt:
    lo = idx.min(axis=0)
    mask = np.zeros(tuple(idx.max(axis=0) - lo + 1), dtype=bool)
    mask[tuple((idx - lo).T)] = True
    mask.setflags(write=False)
    return VoxelPrompt(kind, positive, lo.astype(np.int64), mask)


def point_prompt(voxel: np.ndarray, positive: bool) -> VoxelPrompt:
    return prompt_from_voxels("point", positive, np.floor(np.asarray(voxel) + 0.5).astype(np.int64)[None])


def box_prompt(lo: np.ndarray, hi: np.ndarray, positive: bool) -> VoxelPrompt:
    a, b = np.floor(lo + 0.5).astype(np.int64), np.floor(hi + 0.5).astype(np.int64)
    mask = np.ones(tuple(b - a + 1), dtype=bool)
    mask.setflags(write=False)
    return VoxelPrompt("box", positive, a, mask)


def farthest_points(idx: np.ndarray, spacing: np.ndarray, k: int) -> list[np.ndarray]:
    """Up to ``k`` voxels of ``idx`` (N, 3): the one nearest the centroid, then each farthest (mm) from
    those chosen."""
    mm = idx * spacing
    chosen = [int(np.argmin(((mm - mm.mean(0)) ** 2).sum(1)))]
    dist = ((mm - mm[chosen[0]]) ** 2).sum(1)
    while len(chosen) < min(k, len(idx)) and dist.max() > 0:
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, ((mm - mm[chosen[-1]]) ** 2).sum(1))
    return [idx[i].astype(np.float64) for i in chosen]


def deepest_points(mask: np.ndarray, spacing: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` voxels (K, 3) of ``mask`` (a crop) at maxima of its distance transform (mm), computed
    in-plane for a one-slice mask; each next maximum lies outside the balls of those chosen and at least
    half as deep as the first."""
    import scipy.ndimage as ndi

    keep = [a for a in range(3) if mask.shape[a] > 1]
    flat = mask.reshape([mask.shape[a] for a in keep]) if keep else mask.reshape(1)
    if not keep:
        return np.zeros((1, 3), dtype=np.int64)
    sp = spacing[keep]
    dist = ndi.distance_transform_edt(np.pad(flat, 1), sampling=sp)[(slice(1, -1),) * len(keep)]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in flat.shape], indexing="ij"), -1) * sp
    out = []
    first = None
    while len(out) < k:
        i = np.unravel_index(int(np.argmax(dist)), dist.shape)
        d = float(dist[i])
        if d <= 0 or (first is not None and d < first / 2):
            break
        first = d if first is None else first
        out.append(i)
        dist = np.where(((grid - grid[i]) ** 2).sum(-1) <= (2 * d) ** 2, 0.0, dist)
    pts = np.zeros((len(out), 3), dtype=np.int64)
    pts[:, keep] = np.asarray(out, dtype=np.int64)
    return pts


_MAX_LASSO_COORD = 1e9  # voxels; beyond it edge arithmetic nears float overflow, and no slice is that large


def clip_segments(
    start: np.ndarray, end: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The parts of segments ``start -> end`` (N, D) inside the box ``lo <= x <= hi`` (Liang-Barsky); segments
    that miss the box are dropped. Returns the clipped (start, end), each (K, D), K <= N."""
    d = end - start
    t0, t1 = np.zeros(len(start)), np.ones(len(start))
    keep = np.ones(len(start), dtype=bool)
    for k in range(start.shape[1]):
        flat = d[:, k] == 0
        keep &= ~flat | ((start[:, k] >= lo[k]) & (start[:, k] <= hi[k]))
        with np.errstate(divide="ignore", invalid="ignore"):
            ta, tb = (lo[k] - start[:, k]) / d[:, k], (hi[k] - start[:, k]) / d[:, k]
        t0 = np.where(flat, t0, np.maximum(t0, np.minimum(ta, tb)))
        t1 = np.where(flat, t1, np.minimum(t1, np.maximum(ta, tb)))
    keep &= t0 <= t1
    return start[keep] + t0[keep, None] * d[keep], start[keep] + t1[keep, None] * d[keep]


def fill_polygon(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """In-plane voxels (N, 2) of a closed polygon (M, 2) whose centres lie inside it or on its outline,
    clipped to ``shape``."""
    from matplotlib.path import Path as PolyPath

    poly = np.asarray(polygon, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3 or not np.all(np.isfinite(poly)):
        raise ValueError(f"a lasso polygon must be at least 3 finite vertices (M, 2), got shape {poly.shape}")
    if np.abs(poly).max() > _MAX_LASSO_COORD:
        raise ValueError(f"lasso vertices must lie within {_MAX_LASSO_COORD:.0e} voxels of the origin, "
                         f"got {np.abs(poly).max():.3g}")
    lo = np.clip(np.floor(poly.min(0)), 0, np.asarray(shape) - 1).astype(int)  # clipped before the cast,
    hi = np.clip(np.ceil(poly.max(0)), 0, np.asarray(shape) - 1).astype(int)  # which far vertices overflow
    uu, vv = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    centres = np.stack([uu.ravel(), vv.ravel()], -1)
    inside = centres[PolyPath(poly).contains_points(centres)]
    # The outline itself, sampled every half voxel, so thin or tiny polygons still hold voxels; each edge is
    # first clipped to the slice, so a vertex far outside costs no more than one inside.
    a, b = clip_segments(poly, np.roll(poly, -1, axis=0), np.full(2, -1.0), np.asarray(shape, np.float64))
    steps = np.ceil(2 * np.abs(b - a).max(1)).astype(int) + 1
    outline = np.concatenate([np.zeros((0, 2))] + [np.linspace(p, q, n) for p, q, n in zip(a, b, steps, strict=True)])
    outline = np.floor(outline + 0.5).astype(np.int64)
    pts = np.concatenate([inside.astype(np.int64), outline])
    pts = pts[np.all((pts >= 0) & (pts < np.asarray(shape)), axis=1)]
    if len(pts) == 0:
        raise ValueError(f"the lasso polygon lies outside the slice of shape {shape}")
    return np.unique(pts, axis=0)


# ----------------------------------------------------------------------------- checked input


def voxels_inside(
    points: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], world: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Finite points (N, 3) (voxel, or mm RAS+ with ``world``) -> float voxel coordinates (N, 3) and (N,)
    bool: the point rounds to a voxel of a volume of ``shape``. Checked on floats, before any integer cast."""
    with np.errstate(over="ignore", invalid="ignore"):  # a huge world point: inf/NaN, never inside
        v = world_to_voxel(points, affine) if world else points
    inside = np.all(np.isfinite(v) & (v >= -0.5) & (v < np.asarray(shape) - 0.5), axis=1)
    return v, inside


def to_voxel(
    point: tuple[float, float, float] | np.ndarray, affine: np.ndarray, shape: tuple[int, ...], world: bool
) -> np.ndarray:
    """One point (voxel, or mm RAS+ with ``world``) -> float voxel coordinates (3,); a one-line ValueError
    when it is not 3 finite numbers or lies outside the volume."""
    p = np.asarray(point, dtype=np.float64).reshape(-1)
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise ValueError(f"a point must be 3 finite numbers (i, j, k), got {point!r}")
    v, inside = voxels_inside(p[None], affine, shape, world)
    v = v[0]
    if not inside[0]:
        pt = tuple(float(x) for x in p)
        what = f"world point {pt} mm (RAS) = voxel {tuple(round(float(x), 2) for x in v)}" if world else f"point {pt}"
        raise ValueError(f"{what} is outside the volume of shape {tuple(shape)} (valid voxel indices 0..n-1)")
    return v


def voxel_set(
    voxels: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], world: bool, what: str
) -> np.ndarray:
    """Points (N, 3) (voxel, or mm RAS+ with ``world``) or a volume-shaped mask -> unique voxels (N, 3)
    int64; ``what`` names the prompt in the one-line ValueError."""
    a = np.asarray(voxels)
    if a.ndim == 3 and a.shape == tuple(shape):
        if world:
            raise ValueError(f"a {what} given as a mask is on the image grid; world=True is for points")
        idx = np.argwhere(a)
    else:
        p = np.asarray(a, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 3 or not np.all(np.isfinite(p)):
            raise ValueError(
                f"a {what} must be finite points (N, 3) or a mask shaped like the image {tuple(shape)}, "
                f"got shape {a.shape}"
            )
        v, inside = voxels_inside(p, affine, shape, world)
        bad = ~inside
        if bad.any():
            raise ValueError(f"{what} point {tuple(p[bad][0].tolist())} is outside the volume of shape {tuple(shape)}")
        idx = np.floor(v + 0.5).astype(np.int64)
    if len(idx) == 0:
        raise ValueError(f"a {what} needs at least one voxel, got none")
    return np.unique(idx.astype(np.int64), axis=0)


def lasso_voxels(
    polygon: np.ndarray, axis: int | None, index: int | None, affine: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """A lasso's voxels (N, 3): a closed polygon (M, 2) on slice ``index`` of voxel ``axis`` (vertices in
    the two other axes, in increasing axis order), or an already filled volume-shaped mask."""
    poly = np.asarray(polygon)
    if poly.ndim == 3:
        return voxel_set(poly, affine, shape, False, "lasso")
    if axis not in (0, 1, 2) or index is None or not 0 <= int(index) < shape[axis]:
        raise ValueError(
            f"a lasso polygon needs axis 0, 1 or 2 and a slice index inside the volume {tuple(shape)}, "
            f"got axis={axis!r} index={index!r}"
        )
    plane = tuple(a for a in range(3) if a != axis)
    uv = fill_polygon(poly, (shape[plane[0]], shape[plane[1]]))
    return np.insert(uv, axis, int(index), axis=1)
