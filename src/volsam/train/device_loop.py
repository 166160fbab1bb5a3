"""Time-budgeted interactive training with every step on the accelerator (``scripts/train_default_gpu.sh``).

The recipe is ``volsam train``'s (:func:`volsam.train.tasks.correction_rounds`: a first prompt, k correction
clicks without gradient, one trained round; plain Dice + CE), with data from
:class:`~volsam.train.device_data.PackedVolumes` and prompts simulated in torch on the device
(:mod:`volsam.train.prompt_sim`) instead of NumPy on the host:

- first prompt: a uniform random voxel of the target (``random_voxels``), or with ``box_prob`` the
  target's bounding box as the ``box_pos`` channel (faces jittered by up to 2 voxels; half the time drawn
  on the middle slice of a random axis, as viewers draw boxes);
- correction clicks: on the error FN ∪ FP of the current prediction, with ``dt_click_prob`` at its most
  interior voxel (``interior_voxels``, the largest number of 3x3x3 erosions the error survives: the
  chessboard-distance stand-in of the centre-of-error rule of :func:`volsam.prompts.cvpr25_click`),
  otherwise at a uniform random error voxel (:func:`volsam.prompts.random_click`); positive on a false
  negative, negative on a false positive.

:func:`train_on_device` first times a few steps at each candidate batch size (the same k sequence for
each, so the times compare), keeps the one with the most samples per second, and trains with it until the
time budget is spent: warm-up then cosine decay over *time*, bf16 autocast on CUDA, AdamW, gradient
clipping, a JSON-lines log and a safetensors checkpoint every ``save_every_s`` seconds and at the end.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from volsam.atomic import atomic_path
from volsam.modeling.fusion import FusionSeg3D
from volsam.train.augment import augment_batch
from volsam.train.device_data import PackedVolumes
from volsam.train.losses import make_loss
from volsam.train.prompt_sim import box_channel, interior_voxels, random_voxels
from volsam.train.tasks import correction_rounds

__all__ = ["DeviceTrainConfig", "correction_step", "train_on_device"]


@dataclass(frozen=True)
class DeviceTrainConfig:
    """Settings of :func:`train_on_device` (times in seconds).

    Attributes:
        budget_s: training time in all, the batch-size probe included.
        probe_s: time spent timing the candidate batch sizes (their steps train too).
        batch_sizes: candidates; the one with the most samples per second is kept.
        lr: peak learning rate; warm-up over ``warmup_frac`` of the budget, then cosine to ``min_lr_ratio``.
        max_corrections: k (correction rounds without gradient) is uniform in 0..max_corrections.
        dt_click_prob: probability that a correction click goes to the most interior error voxel.
        box_prob: probability that the first prompt is the target's box instead of a click.
        batch_augment: spatial and intensity augmentation (:func:`volsam.train.augment.augment_batch`).
        loss: :func:`volsam.train.losses.make_loss` name (``dicece``: plain Dice + CE).
        save_every_s: write the checkpoint this often, so a killed run still leaves weights.
    """

    budget_s: float = 480.0
    probe_s: float = 60.0
    batch_sizes: tuple[int, ...] = (16, 32, 64)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.03
    min_lr_ratio: float = 0.05
    max_grad_norm: float = 1.0
    max_corrections: int = 8
    dt_click_prob: float = 0.5
    box_prob: float = 0.15
    batch_augment: bool = True
    loss: str = "dicece"
    amp: bool = True
    seed: int = 0
    save_every_s: float = 60.0
    log_every: int = 20

    def __post_init__(self) -> None:
        if not self.budget_s > 0 or not 0 <= self.probe_s < self.budget_s:
            raise ValueError(f"need budget_s > 0 and 0 <= probe_s < budget_s, got {self.budget_s}, {self.probe_s}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be positive integers, got {self.batch_sizes}")
        if self.max_corrections < 0:
            raise ValueError(f"max_corrections must be >= 0, got {self.max_corrections}")


def correction_step(
    model: FusionSeg3D,
    image: torch.Tensor,
    target: torch.Tensor,
    k: int,
    cfg: DeviceTrainConfig,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    generator: torch.Generator,
) -> torch.Tensor:
    """The correction recipe (:func:`volsam.train.tasks.correction_rounds`) on one batch, every prompt
    simulated on the device (:mod:`volsam.train.prompt_sim`).

    Args:
        model: an early-fusion model.
        image: [B, 1, S, S, S] normalised windows.
        target: [B, 1, S, S, S] 0/1 targets (each non-empty).
        k: correction rounds run without gradient before the trained round.
        cfg: click and prompt settings.
        loss_fn: loss of [B, 1, S, S, S] logits against ``target``.
        generator: on the device.

    Returns:
        The trained round's loss (a graph to backpropagate).
    """
    b, dev = image.shape[0], image.device
    gt = target[:, 0] > 0.5
    bidx = torch.arange(b, device=dev)
    use_box = torch.rand(b, generator=generator, device=dev) < cfg.box_prob
    dense = {"box_pos": box_channel(gt, generator) * use_box.view(b, 1, 1, 1, 1)} if bool(use_box.any()) else None
    first, _ = random_voxels(gt, generator)

    def next_clicks(pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        err = pred ^ gt
        idx, has = random_voxels(err, generator)
        centre = torch.rand(b, generator=generator, device=dev) < cfg.dt_click_prob
        if bool(centre.any()):
            idx = torch.where(centre[:, None], interior_voxels(err, generator), idx)
        positive = gt[bidx, idx[:, 0], idx[:, 1], idx[:, 2]]
        return idx, torch.where(has, positive.long(), -1)

    return correction_rounds(
        model, image, target, k, (first, torch.where(use_box, -1, 1)), next_clicks, loss_fn, cfg.amp, dense
    )


def _lr_at(frac: float, cfg: DeviceTrainConfig) -> float:
    if frac < cfg.warmup_frac:
        return cfg.lr * max(frac / cfg.warmup_frac, 0.01)
    t = min((frac - cfg.warmup_frac) / max(1.0 - cfg.warmup_frac, 1e-9), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t)))


def _save(model: torch.nn.Module, path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def train_on_device(
    model: FusionSeg3D,
    data: PackedVolumes,
    cfg: DeviceTrainConfig,
    out: str | Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``model`` (on ``data.device``) for ``cfg.budget_s`` seconds; write ``out/final.safetensors``
    (the model's state dict, fp32) and ``out/train_log.jsonl``.

    Returns:
        A summary: chosen batch size, probe timings (s per step and samples per second per batch size),
        steps, samples, seconds, last losses.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = data.device
    model.to(dev).train()
    gen = torch.Generator().manual_seed(cfg.seed)
    dgen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    loss_fn = make_loss(cfg.loss)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    logf = open(out / "train_log.jsonl", "a", encoding="utf-8")
    meta = {"model": "volsam_fusion", "recipe": json.dumps(asdict(cfg))}
    t0 = time.perf_counter()
    step, samples, last_save = 0, 0, t0
    losses: list[float] = []

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def one_step(batch: int, k: int) -> float:
        nonlocal step, samples
        frac = (time.perf_counter() - t0) / cfg.budget_s
        lr = _lr_at(frac, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        b = data.sample(batch, gen, dgen)
        image, target = b.image, b.target
        if cfg.batch_augment:
            image, target = augment_batch(image, target, gen, noise_generator=dgen)
        loss = correction_step(model, image, target, k, cfg, loss_fn, dgen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        step += 1
        samples += batch
        value = float(loss.detach())
        losses.append(value)
        if step % cfg.log_every == 0:
            rec = {"step": step, "t": round(time.perf_counter() - t0, 2), "batch": batch, "k": k, "lr": lr,
                   "loss": round(sum(losses[-cfg.log_every:]) / cfg.log_every, 5)}
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
        return value

    probe: dict[int, dict[str, float]] = {}
    try:
        per_size = cfg.probe_s / len(cfg.batch_sizes)
        for bs in cfg.batch_sizes:
            kgen = torch.Generator().manual_seed(cfg.seed + 7)  # same k sequence for every candidate
            try:
                for _ in range(2):  # warm-up: kernels chosen, memory allocated
                    one_step(bs, int(torch.randint(cfg.max_corrections + 1, (1,), generator=kgen)))
                sync()
                start, n = time.perf_counter(), 0
                while n < 3 or (time.perf_counter() - start < per_size and n < 50):
                    one_step(bs, int(torch.randint(cfg.max_corrections + 1, (1,), generator=kgen)))
                    n += 1
                    sync()
                dt = (time.perf_counter() - start) / n
                probe[bs] = {"s_per_step": dt, "samples_per_s": bs / dt, "steps": n}
                log(f"probe batch {bs}: {dt * 1000:.0f} ms/step, {bs / dt:.1f} samples/s ({n} steps)")
            except torch.cuda.OutOfMemoryError:
                opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                log(f"probe batch {bs}: out of memory")
        if not probe:
            raise RuntimeError(f"no batch size of {cfg.batch_sizes} fits on {dev}")
        best = max(probe, key=lambda b: probe[b]["samples_per_s"])
        log(f"training at batch {best} until {cfg.budget_s:.0f} s")
        while time.perf_counter() - t0 < cfg.budget_s:
            one_step(best, int(torch.randint(cfg.max_corrections + 1, (1,), generator=gen)))
            if time.perf_counter() - last_save > cfg.save_every_s:
                _save(model, out / "final.safetensors", meta)
                last_save = time.perf_counter()
                log(f"step {step} ({time.perf_counter() - t0:.0f} s): loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    finally:
        logf.close()
    sync()
    _save(model, out / "final.safetensors", meta)
    summary = {
        "batch_size": best,
        "probe": {str(k): v for k, v in probe.items()},
        "steps": step,
        "samples": samples,
        "seconds": round(time.perf_counter() - t0, 1),
        "loss_last_100": sum(losses[-100:]) / len(losses[-100:]),
        "device": str(dev),
        "data": data.describe(),
        "config": asdict(cfg),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
