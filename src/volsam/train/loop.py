"""Interactive training (SAM-Med3D's recipe) and ``volsam train``: :func:`train` and the command's glue.

The parts live in their own modules; their public names are importable from here too:

- :mod:`volsam.train.config`: :class:`TrainConfig`;
- :mod:`volsam.train.tasks`: the interaction recipes' losses and :class:`InteractiveTask`;
- :mod:`volsam.train.fit`: the step engine shared with distillation (:func:`fit`, :class:`Phase`);
- :mod:`volsam.train.validate`: validation Dice (:func:`evaluate`);
- :mod:`volsam.train.log`: ``train_log.csv`` (:class:`TrainLog`);
- :mod:`volsam.train.state`: RNG states and reading back ``latest.pt``;
- :mod:`volsam.train.distributed`: torchrun helpers.

Outputs in ``out_dir``: ``latest.pt`` (model + optimizer + step + RNG states, written atomically by
:func:`volsam.checkpoint.save_checkpoint` every ``save_every`` steps and at the end; loadable by
``volsam.build_model(name, checkpoint=...)``), ``final.pt`` (model only), ``train_log.csv`` and, when
TensorBoard is importable, event files in ``tb/``. A run whose ``out_dir`` holds ``latest.pt`` resumes it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from volsam.checkpoint import CheckpointError, save_checkpoint
from volsam.modeling import PromptableModel, Sam3D
from volsam.train.config import TrainConfig
from volsam.train.data import TrainDataset
from volsam.train.distributed import dist_info, init_distributed_from_env, resolve_device
from volsam.train.fit import FitResult, Phase, fit
from volsam.train.log import LOG_COLUMNS, TrainLog
from volsam.train.state import load_model_state, load_resume
from volsam.train.state import rng_state as rng_state
from volsam.train.state import set_rng_state as set_rng_state
from volsam.train.tasks import InteractiveTask, Task, interaction_loss, mask_only_round_set
from volsam.train.tasks import correction_loss as correction_loss
from volsam.train.validate import evaluate, make_validator

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
        spacings=getattr(args, "window_spacings", None),
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
        leak_click_prob=getattr(args, "leak_click_prob", 0.0),
        thick_slice_prob=getattr(args, "thick_slice_prob", 0.0),
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
