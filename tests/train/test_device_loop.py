from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from volsam.train.device_data import PackedVolumes
from volsam.train.device_loop import DeviceTrainConfig, correction_step, train_on_device
from volsam.train.losses import make_loss
from volsam.train.pack import pack_dataset

from . import tiny_fusion


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
