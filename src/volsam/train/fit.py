"""The step engine shared by ``volsam train`` and the stages of ``volsam distill``: :func:`fit` runs one
phase of a training.

Optimisation: AdamW with two parameter groups (image encoder at ``encoder_lr``, the rest at ``lr``),
gradient accumulation, bf16 autocast on CUDA only (fp32 on CPU, where bf16 is ~100x slower), optional
gradient clipping. The global batch is ``batch_size * accum * world_size``; with ``torchrun`` each rank
takes its share of every global batch (:class:`volsam.train.sampler.StepSampler`) and
``DistributedDataParallel`` averages the gradients over ranks during the backward pass
(:func:`volsam.train.distributed.data_parallel_loss`), so N processes give the result of one process with
the same global batch. Every random draw (data, clicks, mask-only rounds) is a function of the seed and the
sample index or step, so a resumed run repeats the losses of an uninterrupted one exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from volsam.checkpoint import save_checkpoint
from volsam.train.config import TrainConfig
from volsam.train.data import TrainDataset
from volsam.train.distributed import _mean_over_ranks, data_parallel_loss, dist_info
from volsam.train.log import TrainLog
from volsam.train.sampler import StepSampler, make_loader
from volsam.train.state import rng_state, set_rng_state
from volsam.train.tasks import Task

__all__ = ["FitResult", "Phase", "fit"]


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
    loss_of = data_parallel_loss(task, device)  # under torchrun: DDP, which starts every rank from rank 0's weights
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
                loss, info = loss_of(batch, step)
                (loss / cfg.accum).backward()  # under DDP this also averages the gradients over ranks
                vals += [float(loss.detach()), info.get("loss_first", math.nan), info.get("loss_last", math.nan)]
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
