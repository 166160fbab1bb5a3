"""Geometry of volumes, model windows and points; the coordinate convention of volsam.

Coordinate convention (the single reference; other modules link here)
-----------------------------------------------------------------------
Volume array
    A volume is a numpy array in *file voxel order* ``(i, j, k)``, shape ``(X, Y, Z)``: exactly
    ``nibabel.load(f).get_fdata()[i, j, k]`` for NIfTI, and SimpleITK's index order ``(x, y, z)``
    for every other format (NRRD, MHA/MHD, DICOM), i.e. ``sitk.GetArrayFromImage(img).transpose(2, 1, 0)``.
    For a DICOM series ``i`` runs along a row (column index), ``j`` down the columns (row index) and
    ``k`` over the slices in the order :mod:`volsam.io` sorted them (``meta["dicom_files"]``).

Volume affine
    A 4x4 float64 ``affine`` maps the homogeneous voxel index ``(i, j, k, 1)`` to world coordinates in
    **millimetres, RAS+** (x increases to the patient's Right, y Anterior, z Superior; the nibabel
    convention). ITK-based formats store LPS; :mod:`volsam.io` negates the first two rows of the
    LPS affine when reading and negates them back when writing.

Points
    A user's point is a voxel index ``(i, j, k)`` of the volume array (floats allowed, integer values
    are voxel centres), or a world point ``(x, y, z)`` in mm RAS+. Arrays of points have shape
    ``(N, 3)`` (any ``(..., 3)`` is accepted).

Windows
    The model sees ``size**3`` (default 128**3) *windows*: a grid axis-aligned to RAS+ (window axis 0
    increases towards Right, 1 Anterior, 2 Superior) with isotropic spacing (default 1.5 mm), whose
    voxel index ``size // 2`` (64 for 128; the same integer on all three axes) lies exactly on the
    window centre, a world point. The model's tensor axes are the window's axes in this order; a point
    in window coordinates is ``(a, b, c)``, float voxel indices into the window array. Window voxel
    ``w`` covers world points whose window coordinate rounds to ``w`` (``floor(x + 0.5)``).

This module is pure geometry (numpy/scipy); reading and writing files lives in :mod:`volsam.io`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.ndimage as ndi
import torch
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "Window",
    "apply_affine",
    "extract_window",
    "normalize_window",
    "normalize_windows",
    "paste_back",
    "voxel_to_window",
    "voxel_to_world",
    "window_footprint",
    "window_for_point",
    "window_to_voxel",
    "world_to_voxel",
]

FloatArray = NDArray[np.float64]

# An affine counts as axis-aligned when the off-axis terms it would neglect move no point of the grid
# by more than this many output voxels.
_AXIS_ALIGNED_TOL = 1e-3
# Slack (voxels) for floating-point error in bounds checks.
_EPS = 1e-6
# Voxels per chunk in the general (oblique) paste-back path, to bound temporary memory.
_CHUNK_VOXELS = 1 << 21


def _as_affine(affine: ArrayLike) -> FloatArray:
    """Validate a 4x4 invertible affine and return it as float64."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"expected a finite 4x4 affine, got shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError("affine is singular (zero voxel size or degenerate axes)")
    return a


def _as_points(points: ArrayLike) -> FloatArray:
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1:] != (3,):
        raise ValueError(f"expected points of shape (N, 3) or (3,), got {p.shape}")
    return p


def apply_affine(affine: ArrayLike, points: ArrayLike) -> FloatArray:
    """Apply a 4x4 affine to points of shape (..., 3); returns float64 of the same shape."""
    a = np.asarray(affine, dtype=np.float64)
    p = _as_points(points)
    return p @ a[:3, :3].T + a[:3, 3]


def voxel_to_world(points: ArrayLike, affine: ArrayLike) -> FloatArray:
    """Voxel indices (..., 3) of a volume -> world points (..., 3) in mm RAS+."""
    return apply_affine(_as_affine(affine), points)


def world_to_voxel(points: ArrayLike, affine: ArrayLike) -> FloatArray:
    """World points (..., 3) in mm RAS+ -> float voxel indices (..., 3) of a volume."""
    return apply_affine(np.linalg.inv(_as_affine(affine)), points)


@dataclass(frozen=True, eq=False)
class Window:
    """A ``size**3`` RAS+-aligned grid of isotropic ``spacing`` mm, voxel ``size // 2`` at ``center_world``.

    ``center_world`` is a (3,) float64 world point in mm RAS+ (stored read-only). Windows compare
    and hash by value.
    """

    center_world: FloatArray
    size: int = 128
    spacing: float = 1.5

    def __post_init__(self) -> None:
        c = np.array(self.center_world, dtype=np.float64).reshape(-1)
        if c.shape != (3,) or not np.all(np.isfinite(c)):
            raise ValueError(f"center_world must be 3 finite numbers, got {self.center_world!r}")
        c.setflags(write=False)
        if int(self.size) < 1 or not float(self.spacing) > 0:
            raise ValueError(f"invalid window size {self.size!r} or spacing {self.spacing!r}")
        object.__setattr__(self, "center_world", c)
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "spacing", float(self.spacing))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Window):
            return NotImplemented
        return (
            self.size == other.size
            and self.spacing == other.spacing
            and bool(np.array_equal(self.center_world, other.center_world))
        )

    def __hash__(self) -> int:
        return hash((tuple(self.center_world.tolist()), self.size, self.spacing))

    @property
    def center_index(self) -> int:
        """Window voxel index (same on all axes) that lies on ``center_world``."""
        return self.size // 2

    @property
    def shape(self) -> tuple[int, int, int]:
        """Window array shape ``(size, size, size)``."""
        return (self.size, self.size, self.size)

    @property
    def origin_world(self) -> FloatArray:
        """World position (mm RAS+) of window voxel (0, 0, 0)."""
        return self.center_world - self.spacing * self.center_index

    @property
    def affine(self) -> FloatArray:
        """4x4 window voxel -> world (mm RAS+): ``diag(spacing)`` plus the origin."""
        a = np.diag([self.spacing, self.spacing, self.spacing, 1.0])
        a[:3, 3] = self.origin_world
        return a

    def world_to_window(self, points: ArrayLike) -> FloatArray:
        """World points (..., 3) mm RAS+ -> float window voxel coordinates (..., 3)."""
        return (_as_points(points) - self.origin_world) / self.spacing

    def window_to_world(self, points: ArrayLike) -> FloatArray:
        """Window voxel coordinates (..., 3) -> world points (..., 3) mm RAS+."""
        return _as_points(points) * self.spacing + self.origin_world

    def contains(self, points_window: ArrayLike) -> NDArray[np.bool_]:
        """Whether window coordinates (..., 3) round to a window voxel, i.e. lie in ``[-0.5, size - 0.5)``.

        Returns a bool array of shape (...).
        """
        p = _as_points(points_window)
        return np.all((p >= -0.5) & (p < self.size - 0.5), axis=-1)


def window_for_point(volume_affine: ArrayLike, voxel_point: ArrayLike, size: int = 128, spacing: float = 1.5) -> Window:
    """The window centred on a volume voxel point (3,) (float indices allowed)."""
    p = _as_points(voxel_point).reshape(-1)
    if p.shape != (3,):
        raise ValueError(f"expected one voxel point (3,), got shape {np.shape(voxel_point)}")
    return Window(voxel_to_world(p, volume_affine), size=size, spacing=spacing)


def voxel_to_window(points: ArrayLike, affine: ArrayLike, window: Window) -> FloatArray:
    """Volume voxel indices (..., 3) -> window voxel coordinates (..., 3)."""
    return window.world_to_window(voxel_to_world(points, affine))


def window_to_voxel(points: ArrayLike, affine: ArrayLike, window: Window) -> FloatArray:
    """Window voxel coordinates (..., 3) -> volume voxel indices (..., 3)."""
    return world_to_voxel(window.window_to_world(points), affine)


def _axis_map(linear: FloatArray, in_shape: tuple[int, ...]) -> NDArray[np.intp] | None:
    """For a 3x3 index map that is (numerically) a scaled signed permutation, the input axis of each row.

    ``linear`` maps input indices (columns) to output coordinates (rows). Off-axis terms are ignored
    when, over the whole input grid ``in_shape``, they sum to less than ``_AXIS_ALIGNED_TOL`` output
    voxels. Returns None for an oblique map.
    """
    mag = np.abs(linear)
    cols = np.argmax(mag, axis=1)
    if len(set(cols.tolist())) != 3:
        return None
    extent = np.maximum(np.asarray(in_shape, dtype=np.float64) - 1.0, 1.0)
    off = mag.copy()
    off[np.arange(3), cols] = 0.0
    if np.any(off @ extent > _AXIS_ALIGNED_TOL):
        return None
    return cols


def _composed(window: Window, affine: ArrayLike) -> FloatArray:
    """4x4 map window voxel -> volume voxel."""
    return np.linalg.inv(_as_affine(affine)) @ window.affine


def extract_window(
    array: NDArray[Any], affine: ArrayLike, window: Window, order: int = 1, cval: float = 0.0
) -> NDArray[np.float32]:
    """Resample a volume (X, Y, Z) onto the window grid; returns float32 ``(size,)*3``.

    ``order`` 1 is trilinear (images), 0 nearest neighbour (labels); higher orders use scipy splines.
    Window voxels whose position falls outside the volume's voxel-centre hull ``[0, n - 1]`` get
    ``cval``. This is SAM-Med3D's resample-to-isotropic, reorient-to-RAS and crop/pad-to-128**3
    in one interpolation. Axis-aligned volumes (any flips/permutation) take a fast separable path.
    """
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"expected a 3D volume array, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    m = _composed(window, affine)
    if order in (0, 1):
        cols = _axis_map(m[:3, :3], window.shape)
        if cols is not None:
            return _extract_separable(arr, m, cols, window.size, order, cval)
    return _extract_general(arr, m, window.size, order, cval)


def _extract_separable(
    arr: NDArray[Any], m: FloatArray, cols: NDArray[np.intp], n: int, order: int, cval: float
) -> NDArray[np.float32]:
    """Separable resampling when volume axis ``c`` depends only on window axis ``cols[c]``."""
    grid = np.arange(n, dtype=np.float64)
    lo_idx, hi_idx, valid = [], [], []
    weights: list[NDArray[np.float32] | None] = []
    crop = []
    for c in range(3):
        length = arr.shape[c]
        p = m[c, cols[c]] * grid + m[c, 3]
        ok = (p >= -_EPS) & (p <= length - 1 + _EPS)
        p = np.clip(p, 0.0, length - 1.0)
        if order == 0:
            i0 = np.floor(p + 0.5).astype(np.intp)
            i1 = i0
            w1 = None
        else:
            i0 = np.minimum(np.floor(p).astype(np.intp), max(length - 2, 0))
            i1 = np.minimum(i0 + 1, length - 1)
            w1 = np.where(ok, p - i0, 0.0).astype(np.float32)
        if not ok.any():
            return np.full((n, n, n), cval, dtype=np.float32)
        start, stop = int(i0[ok].min()), int(i1[ok].max()) + 1
        crop.append(slice(start, stop))
        i0 = np.where(ok, i0 - start, 0)
        i1 = np.where(ok, i1 - start, 0)
        lo_idx.append(i0)
        hi_idx.append(i1)
        weights.append(w1)
        valid.append(ok)
    res: NDArray[Any] = arr[tuple(crop)]
    # Work on a C-ordered view (transpose Fortran-ordered input, as nibabel returns) and resample the
    # memory-slowest axis first, so the gathers copy whole contiguous rows or planes.
    flip = abs(res.strides[0]) < abs(res.strides[2])
    if flip:
        res = res.T
    for ax in range(3):
        c = 2 - ax if flip else ax
        pre = (slice(None),) * ax
        w1 = weights[c]
        if w1 is None:
            res = res[(*pre, lo_idx[c])]
            continue
        bshape = [1, 1, 1]
        bshape[ax] = n
        a = res[(*pre, lo_idx[c])].astype(np.float32, copy=False)
        b = res[(*pre, hi_idx[c])].astype(np.float32, copy=False)
        b -= a
        b *= w1.reshape(bshape)
        res = a + b
    if flip:
        res = res.T
    out = np.ascontiguousarray(np.transpose(res, np.argsort(cols)), dtype=np.float32)
    if not all(v.all() for v in valid):
        vw = [valid[c] for c in np.argsort(cols)]
        inside = vw[0][:, None, None] & vw[1][None, :, None] & vw[2][None, None, :]
        out[~inside] = cval
    return out


def _extract_general(arr: NDArray[Any], m: FloatArray, n: int, order: int, cval: float) -> NDArray[np.float32]:
    """Resampling with scipy for oblique geometry (or spline orders > 1)."""
    corners = np.array(np.meshgrid([0, n - 1], [0, n - 1], [0, n - 1], indexing="ij")).reshape(3, -1).T
    pos = apply_affine(m, corners)
    if order <= 1:
        # Crop to the samples' bounding box (+1 voxel) so conversions touch only what is needed.
        lo = np.clip(np.floor(pos.min(axis=0)).astype(int) - 1, 0, arr.shape)
        hi = np.clip(np.ceil(pos.max(axis=0)).astype(int) + 2, 0, arr.shape)
        if np.any(hi <= lo):
            return np.full((n, n, n), cval, dtype=np.float32)
        arr = arr[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        offset = m[:3, 3] - lo
        # Points beyond the crop but inside the volume cannot occur; points beyond the volume stay outside.
    else:
        offset = m[:3, 3]
    # Traverse the output so that its fastest axis follows the input's fastest memory axis (and so on):
    # scipy walks the output in C order, and matching the input's layout keeps reads cache-friendly.
    q: list[int] = []
    for c in np.argsort([-abs(st) for st in arr.strides], kind="stable"):
        free = [r for r in range(3) if r not in q]
        q.append(free[int(np.argmax(np.abs(m[c, free])))])
    out = np.empty((n, n, n), dtype=np.float32)
    ndi.affine_transform(
        arr,
        m[:3, q],
        offset=offset,
        output_shape=(n, n, n),
        output=out,
        order=order,
        mode="constant",
        cval=cval,
    )
    return np.ascontiguousarray(out.transpose(np.argsort(q)))


def normalize_window(x: ArrayLike, clip: tuple[float, float] | None = None) -> NDArray[np.float32]:
    """SAM-Med3D intensity normalisation of a window; returns float32 of the input's shape.

    Optionally clips to ``clip = (low, high)`` first (CT e.g. (-1000, 1000)), then z-normalises *all*
    voxels with the mean and (unbiased, ddof=1) std of the voxels > 0, as torchio's
    ``ZNormalization(masking_method=lambda x: x > 0)`` does (:func:`normalize_windows`). Without any voxel
    > 0 the statistics come from all voxels; a zero std is replaced by 1. Non-finite inputs are set to 0
    first.
    """
    v = np.array(x, dtype=np.float32)
    if not np.all(np.isfinite(v)):
        v[~np.isfinite(v)] = 0.0
    if clip is not None:
        lo, hi = float(clip[0]), float(clip[1])
        if lo > hi:
            raise ValueError(f"clip low {lo} > high {hi}")
        np.clip(v, lo, hi, out=v)
    if v.size == 0:
        return v
    return normalize_windows(torch.from_numpy(v)[None]).numpy()[0]


def normalize_windows(x: torch.Tensor) -> torch.Tensor:
    """The z-normalisation of :func:`normalize_window` on a batch of finite windows [B, ...] (float32, on
    any device; the training loader runs it on the GPU): each window shifted and scaled by the mean and
    (ddof=1) std of its voxels > 0 (of all its voxels when none is > 0; a std of one voxel or of 0 counts as
    1). Statistics in float64, arithmetic in the input's dtype, so both paths give the same numbers."""
    dims = tuple(range(1, x.ndim))
    fg = x > 0
    none = fg.flatten(1).any(1).logical_not()
    w = (fg | none.view(-1, *([1] * len(dims)))).double()
    n = w.sum(dims, keepdim=True)
    xd = x.double()
    mean = (xd * w).sum(dims, keepdim=True) / n
    var = (((xd - mean) ** 2) * w).sum(dims, keepdim=True) / (n - 1).clamp_min(1)
    std = torch.where(n > 1, var.sqrt(), torch.zeros_like(var))
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (x - mean.to(x.dtype)) / std.to(x.dtype)


def window_footprint(window: Window, shape: tuple[int, ...], affine: ArrayLike) -> tuple[slice, slice, slice]:
    """Bounding box, in volume voxel indices clipped to ``shape`` (X, Y, Z), of the voxels the window covers.

    A volume voxel is covered when its window coordinates lie in ``[-0.5, size - 0.5)`` (it rounds to
    a window voxel). The box may be one voxel generous on floating-point ties; it may be empty.
    """
    if len(shape) != 3:
        raise ValueError(f"expected a 3D shape, got {shape}")
    m = _composed(window, affine)
    e = [-0.5, window.size - 0.5]
    corners = np.array(np.meshgrid(e, e, e, indexing="ij")).reshape(3, -1).T
    pos = apply_affine(m, corners)
    lo = np.ceil(pos.min(axis=0) - _EPS).astype(np.int64)
    hi = np.floor(pos.max(axis=0) + _EPS).astype(np.int64) + 1
    slices = []
    for c in range(3):
        a = int(np.clip(lo[c], 0, shape[c]))
        b = int(np.clip(hi[c], a, shape[c]))
        slices.append(slice(a, b))
    return (slices[0], slices[1], slices[2])


def _binarize(window_mask: ArrayLike, size: int, threshold: float) -> NDArray[np.uint8]:
    """Window prediction -> uint8 (size,)*3: bool as is, floats ``> threshold``, integer labels kept."""
    wm = np.asarray(window_mask)
    while wm.ndim > 3 and wm.shape[0] == 1:
        wm = wm[0]
    if wm.shape != (size, size, size):
        raise ValueError(f"expected a window mask of shape {(size,) * 3}, got {np.shape(window_mask)}")
    if wm.dtype == np.bool_:
        return np.ascontiguousarray(wm).view(np.uint8)
    if np.issubdtype(wm.dtype, np.floating):
        return (wm > threshold).view(np.uint8)
    if np.issubdtype(wm.dtype, np.integer):
        if wm.dtype != np.uint8 and (wm.min() < 0 or wm.max() > 255):
            raise ValueError("integer window mask values must lie in 0..255")
        return np.ascontiguousarray(wm, dtype=np.uint8)
    raise ValueError(f"unsupported window mask dtype {wm.dtype}")


def paste_back(
    window_mask: ArrayLike,
    window: Window,
    shape: tuple[int, ...],
    affine: ArrayLike,
    *,
    threshold: float = 0.0,
    out: NDArray[np.uint8] | None = None,
) -> NDArray[np.uint8]:
    """Nearest-neighbour resample a window mask ``(size,)*3`` back onto the volume grid ``shape`` (X, Y, Z).

    ``window_mask``: bool, integer labels 0..255 (kept), or float logits/probabilities (``> threshold``);
    leading singleton axes (e.g. (1, 1, 128, 128, 128)) are dropped. Each volume voxel takes the window
    voxel its centre rounds to. Voxels outside the window are 0, or, with ``out`` (uint8, ``shape``),
    left untouched while covered voxels are overwritten in place. Returns the uint8 ``shape`` array
    (``out`` itself when given). Axis-aligned volumes take a separable gather limited to the footprint.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"expected a 3D shape, got {shape}")
    wm = _binarize(window_mask, window.size, threshold)
    box = None
    if out is None:
        out = np.zeros(shape, dtype=np.uint8)
        # Into zeros only non-zero window voxels need writing: bound the work by their box.
        hits = [np.flatnonzero(wm.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
        if any(h.size == 0 for h in hits):
            return out
        box = (np.array([h[0] for h in hits]), np.array([h[-1] + 1 for h in hits]))
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 of shape {shape}, got {out.dtype} {out.shape}")
    m = np.linalg.inv(window.affine) @ _as_affine(affine)  # volume voxel -> window voxel
    rows = _axis_map(m[:3, :3], shape)
    if rows is None:
        _paste_general(wm, m, out, box)
    else:
        _paste_separable(wm, m, rows, out)
    return out


def _paste_separable(wm: NDArray[np.uint8], m: FloatArray, rows: NDArray[np.intp], out: NDArray[np.uint8]) -> None:
    """Window axis ``r`` depends only on volume axis ``rows[r]``: three 1-D index maps and one gather."""
    n = wm.shape[0]
    idx: list[NDArray[np.intp]] = [np.empty(0, np.intp)] * 3
    box: list[slice] = [slice(0, 0)] * 3
    for r in range(3):
        c = int(rows[r])
        v = np.arange(out.shape[c], dtype=np.float64)
        w = np.floor(m[r, c] * v + (m[r, 3] + 0.5)).astype(np.intp)
        ok = (w >= 0) & (w < n)
        if not ok.any():
            return
        # w is monotonic in the voxel index, so the covered voxels form one run.
        start = int(np.argmax(ok))
        stop = len(ok) - int(np.argmax(ok[::-1]))
        idx[c] = w[start:stop]
        box[c] = slice(start, stop)
    # Reorder the window's axes to the volume's, then gather axis by axis (last first: smallest copies).
    t = np.ascontiguousarray(np.transpose(wm, np.argsort(rows)))
    t = np.take(t, idx[2], axis=2)
    t = np.take(t, idx[1], axis=1)
    out[box[0], box[1], box[2]] = np.take(t, idx[0], axis=0)


def _paste_general(
    wm: NDArray[np.uint8], m: FloatArray, out: NDArray[np.uint8], box: tuple[np.ndarray, np.ndarray] | None = None
) -> None:
    """Oblique case: round each footprint voxel's window coordinates, in slabs along volume axis 0.

    ``box`` (window index ``lo``, ``hi`` exclusive) limits the work to the volume voxels whose window
    voxel can lie in it; the caller passes the box of non-zero window voxels when ``out`` is all zeros.
    """
    n = wm.shape[0]
    minv = np.linalg.inv(m)  # window voxel -> volume voxel
    blo, bhi = (np.zeros(3), np.full(3, n)) if box is None else box
    corners = np.array(np.meshgrid(*[[blo[a] - 0.5, bhi[a] - 0.5] for a in range(3)], indexing="ij")).reshape(3, -1).T
    pos = apply_affine(minv, corners)
    lo = np.clip(np.ceil(pos.min(axis=0) - _EPS).astype(np.int64), 0, out.shape)
    hi = np.clip(np.floor(pos.max(axis=0) + _EPS).astype(np.int64) + 1, lo, out.shape)
    if np.any(hi <= lo):
        return
    j = np.arange(lo[1], hi[1], dtype=np.float64)
    k = np.arange(lo[2], hi[2], dtype=np.float64)
    flat_wm = wm.reshape(-1)
    plane = int((hi[1] - lo[1]) * (hi[2] - lo[2]))
    slab = max(1, _CHUNK_VOXELS // plane)
    bshape = (min(slab, int(hi[0] - lo[0])), int(hi[1] - lo[1]), int(hi[2] - lo[2]))
    buf = np.empty(bshape, np.float64)
    flat = np.empty(bshape, np.int64)
    w = np.empty(bshape, np.int64)
    inside = np.empty(bshape, np.bool_)
    ok = np.empty(bshape, np.bool_)
    for i0 in range(int(lo[0]), int(hi[0]), slab):
        i1 = min(i0 + slab, int(hi[0]))
        s = slice(0, i1 - i0)
        i = np.arange(i0, i1, dtype=np.float64)
        for r in range(3):
            # Same arithmetic as the separable path, so both round ties identically.
            ij = m[r, 0] * i[:, None] + m[r, 1] * j[None, :] + (m[r, 3] + 0.5)
            np.add(ij[:, :, None], (m[r, 2] * k)[None, None, :], out=buf[s])
            np.floor(buf[s], out=buf[s])
            tgt = flat if r == 0 else w
            np.copyto(tgt[s], buf[s], casting="unsafe")
            # Negative indices wrap to huge unsigned values, so one comparison checks both bounds.
            np.less(tgt[s].view(np.uint64), n, out=inside[s] if r == 0 else ok[s])
            if r:
                inside[s] &= ok[s]
                flat[s] *= n
                flat[s] += w[s]
        if not inside[s].any():
            continue
        flat[s] *= inside[s]  # outside -> index 0, masked below
        region = out[i0:i1, lo[1] : hi[1], lo[2] : hi[2]]
        np.copyto(region, flat_wm.take(flat[s]), where=inside[s])
