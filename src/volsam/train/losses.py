"""Segmentation losses of interactive training.

``dicece`` is SAM-Med3D's: MONAI's ``DiceCELoss(sigmoid=True)``, cross-entropy averaged over all voxels.
``balanced`` is soft Dice plus a class-balanced binary cross-entropy: the mean over target voxels and the
mean over background voxels, averaged (per sample). A 128^3 window holds a target of a few hundred voxels
(~0.02 %); with plain cross-entropy the cheapest early minimum is an empty mask, whose saturated sigmoid
then leaves the Dice term no gradient. Balancing keeps the target's voxels at half of the
cross-entropy whatever their number, and the logit gradient of cross-entropy never saturates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "balanced_dice_bce", "make_loss"]

LOSSES = ("dicece", "balanced")


def balanced_dice_bce(logits: torch.Tensor, target: torch.Tensor, ce_weight: float = 1.0) -> torch.Tensor:
    """Soft Dice + class-balanced BCE, averaged over the batch.

    Args:
        logits: [B, 1, D, H, W] mask logits.
        target: [B, 1, D, H, W] 0/1 target.
        ce_weight: weight of the balanced BCE term.

    Returns:
        Scalar loss. An empty target contributes only its background BCE and a Dice term of
        ``sum(p) / (sum(p) + 1)``.
    """
    if logits.shape != target.shape:
        raise ValueError(
            f"logits and target must have the same shape, got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    dims = tuple(range(1, logits.ndim))
    t = target.float()
    p = torch.sigmoid(logits)
    inter = (p * t).sum(dims)
    dice = 1.0 - (2.0 * inter + 1.0) / (p.sum(dims) + t.sum(dims) + 1.0)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    n_pos = t.sum(dims)
    n_neg = t[0].numel() - n_pos
    pos = (bce * t).sum(dims) / n_pos.clamp_min(1.0)
    neg = (bce * (1.0 - t)).sum(dims) / n_neg.clamp_min(1.0)
    has_pos = (n_pos > 0).float()
    balanced = (pos * has_pos + neg) / (1.0 + has_pos)
    return (dice + ce_weight * balanced).mean()


def make_loss(name: str, ce_weight: float = 1.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``name`` (one of :data:`LOSSES`) as ``loss(logits, target) -> scalar``."""
    if name == "dicece":
        from monai.losses import DiceCELoss

        return DiceCELoss(sigmoid=True, lambda_ce=ce_weight)
    if name == "balanced":
        return lambda logits, target: balanced_dice_bce(logits, target, ce_weight)
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
