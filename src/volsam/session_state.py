"""Per-object state of a :class:`~volsam.session.Session`: its windows (clicks, logits, masks), prompts and
mask, and the pure functions over it: where a window mask touches its border, an object's mask from its
windows, the overlap policy between objects, the label map.

Nothing here holds the model or the image; the session does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from volsam.prompt_geometry import VoxelPrompt
from volsam.transforms import Window, extract_window, paste_back, window_to_voxel

__all__ = [
    "MASK_PROMPT_LOGIT",
    "Crop",
    "ObjectInfo",
    "ObjectState",
    "Timings",
    "WindowState",
    "border_touches",
    "initial_logits",
    "label_map",
    "object_mask",
    "on_mask",
    "visible_mask",
]

MASK_PROMPT_LOGIT = 8.0
"""Logit magnitude of an initial mask turned into a mask prompt (``+`` inside, ``-`` outside)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a session: ``label`` in the label map, visible ``voxels`` (after the overlap policy),
    their volume in ``volume_ml`` and whether prompts go to it (``current``)."""

    label: int
    voxels: int
    volume_ml: float
    current: bool


@dataclass
class Timings:
    """Milliseconds spent in the last call."""

    encode_ms: float = 0.0
    decode_ms: float = 0.0
    paste_ms: float = 0.0
    windows_encoded: int = 0
    windows_decoded: int = 0  # windows the model ran on (an early-fusion model: its only cost)


@dataclass
class WindowState:
    window: Window
    clicks: list[tuple[np.ndarray, int]] = field(default_factory=list)  # window coords, label 1/0
    logits: torch.Tensor | None = None  # previous low-res logits [1, 1, g, g, g] (g = model.low_res_size)
    mask: np.ndarray | None = None  # window mask (size,)^3 bool
    level: int = 0  # multi-scale: index of the window's spacing (volsam.multiscale)
    stamp: int = -1  # multi-scale: the object's paste count right after this window's own paste


@dataclass(frozen=True)
class Crop:
    """A mask kept as its bounding box: ``data`` (bool) covers voxels ``lo .. lo + data.shape - 1``."""

    lo: tuple[int, int, int]
    data: np.ndarray

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, a + n) for a, n in zip(self.lo, self.data.shape, strict=True))  # type: ignore[return-value]

    @staticmethod
    def of(mask: np.ndarray) -> Crop | None:
        """The crop of a full-size mask; None when it is empty."""
        axes = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        if any(a.size == 0 for a in axes):
            return None
        lo = tuple(int(a[0]) for a in axes)
        sl = tuple(slice(int(a[0]), int(a[-1]) + 1) for a in axes)
        return Crop(lo, mask[sl].astype(bool))  # type: ignore[arg-type]

    def overlap(self, other: Crop) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
        """Slices of the common box in ``self.data`` and in ``other.data``; None when they do not meet."""
        mine, theirs = [], []
        for a, n, b, m in zip(self.lo, self.data.shape, other.lo, other.data.shape, strict=True):
            start, stop = max(a, b), min(a + n, b + m)
            if start >= stop:
                return None
            mine.append(slice(start - a, stop - a))
            theirs.append(slice(start - b, stop - b))
        return tuple(mine), tuple(theirs)


@dataclass
class ObjectState:
    label: int
    windows: list[WindowState] = field(default_factory=list)
    box: tuple[np.ndarray, np.ndarray] | None = None  # voxel bounds, inclusive (+-inf: unbounded axis)
    num_clicks: int = 0  # user clicks (windows also hold the seeds of grown windows)
    prompts: list[VoxelPrompt] = field(default_factory=list)  # every user prompt, in order (voxel space)
    initial: np.ndarray | None = None  # bool volume-shaped initial mask (read-only), see set_initial_mask
    edits: list[VoxelPrompt] = field(default_factory=list)  # paint strokes (kind "paint"; positive: brush)
    # Multi-scale (early-fusion models): the composed prediction, the level reached, pastes so far, and
    # every click (volume voxels, label 1/0: user clicks, stroke samples, box centres) in order.
    canvas: Crop | None = None
    level: int = 0
    stamp: int = 0
    clicks: list[tuple[np.ndarray, int]] = field(default_factory=list)

    def copy(self) -> ObjectState:
        """A copy for an undo snapshot: the lists are copied, their items (never edited in place) shared."""
        return replace(
            self,
            windows=[replace(ws, clicks=list(ws.clicks)) for ws in self.windows],
            prompts=list(self.prompts),
            edits=list(self.edits),
            clicks=list(self.clicks),
        )
    mask: Crop | None = None  # the object's mask before the overlap policy (None: empty); replaced, never edited


def on_mask(mask: np.ndarray | Crop | None, voxel: np.ndarray) -> bool:
    """Whether ``voxel`` (float volume indices) rounds to a voxel of ``mask`` (volume-shaped, or a crop)."""
    if mask is None:
        return False
    i = np.floor(voxel + 0.5).astype(int)
    data = mask.data if isinstance(mask, Crop) else mask
    if isinstance(mask, Crop):
        i = i - np.asarray(mask.lo)
    return bool(np.all((i >= 0) & (i < data.shape)) and data[tuple(i)])


def initial_logits(initial: np.ndarray, affine: np.ndarray, window: Window, low_res_size: int) -> torch.Tensor:
    """An initial mask (bool, volume-shaped) as a mask prompt on ``window``: ``+-MASK_PROMPT_LOGIT`` where
    the window sees the mask / not, area-averaged onto the low-res grid: [1, 1, g, g, g] float32 (CPU)."""
    frac = extract_window(initial.view(np.uint8), affine, window, order=1)
    low = torch.nn.functional.adaptive_avg_pool3d(torch.from_numpy(frac)[None, None], low_res_size)
    return MASK_PROMPT_LOGIT * (2 * low - 1)


def border_touches(
    mask: np.ndarray, window: Window, affine: np.ndarray, shape: tuple[int, ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each face of ``window`` that its mask ``(size,)*3`` touches (inside the volume of ``shape``): the
    next window's centre and a seed voxel (volume indices) on the mask inside the overlap."""
    s = mask.shape[0]
    out = []
    vol_shape = np.asarray(shape)
    for axis in range(3):
        for side, idx in ((0, 0), (1, s - 1)):
            face = np.take(mask, idx, axis=axis)
            if not face.any():
                continue
            uv = np.argwhere(face).mean(0)
            centre_w = np.insert(uv, axis, float(idx))  # on the face: the windows overlap by half
            centre_v = window_to_voxel(centre_w, affine, window)
            # Stay where there is image: a window centred outside the volume sees only padding.
            if np.any(centre_v < -0.5) or np.any(centre_v > vol_shape - 0.5):
                centre_v = np.clip(centre_v, 0, vol_shape - 1)
            # Seed: a mask voxel a quarter window inside the face, nearest the touching centroid.
            depth = idx - s // 4 if side else idx + s // 4
            plane = np.take(mask, depth, axis=axis)
            if not plane.any():
                continue
            pts = np.argwhere(plane)
            seed_uv = pts[np.argmin(((pts - uv) ** 2).sum(1))]
            seed_w = np.insert(seed_uv.astype(float), axis, depth)
            out.append((centre_v, window_to_voxel(seed_w, affine, window)))
    return out


def object_mask(obj: ObjectState, shape: tuple[int, ...], affine: np.ndarray, multiscale: bool = False) -> np.ndarray:
    """The mask of ``obj`` (uint8, volume-shaped) before the overlap policy: the union of its windows'
    masks (``multiscale``: its canvas, which starts as the initial mask), restricted to its box; with an
    initial mask, that mask outside the windows' footprint; then its paint strokes, in order."""
    mask = np.zeros(shape, dtype=np.uint8)
    if multiscale:
        if obj.canvas is not None:
            mask[obj.canvas.slices] = obj.canvas.data
    else:
        for ws in obj.windows:
            if ws.mask is not None:
                mask |= paste_back(ws.mask, ws.window, shape, affine)
    if obj.box is not None:
        lo = np.clip(obj.box[0], 0, np.asarray(shape) - 1).astype(int)
        hi = np.clip(obj.box[1], 0, np.asarray(shape) - 1).astype(int)
        keep = np.zeros_like(mask)
        sl = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
        keep[sl] = mask[sl]
        mask = keep
    if obj.initial is not None and not multiscale:
        # The initial mask outside the windows' footprint, the model's output inside it.
        out = obj.initial.astype(np.uint8)
        for ws in obj.windows:
            paste_back(np.zeros(ws.window.shape, dtype=np.uint8), ws.window, shape, affine, out=out)
        mask = out | mask
    for e in obj.edits:
        sl = tuple(slice(int(o), int(o) + n) for o, n in zip(e.origin, e.mask.shape, strict=True))
        mask[sl][e.mask] = 1 if e.positive else 0
    return mask


def visible_mask(objects: list[ObjectState], index: int, overwrite: bool, shape: tuple[int, ...]) -> np.ndarray:
    """Mask of ``objects[index]`` after the overlap policy (uint8, volume-shaped): by default earlier
    objects keep their voxels; with ``overwrite`` later ones do."""
    out = np.zeros(shape, dtype=np.uint8)
    crop = objects[index].mask
    if crop is None:
        return out
    keep = crop.data.copy()
    others = objects[:index] if not overwrite else objects[index + 1 :]
    for o in others:
        common = crop.overlap(o.mask) if o.mask is not None else None
        if common is not None:
            keep[common[0]] &= ~o.mask.data[common[1]]  # type: ignore[union-attr]
    out[crop.slices] = keep
    return out


def label_map(objects: list[ObjectState], overwrite: bool, shape: tuple[int, ...]) -> np.ndarray:
    """All objects in one uint8 label map (object n has label n), volume-shaped."""
    lm = np.zeros(shape, dtype=np.uint8)
    # Painted so that the object the overlap policy favours is painted last: the oldest by default.
    for obj in objects if overwrite else reversed(objects):
        if obj.mask is not None:
            lm[obj.mask.slices][obj.mask.data] = obj.label
    return lm
