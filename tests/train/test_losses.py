from __future__ import annotations

import itertools
import math

import pytest
import torch

from volsam.train.loop import TrainConfig
from volsam.train.losses import balanced_dice_bce, make_loss


def _case(n_pos: int = 8, size: int = 16) -> torch.Tensor:
    target = torch.zeros(1, 1, size, size, size)
    target.view(-1)[:n_pos] = 1
    return target


def test_balanced_loss_values_by_hand():
    target = _case()
    logits = torch.zeros_like(target)  # p = 0.5 everywhere: BCE = ln 2 on every voxel
    n = target.numel()
    dice = 1 - (2 * 0.5 * 8 + 1) / (0.5 * n + 8 + 1)
    got = balanced_dice_bce(logits, target, ce_weight=0.5)
    assert math.isclose(float(got), dice + 0.5 * math.log(2), rel_tol=1e-5)
    # an empty target: background BCE only, Dice term sum(p) / (sum(p) + 1)
    empty = torch.zeros_like(target)
    got = balanced_dice_bce(logits, empty, ce_weight=1.0)
    assert math.isclose(float(got), 1 - 1 / (0.5 * n + 1) + math.log(2), rel_tol=1e-5)


def test_balanced_loss_keeps_a_gradient_on_small_targets_of_an_empty_prediction():
    """The collapse it exists to avoid: an all-negative prediction of a 0.2 % target."""
    target = _case(n_pos=8)
    logits = torch.full_like(target, -8.0, requires_grad=True)
    balanced_dice_bce(logits, target).backward()
    g_bal = -logits.grad[target > 0].mean()
    logits.grad = None
    make_loss("dicece")(logits, target).backward()
    g_ce = -logits.grad[target > 0].mean()
    # balanced: ~0.5 / n_pos per target voxel; plain CE: 1 / n_voxels
    assert g_bal > 0.05 and g_bal > 100 * g_ce


def test_balanced_loss_prefers_the_target_over_an_empty_or_full_mask():
    target = _case(n_pos=64)
    exact = torch.where(target > 0, 8.0, -8.0)
    empty = torch.full_like(target, -8.0)
    full = torch.full_like(target, 8.0)
    loss = [float(balanced_dice_bce(x, target)) for x in (exact, empty, full)]
    assert loss[0] < 0.02 and loss[1] > 1.0 and loss[2] > 1.0


def test_loss_checks():
    with pytest.raises(ValueError, match="same shape"):
        balanced_dice_bce(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5))
    with pytest.raises(ValueError, match="expected one of dicece, balanced"):
        make_loss("focal")
    with pytest.raises(ValueError, match="unknown loss"):
        TrainConfig(steps=1, loss="focal")


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    f = [cfg.lr_factor(s, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1) and all(a >= b for a, b in itertools.pairwise(f[10:]))
    assert TrainConfig(steps=5).lr_factor(3, 5) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(steps=1, lr_schedule="step")
