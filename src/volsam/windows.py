"""Which windows an interaction runs: the SAM family's single-spacing windows that grow across a border
(:func:`route`, :func:`grow`) and an early-fusion model's multi-scale windows (:func:`interact`): at which
spacing, and how their predictions compose into the object's mask. Both algorithms are described once, in
:mod:`volsam.session`'s docstring ("Windows"); this module implements them over
:class:`~volsam.session_state.ObjectState`, with the model call passed in (``predict``), so it holds no
model and no image.

Geometry follows :mod:`volsam.transforms`: volume voxel indices ``(i, j, k)``, windows RAS+-aligned, mm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi
import torch

from volsam.session_state import MASK_PROMPT_LOGIT, Crop, ObjectState, WindowState, border_touches
from volsam.transforms import Window, extract_window, paste_back, voxel_to_window, voxel_to_world, window_to_voxel

__all__ = ["SCALES", "Geometry", "box_level", "grow", "interact", "refine_centres", "route", "touches_border"]

SCALES = (1.0, 2.0, 4.0)
"""Window spacings of an early-fusion model, as multiples of the session's ``spacing`` (1.5 / 3 / 6 mm)."""
BOX_MARGIN = 0.125
"""A box fits a level when it leaves this fraction of the window's field free on each side."""
REFINE_COVER = 0.9
"""Refinement stops once this fraction of the coarse border is inside fine windows."""

Click = tuple[np.ndarray, int]  # volume voxel (3,) float, label 1/0
Predict = Callable[[WindowState, list[Click], "torch.Tensor | None"], None]
"""Runs the model on a window with these clicks (window coordinates) and prior logits; sets its logits, mask."""


@dataclass(frozen=True)
class Geometry:
    """What the window logic needs of the image: voxel -> mm RAS+ ``affine``, ``shape``, the window side
    ``size`` and the spacing (mm) of each level."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    size: int
    spacings: tuple[float, ...]

    def window(self, voxel: np.ndarray, level: int) -> Window:
        return Window(voxel_to_world(voxel, self.affine), size=self.size, spacing=self.spacings[level])

    def clip(self, voxel: np.ndarray) -> np.ndarray:
        """Keep a window centre where there is image: a window centred outside sees mostly padding."""
        return np.clip(voxel, 0, np.asarray(self.shape) - 1)


# ----------------------------------------------------------------------------- SAM family: one spacing


def route(
    obj: ObjectState,
    clicks: list[Click],
    geo: Geometry,
    open_window: Callable[[np.ndarray], WindowState],
    predict: Callable[[WindowState], None],
    on_initial: Callable[[np.ndarray], bool],
) -> None:
    """Each click to every window of ``obj`` it falls in; outside them a positive click (or a negative one on
    the initial mask) opens a window centred on it. Each touched window is predicted once."""
    touched: list[WindowState] = []
    for voxel, label in clicks:
        hit = False
        for ws in obj.windows:
            wc = voxel_to_window(voxel, geo.affine, ws.window)
            if ws.window.contains(wc):
                ws.clicks.append((wc, label))
                hit = True
                if not any(t is ws for t in touched):
                    touched.append(ws)
        # A negative click outside every window marks voxels the object does not hold; a window prompted
        # only by it could add foreground, and would cost an encoder pass.
        if not hit and (label == 1 or on_initial(voxel)):
            ws = open_window(voxel)
            ws.clicks.append((voxel_to_window(voxel, geo.affine, ws.window), label))
            obj.windows.append(ws)
            touched.append(ws)
    for ws in touched:
        predict(ws)


def grow(
    obj: ObjectState,
    geo: Geometry,
    open_window: Callable[[np.ndarray], WindowState],
    predict: Callable[[WindowState], None],
    max_windows: int,
) -> None:
    """Add overlapping windows where masks touch a window border, up to ``max_windows`` for the object."""
    queue = list(obj.windows)
    while queue and len(obj.windows) < max_windows:
        ws = queue.pop(0)
        for centre_vox, seed_vox in border_touches(ws.mask, ws.window, geo.affine, geo.shape):
            if len(obj.windows) >= max_windows:
                break
            new = open_window(centre_vox)
            win = new.window
            near = win.spacing * win.size / 4
            if any(np.allclose(win.center_world, o.window.center_world, atol=near) for o in obj.windows):
                continue
            new.clicks.append((voxel_to_window(seed_vox, geo.affine, win), 1))
            predict(new)
            obj.windows.append(new)
            queue.append(new)


# ----------------------------------------------------------------------------- early fusion: multi-scale


def box_level(lo: np.ndarray, hi: np.ndarray, flat: np.ndarray, voxel_mm: np.ndarray, geo: Geometry) -> int:
    """The finest level whose field holds the box (voxel corners ``lo``..``hi``) with ``BOX_MARGIN`` free
    on each side; a 2D box (``flat`` axes) counts its largest in-plane extent through-plane too."""
    ext = (hi - lo + 1) * voxel_mm
    if len(flat):
        ext[flat] = np.delete(ext, flat).max()
    for level, sp in enumerate(geo.spacings):
        if np.all(ext <= geo.size * sp * (1 - 2 * BOX_MARGIN)):
            return level
    return len(geo.spacings) - 1


def touches_border(mask: np.ndarray, window: Window, geo: Geometry) -> bool:
    """Whether ``mask`` (the window's, ``(size,)*3``) reaches a face of the window that lies inside the
    volume (a face beyond the image border says nothing about the target's extent)."""
    s = mask.shape[0]
    for axis in range(3):
        for idx in (0, s - 1):
            face = np.take(mask, idx, axis=axis)
            if face.any():
                pts = np.insert(np.argwhere(face).astype(float), axis, idx, axis=1)
                v = window_to_voxel(pts, geo.affine, window)
                if np.any(np.all((v >= -0.5) & (v < np.asarray(geo.shape) - 0.5), axis=1)):
                    return True
    return False


def _border_voxels(mask: np.ndarray, window: Window, geo: Geometry) -> np.ndarray:
    """Volume voxel coordinates (N, 3) of the window mask's surface voxels inside the volume."""
    border = mask & ~ndi.binary_erosion(mask)
    v = window_to_voxel(np.argwhere(border).astype(float), geo.affine, window)
    return v[np.all((v >= -0.5) & (v < np.asarray(geo.shape) - 0.5), axis=1)]


def refine_centres(mask: np.ndarray, window: Window, level: int, geo: Geometry, budget: int) -> list[np.ndarray]:
    """Centres (volume voxels) of at most ``budget`` windows of ``level`` along the surface of a coarser
    window's ``mask``: greedily, each next window centred on the surface voxel whose window covers the most
    surface not yet covered, until ``REFINE_COVER`` of it is."""
    pts = _border_voxels(mask, window, geo)
    if budget < 1 or len(pts) == 0:
        return []
    mm = voxel_to_world(pts, geo.affine)
    if len(mm) > 1500:  # a subsample decides as well and keeps the pairwise table small
        mm = mm[np.random.default_rng(0).choice(len(mm), 1500, replace=False)]
    half = geo.size * geo.spacings[level] / 2 * 0.9  # a little inside the field: its border is least sure
    near = np.ones((len(mm), len(mm)), dtype=bool)
    for a in range(3):
        near &= np.abs(mm[:, None, a] - mm[None, :, a]) <= half
    left = np.ones(len(mm), dtype=bool)
    out = []
    while len(out) < budget and left.mean() > 1 - REFINE_COVER:
        gain = (near & left[None, :]).sum(1)
        best = int(np.argmax(gain))
        out.append(mm[best])
        left &= ~near[best]
    inv = np.linalg.inv(geo.affine)
    return [geo.clip(inv[:3, :3] @ c + inv[:3, 3]) for c in out]


def prior_logits(canvas: np.ndarray, window: Window, geo: Geometry, low_res: int) -> torch.Tensor | None:
    """The object's mask so far (uint8, volume-shaped) as a mask prompt on ``window``: ``+-MASK_PROMPT_LOGIT``
    area-averaged onto the low-res grid, [1, 1, g, g, g] (CPU); None where the window sees none of it."""
    frac = extract_window(canvas, geo.affine, window, order=1)
    if not (frac > 0).any():
        return None
    low = torch.nn.functional.adaptive_avg_pool3d(torch.from_numpy(frac)[None, None], low_res)
    return MASK_PROMPT_LOGIT * (2 * low - 1)


def _seed(prior: torch.Tensor | None, size: int) -> np.ndarray | None:
    """A positive click (window coordinates) at the deepest point of the prior mask, for a window that no
    positive click of the user's reaches; None without a prior."""
    if prior is None:
        return None
    low = (prior[0, 0] > 0).numpy()
    if not low.any():
        return None
    d = ndi.distance_transform_edt(np.pad(low, 1))[1:-1, 1:-1, 1:-1]
    i = np.asarray(np.unravel_index(int(np.argmax(d)), d.shape), dtype=np.float64)
    return (i + 0.5) * size / low.shape[0] - 0.5


def _band(prior: np.ndarray, r: int) -> np.ndarray:
    """Window voxels within ``r`` voxels of the surface of ``prior`` (bool, window grid); the window's own
    edge is not a surface."""
    return ndi.binary_dilation(prior, iterations=r) & ~ndi.binary_erosion(prior, iterations=r, border_value=1)


def _paste(
    ws: WindowState, level: int, canvas: np.ndarray, geo: Geometry, band: tuple[np.ndarray, np.ndarray] | None
) -> None:
    """Overwrite the window's footprint in ``canvas`` with its prediction; with ``band`` (where, prior), only
    where its prediction may differ from the coarser prior (elsewhere the prior stays). A coarse level is
    pasted from its logits upsampled 2x (4x would cost ~0.1 s a window on a CPU), so its border is less
    blocky."""
    f = 2 if geo.spacings[level] > geo.spacings[0] * 1.5 else 1
    win, m = ws.window, ws.mask
    if f > 1:
        w = ws.window
        # The finer grid spans the same field (edges aligned, as the trilinear upsampling assumes).
        win = Window(w.center_world - w.spacing / 2 + w.spacing / (2 * f), size=w.size * f, spacing=w.spacing / f)
        assert ws.logits is not None
        n = w.size * f
        m = torch.nn.functional.interpolate(ws.logits.float().cpu(), size=(n, n, n), mode="trilinear")[0, 0] > 0
        m = m.numpy()
    if band is not None:
        where, prior = (np.repeat(np.repeat(np.repeat(a, f, 0), f, 1), f, 2) for a in band)
        m = np.where(where, m, prior)
    paste_back(m, win, geo.shape, geo.affine, out=canvas)


def interact(
    obj: ObjectState,
    new_clicks: list[Click],
    anchor: np.ndarray,
    geo: Geometry,
    predict: Predict,
    low_res: int,
    budget: int,
    level: int | None = None,
    force: bool = False,
) -> None:
    """Run one interaction on ``obj`` (its clicks already include ``new_clicks``): pick and predict the
    primary windows, zoom out while the mask reaches a window border, refine along the coarse border;
    updates ``obj.canvas``, ``obj.level`` and ``obj.windows``. ``level`` (a box) starts at that level in a
    window centred on ``anchor``; ``force`` opens a window at ``anchor`` even for negative clicks alone."""
    shape = geo.shape
    canvas = np.zeros(shape, dtype=np.uint8)
    if obj.canvas is not None:
        canvas[obj.canvas.slices] = obj.canvas.data
    ran: list[WindowState] = []

    def run(ws: WindowState, lvl: int, band: int = 0) -> None:
        own = ws.logits if ws.stamp == obj.stamp and ws.logits is not None else None
        prior = own if own is not None else prior_logits(canvas, ws.window, geo, low_res)
        inside = [(voxel_to_window(v, geo.affine, ws.window), lab) for v, lab in obj.clicks]
        clicks = [(c, lab) for c, lab in inside if ws.window.contains(c)]
        if not any(lab == 1 for _, lab in clicks):
            seed = _seed(prior if own is None else prior_logits(canvas, ws.window, geo, low_res), geo.size)
            if seed is not None:
                clicks.insert(0, (seed, 1))
        if not clicks:
            return
        keep = None
        if band:
            was = extract_window(canvas, geo.affine, ws.window, order=1) > 0.5
            keep = (_band(was, band), was)
        predict(ws, clicks, prior)
        _paste(ws, lvl, canvas, geo, keep)
        obj.stamp += 1
        ws.stamp = obj.stamp
        ran.append(ws)

    if level is None:
        level = obj.level
        pts = np.stack([v for v, _ in new_clicks])
        hits = [
            ws
            for ws in obj.windows
            if ws.level == level and ws.window.contains(voxel_to_window(pts, geo.affine, ws.window)).any()
        ]
        if not hits and (force or any(lab == 1 for _, lab in new_clicks)):
            hits = [WindowState(geo.window(anchor, level), level=level)]
    else:
        hits = [WindowState(geo.window(anchor, level), level=level)]
    for ws in hits:
        run(ws, ws.level)
    top = ran[-1] if ran else None
    while (
        top is not None
        and top.level + 1 < len(geo.spacings)
        and len(ran) < budget
        and touches_border(top.mask, top.window, geo)
    ):
        nz = np.argwhere(top.mask)
        centre = geo.clip(window_to_voxel((nz.min(0) + nz.max(0)) / 2, geo.affine, top.window))
        up = WindowState(geo.window(centre, top.level + 1), level=top.level + 1)
        run(up, up.level)
        if ran[-1] is not up:
            break
        top = up
    if top is not None and top.level > 0 and top.mask is not None:
        fine = top.level - 1
        band = max(1, round(2 * geo.spacings[top.level] / geo.spacings[fine]))  # two coarse voxels
        for c in refine_centres(top.mask, top.window, fine, geo, budget - len(ran)):
            run(WindowState(geo.window(c, fine), level=fine), fine, band)
    if top is not None:
        obj.level = top.level
        # Windows finer than the level reached were overwritten by it unless run again now.
        obj.windows = [w for w in obj.windows if w.level >= top.level and all(w is not r for r in ran)] + ran
    obj.canvas = Crop.of(canvas)
