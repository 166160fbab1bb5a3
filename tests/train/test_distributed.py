"""torchrun with 2 CPU processes (gloo, DistributedDataParallel) gives the weights of one process with the same
global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from volsam.cli import main
from volsam.train.loop import TrainLog

from . import write_dataset

COMMON = [
    "--model", "fastsam3d_mini", "--rounds", "3", "--mask-only-rounds", "1", "--workers", "0", "--no-progress",
    "--seed", "1", "--lr", "1e-3", "--recipe", "sam",
]  # fmt: skip
# SAM-Med3D's recipe: every round trains, so the comparison below covers all rounds' gradients; the correction
# recipe's unrecorded no-gradient rounds would let a click flip on a logit within rounding of 0 at step 1.


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "final.pt", weights_only=True)["model_state_dict"]


def test_two_processes_match_one(tmp_path: Path):
    data = write_dataset(tmp_path / "toy", n=2)
    args = [*COMMON, "--data", str(data), "--steps", "3"]
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "volsam", "train", *args, "--out", str(two), "--batch-size", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One process, the same global batch of 2 as 2 micro-batches of 1: the same sample per forward pass,
    # so the weights agree to rounding (DDP's g1/2 + g2/2 and the one process's (g1 + g2)/2 round alike;
    # measured: identical).
    one = tmp_path / "one"
    assert main(["train", *args, "--out", str(one), "--batch-size", "1", "--accum", "2"]) == 0
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()  # the checkpoint holds the model, not DDP's wrapper (no `module.` prefix)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    loss_two = [float(r["loss"]) for r in TrainLog.read(two / "train_log.csv")]
    loss_one = [float(r["loss"]) for r in TrainLog.read(one / "train_log.csv")]
    assert len(loss_two) == 3 and max(abs(x - y) for x, y in zip(loss_one, loss_two, strict=True)) <= 1e-6
    # One process with one batch of 2: the same step-1 loss (batched kernels may round differently, and a
    # simulated click can flip on a logit within rounding of 0, so later steps are not compared).
    batched = tmp_path / "batched"
    assert (
        main(["train", *COMMON, "--data", str(data), "--steps", "1", "--out", str(batched), "--batch-size", "2"]) == 0
    )
    assert abs(float(TrainLog.read(batched / "train_log.csv")[0]["loss"]) - loss_two[0]) <= 1e-5
