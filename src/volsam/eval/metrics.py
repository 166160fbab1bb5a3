"""Segmentation metrics for one binary target: Dice, NSD, HD95 (computed by MONAI) and CVPR 2025 scores.

Masks are 3D arrays ``(X, Y, Z)`` in file voxel order (non-zero = foreground); spacing is mm per axis.

Empty masks (MONAI returns nan/inf there; we fix the conventions):

=============================  ======  ======  ======
case                           dice    nsd     hd95
=============================  ======  ======  ======
both empty                     1.0     1.0     0.0
one empty, the other not       0.0     0.0     inf
=============================  ======  ======  ======

Speed: both masks are cropped to the bounding box of their union plus one voxel before MONAI sees them.
This is exact, not an approximation: every voxel outside that box is background in both masks, MONAI
itself crops to the same box (``get_mask_edges(crop=True)``, margin 1, zero-padded past the border) and
measures distances between surface voxels only, which all lie inside the box, so no tolerance-sized
margin is needed. What the crop saves is MONAI's full-volume tensor conversion, one-hot and cropping.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

__all__ = [
    "CVPR25_DSC_THRESHOLD",
    "CVPR25_NSD_TOLERANCE_MM",
    "StepMetrics",
    "auc",
    "case_metrics",
    "cvpr25_case_scores",
    "cvpr25_nsd",
    "cvpr25_summary",
    "dice",
    "hd95",
    "nsd",
]

CVPR25_NSD_TOLERANCE_MM = 2.0
"""NSD tolerance of the CVPR 2025 interactive 3D challenge, mm."""
CVPR25_DSC_THRESHOLD = 0.2
"""The challenge sets NSD to 0 when DSC <= this value."""

_MARGIN = 1  # voxels around the union box; see the module docstring for why 1 is exact


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred), np.asarray(gt)
    if p.ndim != 3 or p.shape != g.shape:
        raise ValueError(f"pred and gt must be 3D arrays of one shape, got {p.shape} and {g.shape}")
    return (p if p.dtype == bool else p != 0), (g if g.dtype == bool else g != 0)


def _spacing(spacing: Sequence[float]) -> list[float]:
    s = [float(x) for x in spacing]
    if len(s) != 3 or any(not math.isfinite(x) or x <= 0 for x in s):
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing!r}")
    return s


def _crop_union(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Both masks cropped to their union's bounding box plus ``_MARGIN`` (clipped); None if both empty."""
    union = p | g
    sl = []
    for ax in range(3):
        nz = np.flatnonzero(np.any(union, axis=tuple(a for a in range(3) if a != ax)))
        if nz.size == 0:
            return None
        sl.append(slice(max(int(nz[0]) - _MARGIN, 0), int(nz[-1]) + 1 + _MARGIN))
    box = tuple(sl)
    return p[box], g[box]


@contextmanager
def _quiet_monai() -> Iterator[None]:
    """Silence the FutureWarning MONAI 1.5+ raises about its own internal ``get_mask_edges`` call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        yield


def _tensor(m: np.ndarray) -> torch.Tensor:
    """(X, Y, Z) bool -> (B=1, C=1, X, Y, Z) float32 tensor, MONAI's one-hot layout for one class."""
    return torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice similarity coefficient ``2|P∩G| / (|P|+|G|)`` (MONAI ``compute_dice``).

    Both empty -> 1.0; exactly one empty -> 0.0.
    """
    p, g = _pair(pred, gt)
    cropped = _crop_union(p, g)
    if cropped is None:
        return 1.0
    p, g = cropped
    if not p.any() or not g.any():
        return 0.0
    return float(compute_dice(_tensor(p), _tensor(g), include_background=True).item())


def nsd(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float,
    use_subvoxels: bool = False,
) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (MONAI ``compute_surface_dice``).

    The fraction of both surfaces lying within ``tolerance_mm`` of the other surface.

    Args:
        pred, gt: masks (X, Y, Z).
        spacing: mm per axis.
        tolerance_mm: distance tolerance, mm.
        use_subvoxels: weight surface elements by their area (the DeepMind ``surface-distance`` method
            the CVPR challenges use) instead of counting surface voxels.

    Both empty -> 1.0; exactly one empty -> 0.0.
    """
    p, g = _pair(pred, gt)
    sp = _spacing(spacing)
    if not tolerance_mm >= 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    cropped = _crop_union(p, g)
    if cropped is None:
        return 1.0
    p, g = cropped
    if not p.any() or not g.any():
        return 0.0
    with _quiet_monai():
        out = compute_surface_dice(
            _tensor(p),
            _tensor(g),
            class_thresholds=[float(tolerance_mm)],
            include_background=True,
            spacing=sp,
            use_subvoxels=use_subvoxels,
        )
    return float(out.item())


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance, mm (MONAI ``compute_hausdorff_distance``).

    The larger of the two directed 95th percentiles of surface-voxel distances. Both empty -> 0.0;
    exactly one empty -> ``inf``.
    """
    p, g = _pair(pred, gt)
    sp = _spacing(spacing)
    cropped = _crop_union(p, g)
    if cropped is None:
        return 0.0
    p, g = cropped
    if not p.any() or not g.any():
        return math.inf
    with _quiet_monai():
        out = compute_hausdorff_distance(_tensor(p), _tensor(g), include_background=True, percentile=95, spacing=sp)
    return float(out.item())


def cvpr25_nsd(dsc: float, nsd_value: float) -> float:
    """The challenge's NSD: ``nsd_value``, or 0.0 when ``dsc <= 0.2`` (``CVPR25_iter_eval.py``)."""
    return float(nsd_value) if dsc > CVPR25_DSC_THRESHOLD else 0.0


def auc(values: Sequence[float]) -> float:
    """Trapezoidal area under ``values`` at steps ``0 .. N-1`` (unit step); 0.0 for fewer than 2 values.

    With the 5 click-step scores this is the challenge's DSC_AUC / NSD_AUC (maximum 4.0).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1D, got shape {v.shape}")
    return float(np.trapezoid(v, dx=1.0)) if v.size >= 2 else 0.0


def cvpr25_summary(dscs: Sequence[float], nsds: Sequence[float], n_clicks: int = 5) -> dict[str, float]:
    """CVPR 2025 per-case scores from per-step DSC and (thresholded) NSD.

    Args:
        dscs, nsds: one value per step, the box step first when there is one (6 steps in the challenge:
            box + 5 clicks). NSDs should already have gone through :func:`cvpr25_nsd`.
        n_clicks: click steps; the AUCs cover only the last ``n_clicks`` values (the challenge leaves the
            optional box step out of the AUC).

    Returns:
        ``{"DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final"}``.
    """
    if len(dscs) != len(nsds) or len(dscs) < n_clicks or n_clicks < 1:
        raise ValueError(
            f"need equal-length dscs/nsds with >= n_clicks={n_clicks} values, got {len(dscs)}, {len(nsds)}"
        )
    return {
        "DSC_AUC": auc(list(dscs)[-n_clicks:]),
        "NSD_AUC": auc(list(nsds)[-n_clicks:]),
        "DSC_Final": float(dscs[-1]),
        "NSD_Final": float(nsds[-1]),
    }


def cvpr25_case_scores(
    dscs: Sequence[Sequence[float]], nsds: Sequence[Sequence[float]], n_clicks: int = 5
) -> dict[str, float]:
    """The challenge's per-case scores from per-class, per-step DSC and NSD (``CVPR25_iter_eval.py``).

    Args:
        dscs, nsds: ``[class][step]`` values, every class with the same steps (box step first when there
            is one). Per step, the case's DSC is the mean over classes and its NSD the mean over classes
            when that mean DSC > 0.2, else 0.
        n_clicks: click steps the AUCs cover (the last ``n_clicks``).

    Returns:
        ``{"DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final"}`` (:func:`cvpr25_summary` of the case curves).
    """
    d = np.asarray(dscs, dtype=np.float64)
    n = np.asarray(nsds, dtype=np.float64)
    if d.ndim != 2 or d.shape != n.shape or d.shape[0] == 0:
        raise ValueError(f"dscs and nsds must be equal [class][step] tables, got shapes {d.shape} and {n.shape}")
    case_d = d.mean(axis=0)
    case_n = np.where(case_d > CVPR25_DSC_THRESHOLD, n.mean(axis=0), 0.0)
    return cvpr25_summary(case_d.tolist(), case_n.tolist(), n_clicks)


@dataclass(frozen=True)
class StepMetrics:
    """Metrics of one prediction against its target.

    Attributes:
        dice: Dice coefficient in [0, 1].
        nsd: normalised surface Dice in [0, 1] at the tolerance used.
        hd95: 95th-percentile Hausdorff distance, mm (inf when exactly one mask is empty).
    """

    dice: float
    nsd: float
    hd95: float

    def as_dict(self) -> dict[str, float]:
        """``{"dice", "nsd", "hd95"}``."""
        return asdict(self)


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    nsd_tolerance_mm: float = 1.0,
) -> dict[str, float]:
    """Dice, NSD at ``nsd_tolerance_mm`` and HD95 (mm) of ``pred`` against ``gt``.

    Returns:
        ``StepMetrics(...).as_dict()``: ``{"dice", "nsd", "hd95"}``.
    """
    p, g = _pair(pred, gt)
    cropped = _crop_union(p, g)  # crop once; the metrics' own crop of a cropped pair is a no-op
    if cropped is not None:
        pred, gt = cropped
    return StepMetrics(
        dice=dice(pred, gt),
        nsd=nsd(pred, gt, spacing, nsd_tolerance_mm),
        hd95=hd95(pred, gt, spacing),
    ).as_dict()
