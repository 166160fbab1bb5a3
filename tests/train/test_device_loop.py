from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from volsam.train.device_data import PackedVolumes
from volsam.train.device_loop import (
    DeviceTrainConfig,
    box_channel,
    correction_step,
    interior_voxels,
    random_voxels,
    train_on_device,
)
from volsam.train.losses import make_loss
from volsam.train.pack import pack_dataset

from . import tiny_fusion


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


def test_correction_step_trains_through_clicks():
    model = tiny_fusion()
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(2, 1, 32, 32, 32)
    target[:, :, 8:20, 10:22, 9:17] = 1
    image = torch.randn(2, 1, 32, 32, 32, generator=g) + 2 * target
    cfg = DeviceTrainConfig(box_prob=0.5, dt_click_prob=0.5)
    loss = correction_step(model, image, target, 3, cfg, make_loss("dicece"), g)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_train_on_device_writes_loadable_weights_and_a_log(toy_data: Path, tmp_path: Path):
    pack = tmp_path / "toy.npz"
    pack_dataset(toy_data, pack, fg_samples=32)
    data = PackedVolumes(pack, window=32, jitter=8)
    model = tiny_fusion()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = DeviceTrainConfig(budget_s=3.0, probe_s=1.0, batch_sizes=(1, 2), max_corrections=2, log_every=1)
    summary = train_on_device(model, data, cfg, tmp_path / "run", log=lambda m: None)
    assert summary["batch_size"] in (1, 2) and summary["steps"] >= 2 and set(summary["probe"]) <= {"1", "2"}
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "final.safetensors"))
    fresh = tiny_fusion()
    fresh.load_state_dict(saved, strict=True)
    assert any(not torch.equal(before[k], saved[k]) for k in before)  # it trained
    lines = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == summary["steps"] and json.loads(lines[-1])["step"] == summary["steps"]


def test_device_config_checks_its_arguments():
    with pytest.raises(ValueError, match="probe_s < budget_s"):
        DeviceTrainConfig(budget_s=10, probe_s=20)
    with pytest.raises(ValueError, match="batch_sizes"):
        DeviceTrainConfig(batch_sizes=(0,))
