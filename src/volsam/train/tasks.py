"""What the training loop optimises: the interaction recipes' losses on one micro-batch and the :class:`Task`
that :func:`volsam.train.fit.fit` trains (:class:`InteractiveTask`: SAM-Med3D's interactive training).

Per micro-batch: encode the windows once, then ``rounds`` interaction rounds. Round 0 clicks a random
voxel of the target (:func:`volsam.prompts.first_click`); later rounds click on the current error with the
simulator evaluation uses (:func:`volsam.prompts.simulate_click`, ``"random"`` by default) at the 128^3
window resolution, except ``mask_only_rounds`` rounds (the last one and random middle ones, as
SAM-Med3D does) that add no click. Every round the decoder gets all clicks so far and the previous
round's low-res logits (detached; zeros in round 0) as the mask prompt. The loss (SAM-Med3D's
``DiceCELoss(sigmoid=True)`` by default, :mod:`volsam.train.losses`) is taken on the upsampled
[B, 1, 128^3] logits and summed over rounds. The default ``correction`` recipe
(:func:`correction_loss`, :class:`~volsam.train.config.TrainConfig`) trains one round after k
correction rounds run without gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from volsam.modeling import PromptableModel
from volsam.prompts import Click, first_click, simulate_click
from volsam.train.config import _STREAM_AUGMENT, _STREAM_CLICKS, _STREAM_ROUNDS, TrainConfig
from volsam.train.losses import make_loss
from volsam.train.prompt_sim import box_channel

__all__ = [
    "InteractiveTask",
    "Task",
    "correction_loss",
    "correction_rounds",
    "interaction_loss",
    "leak_click",
    "mask_only_round_set",
]


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


def _click_tensors(clicks: Sequence[Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One host click per sample (:class:`volsam.prompts.Click`, label 1/0) -> coordinates [B, 3] and labels
    [B]; None (a perfect prediction, an empty target or a box-only first prompt) becomes a padding point
    (label -1), which keeps the batch's shapes aligned."""
    coords = [(0.0, 0.0, 0.0) if c is None else c.point for c in clicks]
    labels = [-1 if c is None else int(c.positive) for c in clicks]
    return (torch.tensor(coords, dtype=torch.float32, device=device),
            torch.tensor(labels, dtype=torch.long, device=device))


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
    coords: list[torch.Tensor] = []  # [B, 3] per click round
    labels: list[torch.Tensor] = []  # [B]
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
            c, lab = _click_tensors(clicks, device)
            coords.append(c)
            labels.append(lab)
        with _autocast(device, cfg.amp):
            low, _ = model.decode(emb, torch.stack(coords, 1), torch.stack(labels, 1), prev)
        up = model.upsample_logits(low.float())
        loss = loss_fn(up, target)
        total = loss if total is None else total + loss
        per_round.append(float(loss.detach()))
        prev = low.detach().float()
        if r + 1 < cfg.rounds and (r + 1) not in mask_only:
            pred = (up.detach()[:, 0] > 0).cpu().numpy()
    assert total is not None
    return total, per_round


def leak_click(pred: np.ndarray, gt: np.ndarray) -> Click | None:
    """A negative click at the deepest voxel (largest Euclidean distance to its border, voxel units) of the
    largest 26-connected false-positive component of ``pred``: where a user removes a leak.

    Args:
        pred, gt: (S, S, S) bool prediction and target.

    Returns:
        The click, or None when ``pred`` has no false positive.
    """
    fp = np.asarray(pred, dtype=bool) & ~np.asarray(gt, dtype=bool)
    if not fp.any():
        return None
    lab, _ = ndimage.label(fp, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    comp = lab == int(np.argmax(sizes))
    # pad so that the window border counts as outside: a leak cut by the border is deepest inside the window
    depth = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1, 1:-1]
    i, j, k = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return Click((float(i), float(j), float(k)), False)


NextClicks = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""A click simulator: the current prediction [B, S, S, S] bool -> one click per sample: coordinates [B, 3]
(window voxels, tensor-axis order) and labels [B] long (1 positive, 0 negative, -1 none)."""


def correction_rounds(
    model: PromptableModel,
    emb: torch.Tensor,
    target: torch.Tensor,
    k: int,
    first: tuple[torch.Tensor, torch.Tensor],
    next_clicks: NextClicks,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    amp: bool,
    dense_prompts: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The ``correction`` recipe's rounds, whatever simulates the clicks: ``k`` rounds without gradient, each
    adding the click ``next_clicks`` draws on its prediction, then one trained round. Every round sees all
    clicks so far and the previous round's low-res logits, as at inference.

    Args:
        model: the model (its decoder runs k + 1 times).
        emb: image embeddings [B, ...] (an early-fusion model's normalised windows [B, 1, S, S, S]).
        target: [B, 1, S, S, S] float 0/1.
        k: rounds run without gradient before the trained one.
        first: the first prompt's clicks, coordinates [B, 3] float and labels [B] long (-1: none, e.g. a box).
        next_clicks: the click simulator.
        loss_fn: loss of upsampled logits [B, 1, S, S, S] vs ``target``.
        amp: bf16 autocast on CUDA.
        dense_prompts: prompt channels of an early-fusion model (e.g. ``{"box_pos": [B, 1, S, S, S]}``).

    Returns:
        The trained round's loss (a graph to backpropagate).
    """
    coords, labels = [first[0].float()], [first[1].long()]
    extra = {} if dense_prompts is None else {"dense_prompts": dense_prompts}

    def run(prev: torch.Tensor | None) -> torch.Tensor:
        with _autocast(emb.device, amp):
            low, _ = model.decode(emb, torch.stack(coords, 1), torch.stack(labels, 1), prev, **extra)
        return low.float()

    prev = model.no_mask_prompt(emb.shape[0], emb.device)
    for _ in range(k):
        with torch.no_grad():
            prev = run(prev)
            c, lab = next_clicks(model.upsample_logits(prev)[:, 0] > 0)
        coords.append(c.to(emb.device).float())
        labels.append(lab.to(emb.device).long())
    return loss_fn(model.upsample_logits(run(prev)), target)


def correction_loss(
    model: PromptableModel,
    emb: torch.Tensor,
    target: torch.Tensor,
    indices: Iterable[int],
    step: int,
    cfg: TrainConfig,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, list[float]]:
    """The ``correction`` recipe on one micro-batch (:func:`correction_rounds`), clicks simulated on the host
    with the evaluation's simulators, seeded per sample: a first prompt (a random target voxel, or for an
    early-fusion model with ``cfg.box_prob`` the target's box, :func:`volsam.train.prompt_sim.box_channel`),
    k correction clicks (k uniform in 0..``cfg.corrections_at(step)``, the same k for the batch; each at the
    centre of the largest error with ``cfg.dt_click_prob``, else by ``cfg.click_protocol``; with
    ``cfg.leak_click_prob`` first, where the prediction has false positives, a negative click on the largest
    leak, :func:`leak_click`), one trained round.

    Args and returns as :func:`interaction_loss` (the per-round list holds the one trained round's loss).
    """
    b = emb.shape[0]
    device = emb.device
    gt_t = target[:, 0] > 0.5
    gt = gt_t.cpu().numpy()
    rngs = [np.random.default_rng([cfg.seed, _STREAM_CLICKS, int(i)]) for i in indices]
    k = int(np.random.default_rng([cfg.seed, _STREAM_ROUNDS, step]).integers(cfg.corrections_at(step) + 1))
    dense = None
    use_box = [model.kind == "fusion" and cfg.box_prob > 0 and rngs[j].random() < cfg.box_prob for j in range(b)]
    if any(use_box):
        boxes = torch.zeros_like(target)
        for j in np.flatnonzero(use_box):
            gen = torch.Generator(device=device).manual_seed(int(rngs[j].integers(2**62)))
            boxes[j : j + 1] = box_channel(gt_t[j : j + 1], gen)
        dense = {"box_pos": boxes}
    first = _click_tensors([None if use_box[j] else first_click(gt[j], rngs[j], "random") for j in range(b)], device)

    def next_clicks(pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = pred.cpu().numpy()
        clicks: list[Click | None] = []
        for j in range(b):
            c = leak_click(p[j], gt[j]) if cfg.leak_click_prob > 0 and rngs[j].random() < cfg.leak_click_prob else None
            if c is None:
                protocol = "cvpr25" if rngs[j].random() < cfg.dt_click_prob else cfg.click_protocol
                c = simulate_click(protocol, p[j], gt[j], rngs[j])
            clicks.append(c)
        return _click_tensors(clicks, device)

    loss = correction_rounds(model, emb, target, k, first, next_clicks, loss_fn, cfg.amp, dense)
    return loss, [float(loss.detach())]


class Task(Protocol):
    """What :func:`~volsam.train.fit.fit` trains: a model, its trainable parameter groups and a loss per micro-batch."""

    model: PromptableModel

    def param_groups(self) -> list[dict[str, Any]]: ...

    def trained_modules(self) -> list[nn.Module]:
        """The modules that hold every parameter of :meth:`param_groups` (what DDP wraps under torchrun)."""
        ...

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

    def trained_modules(self) -> list[nn.Module]:
        return [self.model]

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
            if self.cfg.thick_slice_prob > 0:
                from volsam.train.augment import thick_slices

                spacing = batch.get("spacing")
                sp = torch.full((image.shape[0],), 1.5) if spacing is None else torch.as_tensor(spacing).float()
                image = thick_slices(image, sp, gen, self.cfg.thick_slice_prob)
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
