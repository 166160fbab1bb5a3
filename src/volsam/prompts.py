"""Click and box prompts, and the click simulators used by evaluation and training.

Coordinates follow the package convention: arrays are in file voxel order ``(i, j, k)`` with shape
``(X, Y, Z)``; a point is a voxel index ``(i, j, k)``; the last axis ``k`` is the slice axis of the
CVPR 2025 box. Spacings are in mm per axis.

Every simulator takes the current prediction ``pred`` and the target ``gt`` (same-shape 3D arrays,
any dtype, non-zero = foreground) and returns a :class:`Click`, or ``None`` when there is nothing to
correct (the caller stops the interaction). Randomness comes only from the ``np.random.Generator``
passed in, so a seed fixes the whole click sequence.

Distance transforms treat everything outside the volume as background (the mask is zero-padded by one
voxel, as SAM-Med3D and the CVPR 2025 script do), and are computed on the bounding box of the region
plus that one-voxel margin: the result is identical to the full-volume computation, only faster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "CLICK_PROTOCOLS",
    "Box",
    "Click",
    "cvpr25_box",
    "cvpr25_click",
    "dt_click",
    "first_click",
    "random_click",
    "simulate_click",
]

Spacing = Sequence[float] | None

# 26-connectivity in 3D (the CVPR 2025 challenge labels error components with cc3d, connectivity=26).
_STRUCT26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class Click:
    """One click.

    Attributes:
        point: voxel index ``(i, j, k)``, as floats (simulators return whole voxels).
        positive: True for a foreground (include) click, False for a background (exclude) click.
    """

    point: tuple[float, float, float]
    positive: bool

    @property
    def voxel(self) -> tuple[int, int, int]:
        """The point rounded to the nearest voxel index."""
        i, j, k = (round(c) for c in self.point)
        return i, j, k


@dataclass(frozen=True)
class Box:
    """An axis-aligned 3D box with inclusive voxel bounds ``lo <= (i, j, k) <= hi``.

    Attributes:
        lo: lowest voxel index per axis.
        hi: highest voxel index per axis (inclusive).
        mid_slice: for CVPR 2025 boxes, the index along the last axis of the slice the in-plane box was
            drawn on; None for a plain 3D box.
    """

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    mid_slice: int | None = None

    def __post_init__(self) -> None:
        if len(self.lo) != 3 or len(self.hi) != 3:
            raise ValueError(f"Box needs 3D bounds, got lo={self.lo}, hi={self.hi}")
        if any(a > b for a, b in zip(self.lo, self.hi, strict=True)):
            raise ValueError(f"Box needs lo <= hi per axis, got lo={self.lo}, hi={self.hi}")

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Box:
        """Tight inclusive bounding box of the non-zero voxels of a 3D ``mask``; ValueError if empty."""
        m = _as_mask(mask, "mask")
        bb = _bbox(m)
        if bb is None:
            raise ValueError("Box.from_mask: the mask is empty")
        lo, hi = bb
        return cls(_int3(lo), _int3(hi - 1))

    def to_mask(self, shape: Sequence[int]) -> np.ndarray:
        """Boolean array of ``shape`` (X, Y, Z) that is True inside the box (clipped to the array)."""
        out = np.zeros(tuple(shape), dtype=bool)
        out[tuple(slice(max(a, 0), b + 1) for a, b in zip(self.lo, self.hi, strict=True))] = True
        return out


# --------------------------------------------------------------------------------------------------
# helpers


def _int3(v: Sequence[int] | np.ndarray) -> tuple[int, int, int]:
    a, b, c = (int(x) for x in v)
    return a, b, c


def _as_mask(a: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(a)
    if m.ndim != 3:
        raise ValueError(f"{name} must be a 3D array (X, Y, Z), got shape {m.shape}")
    return m if m.dtype == bool else m != 0


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    return p, g


def _check_spacing(spacing: Spacing) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    s = tuple(float(x) for x in spacing)
    if len(s) != 3 or any(not np.isfinite(x) or x <= 0 for x in s):
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing!r}")
    return s[0], s[1], s[2]


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Half-open bounding box ``(lo, hi)`` of a 3D bool mask, or None when empty."""
    lo, hi = [], []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(np.any(mask, axis=other))
        if nz.size == 0:
            return None
        lo.append(nz[0])
        hi.append(nz[-1] + 1)
    return np.array(lo), np.array(hi)


def _padded_crop(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """``mask[lo - margin : hi + margin]`` zero-padded where it leaves the array; returns (crop, origin)."""
    origin = lo - margin
    end = hi + margin
    out = np.zeros(tuple(end - origin), dtype=mask.dtype)
    src_lo = np.maximum(origin, 0)
    src_hi = np.minimum(end, mask.shape)
    dst = tuple(slice(a - o, b - o) for a, b, o in zip(src_lo, src_hi, origin, strict=True))
    out[dst] = mask[tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))]
    return out, origin


def _inside_edt(mask: np.ndarray, spacing: Spacing) -> tuple[np.ndarray, np.ndarray] | None:
    """EDT inside ``mask`` with the outside of the volume counting as background.

    Returns ``(dist, origin)``: ``dist`` covers the bounding box of ``mask`` plus one voxel (padding
    included) and ``dist[idx]`` is the distance (mm with ``spacing``, else voxels) of voxel
    ``origin + idx`` to the nearest background voxel; None when ``mask`` is empty.
    """
    bb = _bbox(mask)
    if bb is None:
        return None
    crop, origin = _padded_crop(mask, bb[0], bb[1], 1)
    return ndimage.distance_transform_edt(crop, sampling=spacing), origin


def _pick(candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One row of ``candidates`` (N, 3), uniformly at random."""
    return candidates[int(rng.integers(len(candidates)))]


def _click(index: Sequence[int] | np.ndarray, positive: bool) -> Click:
    i, j, k = (float(x) for x in index)
    return Click((i, j, k), bool(positive))


# --------------------------------------------------------------------------------------------------
# simulators


def random_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> Click | None:
    """SAM-Med3D's ``random`` protocol: a uniform random voxel of the error region FN ∪ FP.

    Args:
        pred: current prediction (X, Y, Z), non-zero = foreground; may be empty.
        gt: target mask (X, Y, Z).
        rng: source of randomness.

    Returns:
        A positive click on a false negative or a negative click on a false positive; None when
        ``pred == gt`` (no error: the caller stops).
    """
    p, g = _pair(pred, gt)
    err = np.flatnonzero(p ^ g)
    if err.size == 0:
        return None
    idx = np.unravel_index(err[int(rng.integers(err.size))], g.shape)
    return _click(idx, bool(g[idx]))


def dt_click(
    pred: np.ndarray,
    gt: np.ndarray,
    rng: np.random.Generator,
    spacing: Spacing = None,
    band: float | None = None,
) -> Click | None:
    """SAM-Med3D's distance-transform (RITM-style) click: the interior-most voxel of the errors.

    The EDT is computed inside FN and inside FP separately (``spacing`` in mm, voxel units when None
    as in SAM-Med3D), the volume border counting as boundary.

    - ``band=None``: the click is a voxel of maximum distance over both maps; ties (within and between
      the maps) are broken uniformly by ``rng``.
    - ``band=f``: SAM-Med3D's released rule: take the map with the larger maximum (FN when FN's is
      strictly larger, else FP) and pick uniformly among its voxels with distance ``> f * max``
      (their code uses ``f = 0.5``).

    Returns:
        A positive click on FN or a negative click on FP; None when ``pred == gt``.
    """
    p, g = _pair(pred, gt)
    sp = _check_spacing(spacing)
    if band is not None and not 0.0 <= band < 1.0:
        raise ValueError(f"band must be in [0, 1), got {band}")
    fn, fp = _inside_edt(g & ~p, sp), _inside_edt(p & ~g, sp)
    if fn is None and fp is None:
        return None
    fn_max = float(fn[0].max()) if fn is not None else 0.0
    fp_max = float(fp[0].max()) if fp is not None else 0.0
    best = max(fn_max, fp_max)
    if band is None:
        cands, signs = [], []
        for res, positive in ((fn, True), (fp, False)):
            if res is not None and float(res[0].max()) == best:
                c = np.argwhere(res[0] == best) + res[1]
                cands.append(c)
                signs.append(np.full(len(c), positive))
        allc, alls = np.concatenate(cands), np.concatenate(signs)
        n = int(rng.integers(len(allc)))
        return _click(allc[n], bool(alls[n]))
    positive = fn_max > fp_max
    dist, origin = fn if positive else fp  # type: ignore[misc]  # the winner is non-empty
    return _click(_pick(np.argwhere(dist > band * best) + origin, rng), positive)


def cvpr25_click(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Spacing = None,
    rng: np.random.Generator | None = None,
) -> Click | None:
    """CVPR 2025 interactive 3D challenge click (``CVPR25_iter_eval.py``).

    Error = FN ∪ FP; take its largest 26-connected component (ties: the component met first in C
    order); click at a maximum of the Euclidean distance transform inside that component, the
    component being zero-padded so that the volume border counts as boundary. The click is positive
    when ``gt`` is foreground at the clicked voxel (an FN voxel), negative otherwise.

    Args:
        pred: current prediction (X, Y, Z); may be empty.
        gt: target mask (X, Y, Z).
        spacing: mm per axis for the EDT. The challenge script computes the EDT in voxel units: pass
            None (default) or unit spacing to reproduce it exactly.
        rng: breaks ties between EDT maxima. None reproduces the challenge exactly: its script re-seeds
            NumPy's legacy global generator with 42 and draws ``choice(n)`` over the tied voxels in C
            order.

    Returns:
        The click, or None when ``pred == gt``.
    """
    p, g = _pair(pred, gt)
    sp = _check_spacing(spacing)
    err = p ^ g
    bb = _bbox(err)
    if bb is None:
        return None
    crop, origin = _padded_crop(err, bb[0], bb[1], 1)
    labels, _ = ndimage.label(crop, structure=_STRUCT26)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    res = _inside_edt(labels == int(np.argmax(sizes)), sp)
    assert res is not None  # the largest component is non-empty
    dist, sub_origin = res
    cands = np.argwhere(dist == dist.max()) + sub_origin + origin
    if rng is None:
        n = int(np.random.RandomState(42).choice(len(cands)))  # the challenge's own draw
    else:
        n = int(rng.integers(len(cands)))
    idx = tuple(cands[n])
    return _click(idx, bool(g[idx]))


def cvpr25_box(gt: np.ndarray, rng: np.random.Generator | None = None) -> Box | None:
    """CVPR 2025 challenge step-1 box (``get_boxes.py``): a 2D box on a middle slice plus the z range.

    Rule (z = the last axis ``k``, the in-plane axes are ``i, j``):

    - ``z_min, z_max``: the extent of the target along ``k``;
    - ``z_mid``: the median slice by voxel count, i.e. ``sorted(k of every foreground voxel)[n // 2]``
      (not the middle of the range: the slice is guaranteed to contain the target);
    - in-plane box: the tight ``(i, j)`` bounding box of the target on slice ``z_mid``. With ``rng`` it is
      enlarged as in the challenge: ``s = rng.integers(0, 6)`` and each side moves out by
      ``int(s * X / 256)`` along ``i`` and ``int(s * Y / 256)`` along ``j``, clipped to the volume.
      Without ``rng`` the box is tight (deterministic).

    Returns:
        ``Box(lo=(i0, j0, z_min), hi=(i1, j1, z_max), mid_slice=z_mid)`` (inclusive), or None when the
        target is empty.
    """
    g = _as_mask(gt, "gt")
    per_slice = np.count_nonzero(g, axis=(0, 1))
    n = int(per_slice.sum())
    if n == 0:
        return None
    nz = np.flatnonzero(per_slice)
    z_min, z_max = int(nz[0]), int(nz[-1])
    z_mid = int(np.searchsorted(np.cumsum(per_slice), n // 2, side="right"))
    ii, jj = np.nonzero(g[:, :, z_mid])
    i0, i1, j0, j1 = int(ii.min()), int(ii.max()), int(jj.min()), int(jj.max())
    if rng is not None:
        s = int(rng.integers(0, 6))
        di, dj = int(s * g.shape[0] / 256), int(s * g.shape[1] / 256)
        i0, i1 = max(0, i0 - di), min(g.shape[0] - 1, i1 + di)
        j0, j1 = max(0, j0 - dj), min(g.shape[1] - 1, j1 + dj)
    return Box((i0, j0, z_min), (i1, j1, z_max), mid_slice=z_mid)


def first_click(
    gt: np.ndarray,
    rng: np.random.Generator,
    mode: str = "random",
    spacing: Spacing = None,
) -> Click | None:
    """Initial positive click for an empty prediction.

    Args:
        gt: target mask (X, Y, Z).
        rng: source of randomness.
        mode: ``"random"`` (uniform voxel of ``gt``, SAM-Med3D's first click) or ``"center"`` (a voxel
            of maximum EDT inside ``gt``, volume border counting as boundary; ties broken by ``rng``).
        spacing: mm per axis for the ``"center"`` EDT; voxel units when None.

    Returns:
        A positive click, or None when ``gt`` is empty.
    """
    g = _as_mask(gt, "gt")
    if mode == "random":
        return random_click(np.zeros_like(g), g, rng)
    if mode == "center":
        res = _inside_edt(g, _check_spacing(spacing))
        if res is None:
            return None
        dist, origin = res
        return _click(_pick(np.argwhere(dist == dist.max()) + origin, rng), True)
    raise ValueError(f"unknown first-click mode {mode!r}; valid: 'random', 'center'")


# --------------------------------------------------------------------------------------------------
# registry

_ClickFn = Callable[[np.ndarray, np.ndarray, np.random.Generator, Spacing], "Click | None"]

_PROTOCOLS: dict[str, _ClickFn] = {
    "random": lambda pred, gt, rng, spacing: random_click(pred, gt, rng),
    "dt": lambda pred, gt, rng, spacing: dt_click(pred, gt, rng, spacing),
    # The challenge is deterministic: its own tie-break, not the caller's rng.
    "cvpr25": lambda pred, gt, rng, spacing: cvpr25_click(pred, gt, spacing),
}

CLICK_PROTOCOLS: tuple[str, ...] = tuple(_PROTOCOLS)
"""Names accepted by :func:`simulate_click`."""


def simulate_click(
    protocol: str,
    pred: np.ndarray,
    gt: np.ndarray,
    rng: np.random.Generator,
    spacing: Spacing = None,
) -> Click | None:
    """Next click under a named protocol.

    Args:
        protocol: ``"random"`` (:func:`random_click`), ``"dt"`` (:func:`dt_click`, maximum-EDT rule) or
            ``"cvpr25"`` (:func:`cvpr25_click` with the challenge's own tie-break; ``rng`` is unused).
        pred: current prediction (X, Y, Z); may be empty.
        gt: target mask (X, Y, Z).
        rng: source of randomness.
        spacing: mm per axis for the EDT-based protocols; None = voxel units (what SAM-Med3D and the
            CVPR 2025 script use).

    Returns:
        The click, or None when the prediction is already perfect.
    """
    try:
        fn = _PROTOCOLS[protocol]
    except KeyError:
        raise ValueError(f"unknown click protocol {protocol!r}; valid: {', '.join(CLICK_PROTOCOLS)}") from None
    return fn(pred, gt, rng, spacing)
