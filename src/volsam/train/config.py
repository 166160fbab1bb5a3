"""Training settings (:class:`TrainConfig`) and the seed streams of the training loop's random draws."""

from __future__ import annotations

import math
from dataclasses import dataclass

from volsam.prompts import CLICK_PROTOCOLS
from volsam.train.losses import LOSSES

__all__ = ["TrainConfig"]

# Second seed word of the per-sample / per-step generators of the loop.
_STREAM_CLICKS = 10
_STREAM_ROUNDS = 11
_STREAM_VAL = 12
_STREAM_AUGMENT = 13


@dataclass
class TrainConfig:
    """Training settings (shared by ``volsam train`` and the stages of ``volsam distill``).

    Attributes:
        steps: optimizer steps; or ``epochs`` (over (case, target) pairs, rounded up to whole steps).
        epochs: see ``steps``.
        batch_size: windows per micro-batch per process.
        accum: micro-batches accumulated per optimizer step.
        lr: learning rate of the prompt encoder and mask decoder (and of distillation projections).
        encoder_lr: learning rate of the image encoder (None = ``lr``).
        weight_decay: AdamW weight decay.
        max_grad_norm: clip the global gradient norm to this (None = no clipping).
        recipe: ``correction`` (default): per step, k correction rounds without gradient (k uniform in
            0..``max_corrections``, ramped up over ``correction_ramp_steps``), each adding a simulated click
            on the current errors with the previous prediction as prompt, then one round with gradient; so the
            model learns every click count the evaluation uses. ``sam``: SAM-Med3D's recipe, ``rounds`` rounds
            all with gradient (``mask_only_rounds`` of them without a new click).
        max_corrections: largest number of correction rounds before the gradient round (``correction``).
        correction_ramp_steps: optimizer steps over which the largest k grows from 1 to ``max_corrections``
            (0: no ramp).
        dt_click_prob: probability that a correction click goes to the centre of the largest error component
            (the CVPR 2025 rule) instead of a uniform random error voxel (``click_protocol``).
        box_prob: probability that an early-fusion model's first prompt is the target's bounding box (a box
            channel, 3D or drawn on one slice) instead of a click; 0 for SAM models (no box embedding).
        leak_click_prob: probability that a correction click, when the prediction has false positives, is a
            negative click at the deepest voxel of the largest false-positive component
            (:func:`volsam.train.tasks.leak_click`), so that one negative click learns to remove a whole
            leak, not a sphere around itself.
        thick_slice_prob: probability that a training window is turned into thick slices (3-7 mm along one
            axis, :func:`volsam.train.augment.thick_slices`); needs ``batch_augment``.
        batch_augment: augment each batch in torch on the training device
            (:func:`volsam.train.augment.augment_batch`: rotation, scaling, flip, elastic, gamma, contrast,
            noise), milliseconds a batch where the per-sample MONAI transforms take ~0.4 s a window.
        rounds: interaction rounds per batch (``sam`` recipe).
        mask_only_rounds: rounds without a new click (the last, then random middle rounds; ``sam`` recipe).
        ce_weight: weight of the cross-entropy term (1.0 in SAM-Med3D).
        loss: ``dicece`` (SAM-Med3D's Dice + CE) or ``balanced`` (Dice + class-balanced CE, which keeps
            a model trained from scratch off empty masks; :mod:`volsam.train.losses`).
        warmup_steps: linear learning-rate warm-up from 0 over this many optimizer steps.
        lr_schedule: ``constant`` or ``cosine`` (decay to ``min_lr_ratio`` x lr at the last step, after
            warm-up). The rate is a function of the step alone, so a resumed run follows the same curve.
        min_lr_ratio: floor of the cosine schedule, as a fraction of the peak rate.
        click_protocol: simulator of later clicks (:data:`volsam.prompts.CLICK_PROTOCOLS`).
        seed: seed of every random draw.
        workers: DataLoader worker processes.
        val_every: validate every this many steps (0 = only at the end) when validation data is given.
        val_clicks: clicks per validation target.
        save_every: write ``latest.pt`` every this many steps (and at the end).
        device: torch device (None: CUDA when available, else CPU).
        amp: bf16 autocast on CUDA (ignored on CPU).
        progress: show a rich progress bar.
    """

    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 1
    accum: int = 1
    lr: float = 1e-4
    encoder_lr: float | None = None
    weight_decay: float = 0.1
    max_grad_norm: float | None = None
    recipe: str = "correction"
    max_corrections: int = 8
    correction_ramp_steps: int = 0
    dt_click_prob: float = 0.5
    box_prob: float = 0.0
    leak_click_prob: float = 0.0
    thick_slice_prob: float = 0.0
    batch_augment: bool = False
    rounds: int = 5
    mask_only_rounds: int = 2
    ce_weight: float = 1.0
    loss: str = "dicece"
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.05
    click_protocol: str = "random"
    seed: int = 0
    workers: int = 0
    val_every: int = 0
    val_clicks: int = 5
    save_every: int = 100
    device: str | None = None
    amp: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        if self.batch_size < 1 or self.accum < 1 or self.rounds < 1:
            raise ValueError(
                f"batch_size, accum and rounds must be >= 1, got {self.batch_size}, {self.accum}, {self.rounds}"
            )
        if self.recipe not in ("correction", "sam"):
            raise ValueError(f"recipe must be 'correction' or 'sam', got {self.recipe!r}")
        if self.max_corrections < 0 or self.correction_ramp_steps < 0:
            raise ValueError(
                f"expected max_corrections >= 0 and correction_ramp_steps >= 0, "
                f"got {self.max_corrections}, {self.correction_ramp_steps}"
            )
        probs = (self.dt_click_prob, self.box_prob, self.leak_click_prob, self.thick_slice_prob)
        if not all(0.0 <= p <= 1.0 for p in probs):
            raise ValueError(
                f"dt_click_prob, box_prob, leak_click_prob and thick_slice_prob must be in [0, 1], got {probs}"
            )
        if self.click_protocol not in CLICK_PROTOCOLS:
            raise ValueError(f"unknown click protocol {self.click_protocol!r}; valid: {', '.join(CLICK_PROTOCOLS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {', '.join(LOSSES)}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(
                f"expected warmup_steps >= 0 and 0 <= min_lr_ratio <= 1, got {self.warmup_steps}, {self.min_lr_ratio}"
            )
        if self.save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {self.save_every}")

    @property
    def enc_lr(self) -> float:
        return self.lr if self.encoder_lr is None else self.encoder_lr

    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier of the peak learning rates at optimizer step ``step`` (0-based) of ``total``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        span = max(total - self.warmup_steps - 1, 1)
        t = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    def corrections_at(self, step: int) -> int:
        """Largest number of correction rounds drawn at optimizer step ``step``."""
        if self.correction_ramp_steps <= 0 or self.max_corrections == 0:
            return self.max_corrections
        frac = min(1.0, (step + 1) / self.correction_ramp_steps)
        return max(1, round(frac * self.max_corrections))

    def total_steps(self, num_pairs: int, world: int = 1) -> int:
        """Optimizer steps of the run: ``steps``, or ``ceil(epochs * num_pairs / global batch)``."""
        if self.steps is not None:
            return int(self.steps)
        if self.epochs is None:
            raise ValueError("give steps or epochs")
        return max(1, math.ceil(self.epochs * num_pairs / (self.batch_size * self.accum * world)))
