from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from volsam import build_model, save_checkpoint
from volsam.cli import main
from volsam.train.data import AugmentConfig, TrainDataset
from volsam.train.loop import TrainConfig, TrainLog, evaluate, train

from . import tiny_fusion

MODEL = "fastsam3d_mini"


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(MODEL)


def test_resume_repeats_the_uninterrupted_run(toy_data: Path, tmp_path: Path):
    data = TrainDataset.from_dataset(toy_data, augment=AugmentConfig(), seed=2)
    cfg = TrainConfig(
        steps=4, rounds=3, mask_only_rounds=1, lr=1e-3, save_every=2, seed=2, warmup_steps=2, lr_schedule="cosine",
        loss="balanced",
    )
    full = train(_model(), data, tmp_path / "full", cfg, model_name=MODEL)
    first = train(_model(), data, tmp_path / "cut", replace(cfg, steps=2), model_name=MODEL)
    # a fresh model object: everything (weights, optimizer, step, RNG) must come from latest.pt
    rest = train(_model(seed=99), data, tmp_path / "cut", cfg, model_name=MODEL)
    assert (first.start_step, first.end_step, rest.start_step, rest.end_step) == (0, 2, 2, 4)
    assert first.losses + rest.losses == full.losses
    rows = TrainLog.read(tmp_path / "cut" / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["loss"]) for r in rows] == full.losses
    # warm-up then cosine, a function of the step: the resumed half follows the same curve
    assert [float(r["lr"]) for r in rows] == pytest.approx([5e-4, 1e-3, 1e-3, 5e-5])
    a = torch.load(tmp_path / "full" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "latest.pt", weights_only=True)
    assert all(torch.equal(a["model_state_dict"][k], v) for k, v in b["model_state_dict"].items())
    assert b["step"] == 4 and b["phase"] == "train" and b["model_name"] == MODEL
    assert {"optimizer_state_dict", "rng_state", "train_config"} <= set(b)
    # the training checkpoint is a model checkpoint too
    m = build_model(MODEL, checkpoint=tmp_path / "cut" / "latest.pt")
    assert torch.equal(
        m.state_dict()["mask_decoder.iou_token.weight"], b["model_state_dict"]["mask_decoder.iou_token.weight"]
    )
    build_model(MODEL, checkpoint=tmp_path / "cut" / "final.pt")


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", MODEL, "--data", str(data), "--out", str(out), "--steps", "2", "--rounds", "2",
        "--mask-only-rounds", "0", "--no-progress", "--workers", "0", *extra,
    ]  # fmt: skip


def test_cli_train_with_workers_validation_and_resume(toy_data: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    args = _train_args(toy_data, out, "--workers", "2", "--val-cases", "1", "--val-every", "1", "--val-clicks", "2")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "2 case(s), 4 (case, target) pair(s)" in err and "validation Dice" in err
    rows = TrainLog.read(out / "train_log.csv")
    assert len(rows) == 2 and all(0.0 <= float(r["val_dice"]) <= 1.0 for r in rows)
    assert (out / "cache").is_dir()
    build_model(MODEL, checkpoint=out / "latest.pt")
    assert main([*args[:8], "3", *args[9:]]) == 0  # --steps 3: resumes at step 2
    assert "resuming" in capsys.readouterr().err
    assert [r["step"] for r in TrainLog.read(out / "train_log.csv")] == ["1", "2", "3"]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("volsam: error: ") and "\n" not in err
    return err


def test_cli_bad_inputs_fail_before_training(toy_data: Path, tmp_path: Path, capsys):
    other = save_checkpoint(build_model("sam_med3d_mini"), tmp_path / "other.pt")
    out = tmp_path / "run"
    err = _one_line_error(capsys, _train_args(toy_data, out, "--init", str(other)))
    assert "does not fit model 'fastsam3d_mini'" in err and "sam_med3d_mini" in err
    assert not (out / "latest.pt").exists() and not (out / "train_log.csv").exists()
    bad_name = _train_args(toy_data, out)
    bad_name[2] = "nope"
    assert "unknown model 'nope'" in _one_line_error(capsys, bad_name)
    empty = tmp_path / "nolabels"
    (empty / "images").mkdir(parents=True)
    (empty / "labels").mkdir()
    assert "no label files" in _one_line_error(capsys, _train_args(empty, out))
    assert "leaves no training case" in _one_line_error(capsys, _train_args(toy_data, out, "--val-cases", "3"))
    assert not (out / "latest.pt").exists()


def test_init_fine_tunes_from_a_checkpoint(toy_data: Path, tmp_path: Path, capsys):
    src = _model(seed=7)
    ckpt = save_checkpoint(src, tmp_path / "init.pt")
    out = tmp_path / "ft"
    assert main(_train_args(toy_data, out, "--init", str(ckpt), "--steps", "1", "--no-augment")) == 0
    assert "from " + str(ckpt) in capsys.readouterr().err
    key = "image_encoder.patch_embed.proj.weight"
    sd = torch.load(out / "final.pt", weights_only=True)["model_state_dict"]
    moved = float((sd[key] - src.state_dict()[key]).abs().max())
    fresh = float((_model(seed=0).state_dict()[key] - src.state_dict()[key]).abs().max())
    assert 0 < moved < 1e-3 < fresh  # started from the checkpoint (not from scratch), then took one step


@pytest.mark.slow
def test_overfits_a_small_synthetic_set(toy_data: Path, tmp_path: Path):
    """fastsam3d_mini learns the spheres of three volumes from scratch: Dice > 0.9 after one click.

    About 200 steps (~70 s on one free core, batch 1, one round); trained in chunks of 50 steps, each
    resuming the last, until the Dice passes.
    """
    data = TrainDataset.from_dataset(toy_data, labels=[1], seed=0)
    cfg = TrainConfig(lr=1e-3, rounds=1, mask_only_rounds=0, weight_decay=0.0, max_grad_norm=1.0, save_every=50)
    model = _model()
    t0 = time.perf_counter()
    dice = 0.0
    for steps in range(50, 501, 50):
        train(model, data, tmp_path / "overfit", replace(cfg, steps=steps), model_name=MODEL)
        dice = evaluate(model, data, clicks=1)["val_dice"]
        if dice > 0.9:
            break
    print(f"overfit: Dice {dice:.3f} after {steps} steps, {time.perf_counter() - t0:.0f} s")
    assert dice > 0.9


def test_fusion_model_trains_through_the_shared_loop(toy_data: Path, tmp_path: Path):
    data = TrainDataset.from_dataset(toy_data, size=32, seed=0)
    cfg = TrainConfig(steps=40, batch_size=2, lr=3e-3, max_corrections=2, box_prob=0.3, batch_augment=True, seed=0)
    res = train(tiny_fusion(), data, tmp_path / "f", cfg, model_name="")
    first, last = np.mean(res.losses[:8]), np.mean(res.losses[-8:])
    assert last < first
    assert (tmp_path / "f" / "final.pt").is_file()
