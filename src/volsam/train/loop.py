"""Interactive training (SAM-Med3D's recipe), the step engine shared with distillation, and ``volsam train``.

Per micro-batch: encode the windows once, then ``rounds`` interaction rounds. Round 0 clicks a random
voxel of the target (:func:`volsam.prompts.first_click`); later rounds click on the current error with the
simulator evaluation uses (:func:`volsam.prompts.simulate_click`, ``"random"`` by default) at the 128^3
window resolution, except ``mask_only_rounds`` rounds (the last one and random middle ones, as
SAM-Med3D does) that add no click. Every round the decoder gets all clicks so far and the previous
round's low-res logits (detached; zeros in round 0) as the mask prompt. The loss (SAM-Med3D's
``DiceCELoss(sigmoid=True)`` by default, :mod:`volsam.train.losses`) is taken on the upsampled
[B, 1, 128^3] logits and summed over rounds.

Optimisation: AdamW with two parameter groups (image encoder at ``encoder_lr``, the rest at ``lr``),
gradient accumulation, bf16 autocast on CUDA only (fp32 on CPU, where bf16 is ~100x slower), optional
gradient clipping. The global batch is ``batch_size * accum * world_size``; with ``torchrun`` each rank
takes its share of every global batch (:class:`volsam.train.data.StepSampler`) and gradients are
averaged over ranks before each optimizer step, so N processes give the result of one process with the
same global batch. Every random draw (data, clicks, mask-only rounds) is a function of the seed and the
sample index or step, so a resumed run repeats the losses of an uninterrupted one exactly.

Outputs in ``out_dir``: ``latest.pt`` (model + optimizer + step + RNG states, written atomically by
:func:`volsam.checkpoint.save_checkpoint` every ``save_every`` steps and at the end; loadable by
``volsam.build_model(name, checkpoint=...)``), ``final.pt`` (model only), ``train_log.csv`` and, when
TensorBoard is importable, event files in ``tb/``. A run whose ``out_dir`` holds ``latest.pt`` resumes it.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from volsam.checkpoint import CheckpointError, save_checkpoint
from volsam.eval import metrics
from volsam.modeling import PromptableModel, Sam3D
from volsam.prompts import CLICK_PROTOCOLS, first_click, simulate_click
from volsam.train.data import StepSampler, TrainDataset, make_loader
from volsam.train.losses import LOSSES, make_loss

__all__ = [
    "LOG_COLUMNS",
    "InteractiveTask",
    "Phase",
    "Task",
    "TrainConfig",
    "TrainLog",
    "evaluate",
    "fit",
    "interaction_loss",
    "mask_only_round_set",
    "train",
]

# Second seed word of the per-sample / per-step generators of the loop.
_STREAM_CLICKS = 10
_STREAM_ROUNDS = 11
_STREAM_VAL = 12
_STREAM_AUGMENT = 13

LOG_COLUMNS = (
    "phase",
    "phase_index",
    "step",
    "epoch",
    "samples",
    "loss",
    "loss_first",
    "loss_last",
    "lr",
    "encoder_lr",
    "samples_per_s",
    "elapsed_s",
    "val_dice_first",
    "val_dice",
)
"""Columns of ``train_log.csv``. ``loss_first``/``loss_last``: first/last interaction round (training) or
first/last distilled block (distillation); ``val_dice_first``/``val_dice``: validation Dice after the first
and the last click."""


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
        if not (0.0 <= self.dt_click_prob <= 1.0 and 0.0 <= self.box_prob <= 1.0):
            raise ValueError(f"dt_click_prob and box_prob must be in [0, 1], got {self.dt_click_prob}, {self.box_prob}")
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


# ------------------------------------------------------------------------------------------------ distributed


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_from_env(device: str | None = None) -> bool:
    """Initialise torch.distributed from torchrun's environment (gloo on CPU, NCCL on CUDA).

    Returns True when this call created the process group (the caller destroys it).
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def resolve_device(device: str | None) -> torch.device:
    import os

    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _average_gradients(params: Sequence[nn.Parameter], world: int) -> None:
    """All-reduce (mean) the gradients that exist, in one flat buffer."""
    grads = [p.grad for p in params if p.grad is not None]
    if world <= 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def _mean_over_ranks(values: list[float], world: int, device: torch.device) -> list[float]:
    if world <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world).tolist()


# ------------------------------------------------------------------------------------------------ RNG state


def rng_state() -> dict[str, Any]:
    """torch (CPU, CUDA), numpy-global and python RNG states as tensors/ints (``weights_only``-loadable)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - the legacy global state itself
    py = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(py[0]), "state": list(py[1]), "gauss": py[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    legacy = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    np.random.set_state(legacy)  # noqa: NPY002 - the legacy global state itself
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------ logging


class TrainLog:
    """``train_log.csv`` (columns :data:`LOG_COLUMNS`) plus TensorBoard when importable; rank 0 only.

    On resume, rows after the checkpoint (``phase_index``, ``step``) are dropped so the log never holds
    steps the model has forgotten.
    """

    def __init__(self, out_dir: Path, resume_at: tuple[int, int] | None = None, enabled: bool = True) -> None:
        self.path = out_dir / "train_log.csv"
        self.enabled = enabled
        self.tb: Any = None
        if not enabled:
            return
        rows: list[dict[str, str]] = []
        if resume_at is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if (int(r["phase_index"]), int(r["step"])) <= resume_at]
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            w.writeheader()
            w.writerows({k: r.get(k, "") for k in LOG_COLUMNS} for r in rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))
        except Exception:  # TensorBoard not installed: CSV only
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=LOG_COLUMNS).writerow(
                {
                    k: ("" if row.get(k) is None else (repr(row[k]) if isinstance(row[k], float) else row[k]))
                    for k in LOG_COLUMNS
                }
            )
        if self.tb is not None:
            gstep = int(row["samples"])
            for k in ("loss", "loss_first", "loss_last", "val_dice_first", "val_dice", "samples_per_s"):
                if row.get(k) is not None:
                    self.tb.add_scalar(f"{row['phase']}/{k}", row[k], gstep)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    @staticmethod
    def read(path: str | Path) -> list[dict[str, str]]:
        with Path(path).open(newline="") as f:
            return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ interaction


def mask_only_round_set(rounds: int, count: int, rng: np.random.Generator) -> set[int]:
    """Rounds without a new click: the last round, then ``count - 1`` random rounds among 1..rounds-2."""
    if count <= 0 or rounds < 2:
        return set()
    out = {rounds - 1}
    middle = np.arange(1, rounds - 1)
    k = min(count - 1, len(middle))
    if k > 0:
        out.update(int(r) for r in rng.choice(middle, size=k, replace=False))
    return out


def _autocast(device: torch.device, amp: bool) -> AbstractContextManager[Any]:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _append_clicks(
    coords: list[list[tuple[float, float, float]]], labels: list[list[int]], clicks: Sequence[Any]
) -> None:
    """Append one click per sample (label 1/0); None (a perfect prediction, an empty target or a box-only
    first prompt) becomes a padding point (label -1), which keeps the batch's shapes aligned."""
    for k, c in enumerate(clicks):
        if c is None:
            coords[k].append((0.0, 0.0, 0.0))
            labels[k].append(-1)
        else:
            coords[k].append(c.point)
            labels[k].append(1 if c.positive else 0)


def interaction_loss(
    model: PromptableModel,
    emb: torch.Tensor,
    target: torch.Tensor,
    indices: Iterable[int],
    step: int,
    cfg: TrainConfig,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, list[float]]:
    """Simulated interaction on one micro-batch.

    Args:
        model: the model (its prompt encoder and decoder run ``cfg.rounds`` times).
        emb: image embeddings [B, C, G, G, G].
        target: target windows [B, 1, S, S, S] (float 0/1).
        indices: the B global sample indices (seed each sample's clicks).
        step: optimizer step (seeds which rounds are mask-only).
        cfg: rounds, mask-only rounds, click protocol, seed, amp.
        loss_fn: loss of upsampled logits [B, 1, S, S, S] vs ``target``.

    Returns:
        The loss summed over rounds (a graph to backpropagate) and each round's loss value.
    """
    b = emb.shape[0]
    device = emb.device
    gt = (target[:, 0] > 0.5).cpu().numpy()
    rngs = [np.random.default_rng([cfg.seed, _STREAM_CLICKS, int(i)]) for i in indices]
    mask_only = mask_only_round_set(
        cfg.rounds, cfg.mask_only_rounds, np.random.default_rng([cfg.seed, _STREAM_ROUNDS, step])
    )
    coords: list[list[tuple[float, float, float]]] = [[] for _ in range(b)]
    labels: list[list[int]] = [[] for _ in range(b)]
    prev = model.no_mask_prompt(b, device)
    pred: np.ndarray | None = None
    total: torch.Tensor | None = None
    per_round: list[float] = []
    for r in range(cfg.rounds):
        if r == 0:
            clicks = [first_click(gt[k], rngs[k], "random") for k in range(b)]
        elif r in mask_only:
            clicks = None
        else:
            assert pred is not None
            clicks = [simulate_click(cfg.click_protocol, pred[k], gt[k], rngs[k]) for k in range(b)]
        if clicks is not None:
            _append_clicks(coords, labels, clicks)
        ct = torch.tensor(coords, dtype=torch.float32, device=device)
        lt = torch.tensor(labels, dtype=torch.long, device=device)
        with _autocast(device, cfg.amp):
            low, _ = model.decode(emb, ct, lt, prev)
        up = model.upsample_logits(low.float())
        loss = loss_fn(up, target)
        total = loss if total is None else total + loss
        per_round.append(float(loss.detach()))
        prev = low.detach().float()
        if r + 1 < cfg.rounds and (r + 1) not in mask_only:
            pred = (up.detach()[:, 0] > 0).cpu().numpy()
    assert total is not None
    return total, per_round


def _box_channel(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The target's bounding box as a filled mask (S, S, S) float32, each face jittered by up to 2 voxels;
    half the time a box drawn on one slice (the middle one of a random axis), as viewers draw them."""
    idx = np.argwhere(gt)
    lo, hi = idx.min(0), idx.max(0)
    jit = rng.integers(-2, 3, size=(2, 3))
    s = np.asarray(gt.shape)
    lo, hi = np.clip(lo + jit[0], 0, s - 1), np.clip(hi + jit[1], 0, s - 1)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    if rng.random() < 0.5:
        axis = int(rng.integers(3))
        mid = int(np.median(idx[:, axis]))
        lo[axis] = hi[axis] = mid
    out = np.zeros(gt.shape, dtype=np.float32)
    out[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = 1.0
    return out


def correction_loss(
    model: PromptableModel,
    emb: torch.Tensor,
    target: torch.Tensor,
    indices: Iterable[int],
    step: int,
    cfg: TrainConfig,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, list[float]]:
    """The ``correction`` recipe on one micro-batch: a first prompt, k correction clicks run without gradient
    (k uniform in 0..``cfg.corrections_at(step)``, the same k for the batch), then one more click whose
    prediction is trained. Every round sees all clicks so far and the previous logits, as at inference.

    Args and returns as :func:`interaction_loss` (the per-round list holds the one trained round's loss).
    """
    b = emb.shape[0]
    device = emb.device
    gt = (target[:, 0] > 0.5).cpu().numpy()
    rngs = [np.random.default_rng([cfg.seed, _STREAM_CLICKS, int(i)]) for i in indices]
    k = int(np.random.default_rng([cfg.seed, _STREAM_ROUNDS, step]).integers(cfg.corrections_at(step) + 1))
    coords: list[list[tuple[float, float, float]]] = [[] for _ in range(b)]
    labels: list[list[int]] = [[] for _ in range(b)]
    dense = None
    use_box = [model.kind == "fusion" and cfg.box_prob > 0 and rngs[j].random() < cfg.box_prob for j in range(b)]
    if any(use_box):
        boxes = np.stack([_box_channel(gt[j], rngs[j]) if use_box[j] else np.zeros(gt[j].shape, np.float32)
                          for j in range(b)])
        dense = {"box_pos": torch.from_numpy(boxes)[:, None].to(device)}

    def run(prev: torch.Tensor | None) -> torch.Tensor:
        ct = torch.tensor(coords, dtype=torch.float32, device=device)
        lt = torch.tensor(labels, dtype=torch.long, device=device)
        extra = {} if dense is None else {"dense_prompts": dense}
        with _autocast(device, cfg.amp):
            low, _ = model.decode(emb, ct, lt, prev, **extra)
        return low.float()

    _append_clicks(coords, labels, [None if use_box[j] else first_click(gt[j], rngs[j], "random") for j in range(b)])
    prev = model.no_mask_prompt(b, device)
    for _ in range(k):
        with torch.no_grad():
            prev = run(prev)
            pred = (model.upsample_logits(prev)[:, 0] > 0).cpu().numpy()
        protocols = ["cvpr25" if rngs[j].random() < cfg.dt_click_prob else cfg.click_protocol for j in range(b)]
        _append_clicks(coords, labels, [simulate_click(protocols[j], pred[j], gt[j], rngs[j]) for j in range(b)])
    low = run(prev)
    loss = loss_fn(model.upsample_logits(low), target)
    return loss, [float(loss.detach())]


# ------------------------------------------------------------------------------------------------ tasks


class Task(Protocol):
    """What :func:`fit` trains: a model, its trainable parameter groups and a loss per micro-batch."""

    model: PromptableModel

    def param_groups(self) -> list[dict[str, Any]]: ...

    def train_mode(self) -> None: ...

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


class InteractiveTask:
    """SAM-Med3D's interactive training of the parts of ``model`` named in ``trainable``.

    Args:
        model: the model (moved to ``device`` by the caller).
        cfg: settings (lr, encoder_lr, rounds, ...).
        device: where batches go.
        trainable: top-level parameter-name prefixes to train; everything else is frozen. With no
            ``image_encoder`` prefix the encoder runs under ``no_grad`` (distillation's decoder stage).
    """

    def __init__(
        self,
        model: PromptableModel,
        cfg: TrainConfig,
        device: torch.device,
        trainable: Sequence[str] | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.device = device
        # Default: everything (SAM: image_encoder, prompt_encoder, mask_decoder; early fusion: net).
        self.trainable = tuple(trainable) if trainable is not None else tuple(n for n, _ in model.named_children())
        self.loss_fn = make_loss(cfg.loss, cfg.ce_weight)
        self.encoder_trains = any(t.startswith("image_encoder") for t in self.trainable)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(self.trainable))

    def param_groups(self) -> list[dict[str, Any]]:
        enc, rest = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (enc if name.startswith("image_encoder") else rest).append(p)
        groups = []
        if rest:
            groups.append({"params": rest, "lr": self.cfg.lr, "name": "decoder"})
        if enc:
            groups.append({"params": enc, "lr": self.cfg.enc_lr, "name": "encoder"})
        return groups

    def train_mode(self) -> None:
        self.model.train()
        if not self.encoder_trains:
            self.model.image_encoder.eval()

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        image = batch["image"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        if self.cfg.batch_augment:
            from volsam.train.augment import augment_batch

            seed = np.random.default_rng([self.cfg.seed, _STREAM_AUGMENT, step]).integers(2**62)
            gen = torch.Generator().manual_seed(int(seed))
            image, target = augment_batch(image, target, gen)
        grad = torch.enable_grad() if self.encoder_trains else torch.no_grad()
        with grad, _autocast(self.device, self.cfg.amp):
            emb = self.model.image_encoder(image)
        indices = [int(i) for i in batch["index"]]
        t = target.shape[1]
        if t > 1:  # several targets per window (TrainDataset.extra_targets): one encoder pass, T decodes
            emb = emb.repeat_interleave(t, dim=0)
            target = target.reshape(-1, 1, *target.shape[2:])
            indices = [i + (k << 40) for i in indices for k in range(t)]  # k = 0 keeps the one-target seeds
        fn = correction_loss if self.cfg.recipe == "correction" else interaction_loss
        loss, per_round = fn(self.model, emb, target, indices, step, self.cfg, self.loss_fn)
        return loss, {"loss_first": per_round[0], "loss_last": per_round[-1]}

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


# ------------------------------------------------------------------------------------------------ validation


@torch.no_grad()
def evaluate(
    model: PromptableModel,
    dataset: TrainDataset,
    *,
    clicks: int = 5,
    protocol: str = "random",
    seed: int = 0,
    device: torch.device | str | None = None,
    amp: bool = True,
) -> dict[str, Any]:
    """Mean Dice (:func:`volsam.eval.metrics.dice`, in the 128^3 window) after each click.

    Every (case, target) pair of ``dataset`` is evaluated once on its deterministic window
    (:meth:`TrainDataset.eval_item`): a random first click on the target, then ``protocol`` clicks on the
    errors, each with all clicks so far and the previous logits as prompts (the inference loop).

    Returns:
        ``{"per_click": [mean Dice after click 1, 2, ...], "val_dice_first": ..., "val_dice": ...}``.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    dices: list[list[float]] = [[] for _ in range(clicks)]
    for pair in range(len(dataset.entries)):
        item = dataset.eval_item(pair)
        gt = item["target"][0].numpy() > 0.5
        with _autocast(dev, amp):
            emb = model.image_encoder(item["image"][None].to(dev))
        rng = np.random.default_rng([seed, _STREAM_VAL, pair])
        pts: list[tuple[float, float, float]] = []
        labs: list[int] = []
        prev = model.no_mask_prompt(1, dev)
        pred = np.zeros_like(gt)
        for c in range(clicks):
            click = first_click(gt, rng, "random") if c == 0 else simulate_click(protocol, pred, gt, rng)
            if click is not None:
                pts.append(click.point)
                labs.append(1 if click.positive else 0)
                ct = torch.tensor([pts], dtype=torch.float32, device=dev)
                lt = torch.tensor([labs], dtype=torch.long, device=dev)
                with _autocast(dev, amp):
                    low, _ = model.decode(emb, ct, lt, prev)
                prev = low.float()
                pred = (model.upsample_logits(prev)[0, 0] > 0).cpu().numpy()
            dices[c].append(metrics.dice(pred, gt))
    model.train(was_training)
    per_click = [float(np.mean(d)) for d in dices]
    return {"per_click": per_click, "val_dice_first": per_click[0], "val_dice": per_click[-1]}


# ------------------------------------------------------------------------------------------------ engine


@dataclass(frozen=True)
class Phase:
    """One optimisation phase: a name, its position in the run and its number of steps."""

    name: str
    index: int
    steps: int


@dataclass
class FitResult:
    """What :func:`fit` did: steps run now, their losses, the last validation, the checkpoint path."""

    start_step: int
    end_step: int
    losses: list[float] = field(default_factory=list)
    val: dict[str, Any] | None = None
    checkpoint: Path | None = None


def fit(
    task: Task,
    dataset: TrainDataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    phase: Phase,
    *,
    log: TrainLog,
    resume: dict[str, Any] | None = None,
    validate: Callable[[], dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    echo: Callable[[str], None] | None = None,
) -> FitResult:
    """Run ``phase`` of a training: AdamW over ``task.param_groups()``, checkpoints, log, validation.

    Args:
        task: model, parameters and loss.
        dataset: training samples (sample indices come from :class:`StepSampler`).
        cfg: settings.
        out_dir: where ``latest.pt`` goes.
        phase: name, index, steps.
        log: the run's CSV/TensorBoard log.
        resume: the loaded ``latest.pt`` of this phase (optimizer, step, RNG states, task state).
        validate: called on rank 0 every ``cfg.val_every`` steps and at the end; returns
            ``val_dice_first``/``val_dice``.
        extra: more entries for every checkpoint (model name, ...).
        echo: prints one-line messages (rank 0).
    """
    out = Path(out_dir)
    rank, world = dist_info()
    device = next(task.model.parameters()).device
    groups = task.param_groups()
    if not groups:
        raise ValueError(f"phase {phase.name}: nothing to train")
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer_state_dict"])
        task.load_state(resume.get("task_state", {}))
        set_rng_state(resume["rng_state"])
        start = int(resume["step"])
    elif world > 1:
        for p in task.model.state_dict().values():
            dist.broadcast(p, 0)
    result = FitResult(start, start)
    if start >= phase.steps:
        return result
    sampler = StepSampler(start, phase.steps, cfg.batch_size, cfg.accum, rank, world)
    batches = iter(make_loader(dataset, sampler, cfg.workers))
    for i, g in enumerate(groups):
        g.setdefault("name", str(i))
    lr_of = {g["name"]: g["lr"] for g in groups}
    progress = _progress(cfg.progress and rank == 0, phase, start)
    t_start = time.perf_counter()
    try:
        for step in range(start, phase.steps):
            t0 = time.perf_counter()
            task.train_mode()
            factor = cfg.lr_factor(step, phase.steps)
            for g in opt.param_groups:
                g["lr"] = lr_of[g.get("name", "")] * factor
            opt.zero_grad(set_to_none=True)
            vals = np.zeros(3)
            for _ in range(cfg.accum):
                batch = next(batches)
                loss, info = task.loss(batch, step)
                (loss / cfg.accum).backward()
                vals += [float(loss.detach()), info.get("loss_first", math.nan), info.get("loss_last", math.nan)]
            _average_gradients(params, world)
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            loss_v, first_v, last_v = _mean_over_ranks((vals / cfg.accum).tolist(), world, device)
            done = step + 1
            result.losses.append(loss_v)
            val = None
            if (
                validate is not None
                and rank == 0
                and ((cfg.val_every and done % cfg.val_every == 0) or done == phase.steps)
            ):
                val = validate()
                result.val = val
            dt = time.perf_counter() - t0
            gbatch = sampler.global_batch
            row = {
                "phase": phase.name,
                "phase_index": phase.index,
                "step": done,
                "epoch": done * gbatch / max(len(dataset), 1),
                "samples": done * gbatch,
                "loss": loss_v,
                "loss_first": first_v,
                "loss_last": last_v,
                "lr": None if "decoder" not in lr_of else lr_of["decoder"] * factor,
                "encoder_lr": None if "encoder" not in lr_of else lr_of["encoder"] * factor,
                "samples_per_s": gbatch / dt,
                "elapsed_s": time.perf_counter() - t_start,
                "val_dice_first": None if val is None else val["val_dice_first"],
                "val_dice": None if val is None else val["val_dice"],
            }
            if rank == 0:
                log.write(row)
            if progress is not None:
                text = f"loss {loss_v:.4f}" + ("" if val is None else f" val Dice {val['val_dice']:.3f}")
                progress[0].update(progress[1], advance=1, description=f"{phase.name}: {text}")
            if done % cfg.save_every == 0 or done == phase.steps:
                if rank == 0:
                    result.checkpoint = save_checkpoint(
                        task.model,
                        out / "latest.pt",
                        optimizer_state_dict=opt.state_dict(),
                        step=done,
                        phase=phase.name,
                        phase_index=phase.index,
                        rng_state=rng_state(),
                        task_state=task.state(),
                        train_config=asdict(cfg),
                        **(extra or {}),
                    )
                if world > 1:
                    dist.barrier()
            result.end_step = done
    finally:
        if progress is not None:
            progress[0].stop()
    if echo is not None and rank == 0 and result.losses:
        echo(f"{phase.name}: steps {start + 1}..{result.end_step}, last loss {result.losses[-1]:.4f}")
    return result


def _progress(enabled: bool, phase: Phase, start: int) -> tuple[Any, Any] | None:
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    prog.start()
    tid = prog.add_task(phase.name, total=phase.steps, completed=start)
    return prog, tid


# ------------------------------------------------------------------------------------------------ entry point


def load_resume(path: Path) -> dict[str, Any] | None:
    """The training checkpoint at ``path`` (weights only), or None when there is none."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot resume from {path}: {msg}; remove it or pass --overwrite") from None


def load_model_state(model: PromptableModel, state: dict[str, torch.Tensor], source: Path) -> None:
    """Strictly load a saved state_dict, with a one-line error when it belongs to another model."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        raise CheckpointError(
            f"{source} holds another architecture than the model being trained; use another --out or --overwrite"
        )
    model.load_state_dict(state, strict=True)


def make_validator(
    model: PromptableModel, val_data: TrainDataset | None, cfg: TrainConfig, device: torch.device
) -> Callable[[], dict[str, Any]] | None:
    """Validation Dice of ``model`` on ``val_data`` with the run's protocol and seed (None without data)."""
    if val_data is None:
        return None

    def validate() -> dict[str, Any]:
        return evaluate(
            model,
            val_data,
            clicks=cfg.val_clicks,
            protocol=cfg.click_protocol,
            seed=cfg.seed,
            device=device,
            amp=cfg.amp,
        )

    return validate


def train(
    model: PromptableModel,
    data: TrainDataset,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    model_name: str = "",
    val_data: TrainDataset | None = None,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = None,
    trainable: Sequence[str] | None = None,
    write_final: bool = True,
) -> FitResult:
    """Train (or fine-tune) ``model`` on ``data`` with SAM-Med3D's interactive recipe.

    Args:
        model: the model, already initialised (``build_model(name, checkpoint=init)`` to fine-tune).
        data: training windows.
        out_dir: checkpoints and logs; a ``latest.pt`` there is resumed unless ``overwrite``.
        cfg: settings; ``cfg.batch_size`` is per process under torchrun.
        model_name: registered name recorded in checkpoints (and checked on resume).
        val_data: held-out windows for validation Dice.
        overwrite: ignore an existing ``latest.pt`` and start afresh.
        echo: prints one-line messages.
        trainable: parameter-name prefixes to train (default: the whole model); the rest is frozen.
        write_final: write ``final.pt``; off when the caller saves the result in its own form (a memory).

    Returns:
        What this call ran (steps, losses, last validation, checkpoint path).
    """
    out = Path(out_dir)
    rank, world = dist_info()
    device = resolve_device(cfg.device)
    steps = cfg.total_steps(len(data), world)
    resume = None if overwrite else load_resume(out / "latest.pt")
    if resume is not None:
        saved = str(resume.get("model_name", ""))
        if model_name and saved and saved != model_name:
            raise CheckpointError(
                f"{out / 'latest.pt'} is a checkpoint of {saved!r}, not {model_name!r}; "
                "use another --out or --overwrite"
            )
        if resume.get("phase") != "train":
            raise CheckpointError(f"{out / 'latest.pt'} is not a `volsam train` checkpoint; use another --out")
        load_model_state(model, resume["model_state_dict"], out / "latest.pt")
        if echo and rank == 0:
            echo(f"resuming from {out / 'latest.pt'} at step {int(resume['step'])}")
    model.to(device)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if world > 1:
        dist.barrier()
    task = InteractiveTask(model, cfg, device) if trainable is None else InteractiveTask(model, cfg, device, trainable)
    log = TrainLog(out, (0, int(resume["step"])) if resume is not None else None, enabled=rank == 0)
    validate = make_validator(model, val_data, cfg, device)

    try:
        result = fit(
            task,
            data,
            cfg,
            out,
            Phase("train", 0, steps),
            log=log,
            resume=resume,
            validate=validate,
            extra={"model_name": model_name},
            echo=echo,
        )
    finally:
        log.close()
    if rank == 0 and write_final:
        save_checkpoint(model, out / "final.pt", model_name=model_name, step=max(result.end_step, steps))
    return result


# ------------------------------------------------------------------------------------------------ CLI


def datasets_from_args(
    args: argparse.Namespace, *, with_val: bool = True, size: int | None = None
) -> tuple[TrainDataset, TrainDataset | None]:
    """Training (and validation) datasets from the shared CLI options; all errors are one line."""
    from volsam.eval.datasets import load_dataset
    from volsam.train.data import AugmentConfig

    labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    cases = load_dataset(args.data, labels)
    val_cases = None
    if with_val and args.val_data:
        val_cases = load_dataset(args.val_data, labels)
    elif with_val and args.val_cases:
        if args.val_cases >= len(cases):
            raise ValueError(f"--val-cases {args.val_cases} leaves no training case ({len(cases)} in {args.data})")
        cases, val_cases = cases[: -args.val_cases], cases[-args.val_cases :]
    augment = None if args.no_augment else AugmentConfig(elastic_prob=args.elastic_prob)
    if size is None:
        size = args.window_size if getattr(args, "window_size", None) else 128
    cache_dir = args.cache_dir if args.cache_dir else Path(args.out) / "cache"
    common = {
        "seed": args.seed,
        "clip": tuple(args.clip) if args.clip else None,
        "cache_dir": cache_dir,
        "skip_bad_cases": args.skip_bad_cases,
        "size": size,
    }
    data = TrainDataset(
        cases,
        augment=augment,
        p_synth=args.p_synth,
        jitter_mm=args.jitter_mm,
        preload=True,
        extra_targets=getattr(args, "extra_targets", 0),
        **common,
    )
    val = TrainDataset(val_cases, **common) if val_cases else None
    return data, val


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        accum=args.accum,
        lr=args.lr,
        encoder_lr=args.encoder_lr,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        recipe=args.recipe,
        max_corrections=args.max_corrections,
        correction_ramp_steps=args.correction_ramp_steps,
        dt_click_prob=args.dt_click_prob,
        box_prob=args.box_prob,
        batch_augment=args.batch_augment,
        rounds=args.rounds,
        mask_only_rounds=args.mask_only_rounds,
        ce_weight=args.ce_weight,
        loss=args.loss,
        warmup_steps=args.warmup_steps,
        lr_schedule=args.lr_schedule,
        click_protocol=args.click_protocol,
        seed=args.seed,
        workers=args.workers,
        val_every=args.val_every,
        val_clicks=args.val_clicks,
        save_every=args.save_every,
        device=args.device,
        amp=not args.no_amp,
        progress=not args.no_progress,
    )


def _save_trained_memory(model: Sam3D, mem: Any, out: Path, model_name: str) -> None:
    """Write ``OUT/memory.safetensors`` (the memory with its trained gates) and a plain ``final.pt``."""
    from dataclasses import replace as dc_replace

    from volsam.memory import save_memory
    from volsam.modeling.memory_attention import detach_memory

    gates = model.image_encoder.blocks[mem.block].attn.gate_logit.detach().float().cpu()
    path = save_memory(dc_replace(mem, gate_logits=gates), out / "memory.safetensors")
    detach_memory(model)  # final.pt: the unchanged model, loadable without the memory
    save_checkpoint(model, out / "final.pt", model_name=model_name)
    _echo(f"memory with trained gates (sigmoid: {[round(float(g), 3) for g in torch.sigmoid(gates)]}) -> {path}")


def _echo(text: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(text)


def run_train(args: argparse.Namespace) -> int:
    """``volsam train``: everything that can fail on bad input is checked before the first step."""
    from volsam.registry import build_model, list_models, matching_models

    created = init_distributed_from_env(args.device)
    try:
        cfg = config_from_args(args)
        if args.model is None and args.init is None:
            raise ValueError("give --model NAME (from `volsam models`) and/or --init CHECKPOINT")
        if args.model is not None and args.model not in list_models():
            raise ValueError(f"unknown model {args.model!r}; expected one of {', '.join(list_models())}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if args.model is None:
                from volsam.checkpoint import read_state_dict

                fits = matching_models(read_state_dict(args.init, trust_checkpoint=args.trust_checkpoint))
                if not fits:
                    raise CheckpointError(f"{args.init} fits no registered model; give --model")
                args.model = fits[0]
            model = build_model(
                args.model, args.init, trust_checkpoint=args.trust_checkpoint, attention_backend=args.attention_backend
            )
        mem, trainable = None, None
        if args.memory is not None:
            from volsam.memory import use_memory

            # Memorizing SAM: only the memory block's per-head gates train; everything else is frozen.
            mem = use_memory(model, args.memory, gate_init=args.memory_gate_init)
            trainable = (f"image_encoder.blocks.{mem.block}.attn.gate_logit",)
        if args.memory is not None and model.kind != "sam":
            raise ValueError(f"--memory needs a SAM-family model (a ViT encoder); {args.model} is {model.kind}")
        data, val = datasets_from_args(args, size=args.window_size or model.img_size)
        rank, _ = dist_info()
        if rank == 0:
            _echo(
                f"training {args.model}{' from ' + str(args.init) if args.init else ''} on {data.describe()}"
                + (f"; validation on {val.describe()}" if val is not None else "")
            )
        result = train(
            model,
            data,
            args.out,
            cfg,
            model_name=args.model,
            val_data=val,
            overwrite=args.overwrite,
            echo=_echo,
            trainable=trainable,
            write_final=mem is None,
        )
        if mem is not None and rank == 0:
            _save_trained_memory(model, mem, Path(args.out), args.model)
        if rank == 0:
            msg = f"done: step {result.end_step}, checkpoint {Path(args.out) / 'latest.pt'}"
            if result.val is not None:
                msg += f", validation Dice {result.val['val_dice_first']:.3f} (1 click) -> {result.val['val_dice']:.3f}"
            _echo(msg)
    finally:
        if created:
            dist.destroy_process_group()
    return 0
