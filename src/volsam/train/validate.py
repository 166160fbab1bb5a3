"""Validation during training: mean Dice after each simulated click on a held-out :class:`TrainDataset`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from volsam.eval import metrics
from volsam.modeling import PromptableModel
from volsam.prompts import first_click, simulate_click
from volsam.train.config import _STREAM_VAL, TrainConfig
from volsam.train.data import TrainDataset
from volsam.train.tasks import _autocast

__all__ = ["evaluate", "make_validator"]


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
