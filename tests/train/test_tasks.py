"""The interaction recipes' losses and :class:`InteractiveTask` (:mod:`volsam.train.tasks`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from volsam import build_model
from volsam.train.config import _STREAM_ROUNDS, TrainConfig
from volsam.train.losses import make_loss
from volsam.train.tasks import InteractiveTask, correction_loss, mask_only_round_set

from . import tiny_fusion


def test_mask_only_rounds():
    rng = np.random.default_rng(0)
    assert mask_only_round_set(5, 0, rng) == set() and mask_only_round_set(1, 2, rng) == set()
    assert mask_only_round_set(2, 2, rng) == {1}
    for _ in range(10):
        s = mask_only_round_set(5, 2, rng)
        assert 4 in s and len(s) == 2 and 0 not in s
    assert mask_only_round_set(4, 9, rng) == {1, 2, 3}


def test_ce_weight_scales_the_cross_entropy_term():
    logits = torch.full((1, 1, 8, 8, 8), -4.0)
    target = torch.zeros(1, 1, 8, 8, 8)
    target[..., 2:5, 2:5, 2:5] = 1
    model = build_model("fastsam3d_mini")
    full = InteractiveTask(model, TrainConfig(steps=1), torch.device("cpu")).loss_fn(logits, target)
    low = InteractiveTask(model, TrainConfig(steps=1, ce_weight=0.1), torch.device("cpu")).loss_fn(logits, target)
    dice_only = InteractiveTask(model, TrainConfig(steps=1, ce_weight=0.0), torch.device("cpu")).loss_fn(logits, target)
    assert torch.isclose(low - dice_only, 0.1 * (full - dice_only), rtol=1e-5)


@pytest.mark.parametrize("step", [0, 3, 7])
def test_correction_recipe_runs_k_clicks_without_gradient_then_one_trained_round(step):
    model = tiny_fusion()
    calls: list[tuple[bool, int, bool]] = []
    decode = model.decode

    def spy(emb, coords, labels, prev=None, **kw):
        calls.append((torch.is_grad_enabled(), labels.shape[1], prev is None))
        return decode(emb, coords, labels, prev, **kw)

    model.decode = spy  # type: ignore[method-assign]
    cfg = TrainConfig(steps=10, max_corrections=4, seed=1)
    target = torch.zeros(2, 1, 32, 32, 32)
    target[:, :, 10:20, 12:22, 8:18] = 1
    image = torch.randn(2, 1, 32, 32, 32)
    loss, per_round = correction_loss(model, image, target, [5, 6], step, cfg, make_loss("dicece"))
    k = int(np.random.default_rng([1, _STREAM_ROUNDS, step]).integers(5))
    assert len(calls) == k + 1
    assert [g for g, _, _ in calls] == [False] * k + [True]
    assert [n for _, n, _ in calls] == list(range(1, k + 2))  # one more click each round
    assert calls[0][2] and all(not first for _, _, first in calls[1:])  # previous prediction from round 2 on
    assert loss.requires_grad and per_round == [pytest.approx(float(loss.detach()))]


def test_leak_click_is_negative_at_the_deepest_voxel_of_the_largest_leak():
    from volsam.train.tasks import leak_click

    gt = np.zeros((20, 20, 20), bool)
    gt[2:8, 2:8, 2:8] = True
    pred = gt.copy()
    pred[10:19, 10:19, 10:19] = True  # big leak, deepest at its centre (14, 14, 14)
    pred[2:4, 15:17, 2:4] = True  # small leak
    pred[3, 3, 3] = False  # a miss does not matter
    c = leak_click(pred, gt)
    assert c is not None and not c.positive and c.voxel == (14, 14, 14)
    assert leak_click(gt, gt) is None


def test_correction_recipe_places_leak_clicks():
    model = tiny_fusion()
    seen: list[torch.Tensor] = []
    decode = model.decode

    def spy(emb, coords, labels, prev=None, **kw):
        seen.append(labels.clone())
        return decode(emb, coords, labels, prev, **kw)

    model.decode = spy  # type: ignore[method-assign]
    target = torch.zeros(2, 1, 32, 32, 32)
    target[:, :, 4:8, 4:8, 4:8] = 1
    image = torch.randn(2, 1, 32, 32, 32)
    # step 3 with at least one correction round; a random model predicts far more than the tiny target
    cfg = TrainConfig(steps=10, max_corrections=4, seed=1, leak_click_prob=1.0)
    step = next(s for s in range(50) if np.random.default_rng([1, _STREAM_ROUNDS, s]).integers(5) >= 1)
    with torch.no_grad():
        pred = model.upsample_logits(model.decode(image, torch.zeros(2, 1, 3), torch.ones(2, 1).long(), None)[0])
    seen.clear()
    if not bool(((pred[:, 0] > 0) & (target[:, 0] < 0.5)).any(dim=(1, 2, 3)).all()):
        pytest.skip("the random model has no false positive here")
    correction_loss(model, image, target, [5, 6], step, cfg, make_loss("dicece"))
    # every correction click after a leaky prediction is negative (label 0)
    assert (seen[-1][:, 1] == 0).all()
