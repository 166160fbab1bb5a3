"""Training, fine-tuning and FastSAM3D-style layer-wise progressive distillation.

- :mod:`volsam.train.data`: :class:`~volsam.train.data.TrainDataset`, 128^3 windows at 1.5 mm around
  targets of a :func:`volsam.eval.datasets.load_dataset` dataset, with MONAI augmentation; every sample is a
  pure function of ``(seed, index)`` so runs resume exactly and shard across processes.
  Around it: :mod:`~volsam.train.sample_augment` (per-window augmentation), :mod:`~volsam.train.cache`
  (decoded volumes) and :mod:`~volsam.train.sampler` (each process's sample indices per step).
- :mod:`volsam.train.augment`: the same kinds of augmentation per batch, on the training device.
- :mod:`volsam.train.synth`: SynthSeg-style images generated from label maps alone.
- :mod:`volsam.train.loop`: SAM-Med3D's interactive training recipe (``volsam train``), built from
  :mod:`~volsam.train.config` (settings), :mod:`~volsam.train.tasks` (interaction losses and the trained
  task), :mod:`~volsam.train.fit` (the step engine), :mod:`~volsam.train.validate` (validation Dice),
  :mod:`~volsam.train.log` (``train_log.csv``), :mod:`~volsam.train.state` (RNG states, resuming) and
  :mod:`~volsam.train.distributed` (torchrun).
- :mod:`volsam.train.distill`: layer-wise progressive encoder distillation (``volsam distill``).
- :mod:`volsam.train.pack`, :mod:`~volsam.train.device_data`, :mod:`~volsam.train.device_loop`: a dataset
  packed into one file, and time-budgeted training with windows, contrasts and clicks generated on the
  accelerator (``scripts/train_default_gpu.sh``).

Submodules are imported explicitly; importing this package loads nothing heavy.
"""

from __future__ import annotations

import argparse

__all__ = ["add_distill_arguments", "add_train_arguments"]


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", required=True, help="dataset: nnU-Net folder, images/+labels/ folder, CSV or built-in name"
    )
    g.add_argument("--labels", default=None, help="comma-separated target names or values (default: all)")
    g.add_argument("--val-data", default=None, help="held-out dataset for validation Dice")
    g.add_argument("--val-cases", type=int, default=0, help="hold out the last N cases of --data for validation")
    g.add_argument("--clip", type=float, nargs=2, metavar=("LO", "HI"), help="intensity clip before normalising (CT)")
    g.add_argument("--p-synth", type=float, default=0.0, help="probability of a SynthSeg-style synthetic image")
    g.add_argument("--no-augment", action="store_true", help="no flips/affine/intensity augmentation")
    g.add_argument("--elastic-prob", type=float, default=0.0, help="probability of elastic deformation (slow)")
    g.add_argument(
        "--batch-augment", action="store_true",
        help="augment whole batches in torch on the training device (fast; use with --no-augment)",
    )
    g.add_argument("--jitter-mm", type=float, default=24.0, help="max window-centre jitter around the target, mm")
    g.add_argument(
        "--window-spacings", type=float, nargs="+", default=None, metavar="MM",
        help="multi-scale training: each window's spacing drawn from these (e.g. 1.5 3 6) among those at which "
        "the target covers >= 64 window voxels (default: 1.5 mm only)",
    )
    g.add_argument(
        "--extra-targets", type=int, default=0,
        help="train on this many more structures of each window (one encoder pass, several decodes)",
    )
    g.add_argument(
        "--window-size", type=int, default=None,
        help="training window side, voxels (default: the model's; a fully convolutional model may train smaller)",
    )
    g.add_argument("--cache-dir", default=None, help="decoded-volume cache (default: OUT/cache)")
    g.add_argument("--skip-bad-cases", action="store_true", help="skip unusable cases instead of stopping")


def _add_optim_arguments(p: argparse.ArgumentParser, lr: float, encoder_lr: float | None) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--out", required=True, help="output folder (checkpoints, train_log.csv); resumed if it holds one")
    g.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a checkpoint")
    g.add_argument("--batch-size", type=int, default=1, help="windows per micro-batch per process")
    g.add_argument("--accum", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--lr", type=float, default=lr, help="learning rate of prompt encoder + decoder")
    g.add_argument("--encoder-lr", type=float, default=encoder_lr, help="learning rate of the image encoder")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--max-grad-norm", type=float, default=None, help="clip the gradient norm")
    g.add_argument(
        "--recipe", default="correction", choices=["correction", "sam"],
        help="correction: k in 0..--max-corrections simulated clicks without gradient, then one trained round; "
        "sam: SAM-Med3D's --rounds rounds all with gradient",
    )
    g.add_argument("--max-corrections", type=int, default=8, help="largest k (correction recipe; evaluate uses 5-10)")
    g.add_argument("--correction-ramp-steps", type=int, default=0, help="grow the largest k from 1 over N steps")
    g.add_argument(
        "--dt-click-prob", type=float, default=0.5,
        help="share of correction clicks at the centre of the largest error (else --click-protocol)",
    )
    g.add_argument(
        "--box-prob", type=float, default=0.0, help="early-fusion models: share of first prompts that are boxes"
    )
    g.add_argument(
        "--leak-click-prob", type=float, default=0.0,
        help="share of correction clicks that are negative clicks on the largest leak when there is one",
    )
    g.add_argument(
        "--thick-slice-prob", type=float, default=0.0,
        help="share of windows resampled to 3-7 mm slices along one axis and back (needs --batch-augment)",
    )
    g.add_argument("--rounds", type=int, default=5, help="interaction rounds per batch (sam recipe)")
    g.add_argument("--mask-only-rounds", type=int, default=2, help="rounds without a new click (sam recipe)")
    g.add_argument("--ce-weight", type=float, default=1.0, help="weight of cross-entropy in Dice+CE (SAM-Med3D: 1)")
    g.add_argument(
        "--loss", default="dicece", choices=["dicece", "balanced"],
        help="dicece: SAM-Med3D's Dice+CE; balanced: Dice + class-balanced CE (training from scratch)",
    )
    g.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up, optimizer steps")
    g.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"], help="after warm-up")
    g.add_argument("--click-protocol", default="random", help="simulator of later clicks: random, dt, cvpr25")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    g.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    g.add_argument("--val-every", type=int, default=500, help="validate every N steps (and at the end)")
    g.add_argument("--val-clicks", type=int, default=5, help="clicks per validation target")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of checkpoints you trust")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``volsam train`` (run by :func:`volsam.train.loop.run_train`)."""
    p.add_argument("--model", default=None, help="registered model to train (see `volsam models`)")
    p.add_argument("--init", default=None, help="checkpoint to fine-tune (loaded strictly)")
    n = p.add_mutually_exclusive_group(required=True)
    n.add_argument("--steps", type=int, help="optimizer steps")
    n.add_argument("--epochs", type=float, help="epochs over the (case, target) pairs")
    p.add_argument(
        "--memory", default=None,
        help="Memorizing SAM: train only the per-head gates of this memory (volsam memory build) on --init's "
        "model; writes OUT/memory.safetensors with the trained gates",
    )
    p.add_argument(
        "--attention-backend", default=None, choices=["dense", "dilated"],
        help="encoder attention of --model (same weights; e.g. fine-tune a dense model to dilated attention)",
    )
    p.add_argument("--memory-gate-init", type=float, default=-4.0, help="initial gate logit (sigmoid -4 = 0.018)")
    _add_data_arguments(p)
    _add_optim_arguments(p, lr=1e-4, encoder_lr=None)


def add_distill_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``volsam distill`` (run by :func:`volsam.train.distill.run_distill`)."""
    p.add_argument("--teacher", required=True, help="teacher: checkpoint file or registered model name")
    p.add_argument("--decoder-checkpoint", default=None, help="prompt encoder + decoder for an encoder-only teacher")
    p.add_argument("--student", required=True, help="registered student model (see `volsam models`)")
    p.add_argument("--steps-per-stage", type=int, required=True, help="steps of each encoder stage")
    p.add_argument("--decoder-steps", type=int, default=None, help="steps of the decoder stage (default: per stage)")
    _add_data_arguments(p)
    _add_optim_arguments(p, lr=1e-4, encoder_lr=1e-4)
