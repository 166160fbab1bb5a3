"""Prompts simulated in torch for training (:mod:`volsam.train.prompt_sim`)."""

from __future__ import annotations

import torch

from volsam.train.prompt_sim import box_channel, interior_voxels, random_voxels


def test_random_voxels_lie_in_their_masks():
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(3, 8, 8, 8, dtype=torch.bool)
    mask[0, 2:4, 5, 1:7] = True
    mask[1, 7, 7, 7] = True
    idx, has = random_voxels(mask, g)
    assert has.tolist() == [True, True, False]
    for k in range(2):
        assert bool(mask[k, idx[k, 0], idx[k, 1], idx[k, 2]])
    assert idx[1].tolist() == [7, 7, 7]


def test_interior_voxels_find_the_centre_of_a_box_and_of_the_larger_of_two():
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 24, 24, 24, dtype=torch.bool)
    mask[0, 3:14, 5:16, 8:19] = True  # centre (8, 10, 13)
    mask[1, 0:3, 0:3, 0:3] = True  # small, at the border
    mask[1, 10:21, 10:21, 10:21] = True  # large: its centre (15, 15, 15) is deeper
    idx = interior_voxels(mask, g)
    assert idx[0].tolist() == [8, 10, 13]
    assert idx[1].tolist() == [15, 15, 15]


def test_box_channel_covers_the_target_within_the_jitter():
    g = torch.Generator().manual_seed(3)
    gt = torch.zeros(16, 20, 20, 20, dtype=torch.bool)
    gt[:, 5:12, 6:15, 4:11] = True
    box = box_channel(gt, g)[:, 0] > 0.5
    lo, hi = torch.tensor([5, 6, 4]), torch.tensor([11, 14, 10])
    for k in range(16):
        idx = torch.nonzero(box[k])
        assert bool((idx.amin(0) >= lo - 2).all()) and bool((idx.amax(0) <= hi + 2).all())
        thin = (idx.amax(0) == idx.amin(0)).sum()
        assert int(thin) <= 1  # a full box, or one drawn on a single slice
        if thin == 0:
            assert bool(box[k, 7:10, 8:13, 6:9].all())  # the target's core is always inside
