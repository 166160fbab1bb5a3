"""FastSAM3D's layer-wise progressive distillation of the image encoder, then decoder fine-tuning.

What the FastSAM3D paper describes (and its released code does not; see the reference notes), for a
teacher with T blocks and a student with S blocks:

Layer mapping (0-based). Student block ``i`` learns the output of teacher block
``m(i) = floor((i + 1) * T / S + 1/2) - 1``, i.e. ``round((i + 1) * T / S) - 1`` with halves rounded up:
the student's last block always matches the teacher's last block and the blocks in between are spread
evenly. 12 -> 6: ``m(i) = 2i + 1`` (1, 3, 5, 7, 9, 11; the paper's "layer 2i" counted from 1); equal
depths: ``m(i) = i``; a deeper student repeats teacher blocks. See :func:`layer_map`.

Initialisation. The patch embedding, the position embedding and the neck are copied from the teacher
when their shapes match, and then stay frozen during the encoder stages ("without training from
scratch"); the prompt encoder and mask decoder are copied too when they match. Parts that do not fit
(a narrower student) start from random initialisation and are trained.

Encoder stages ``k = 1..S``. Stage k trains student blocks ``1..k`` (0-based ``0..k-1``) on
``mean over i < k of MSE(P_i(student_i), teacher_m(i))`` where the features are the token grids
[B, G, G, G, C] after each block (:meth:`~volsam.modeling.image_encoder.ImageEncoderViT3D.forward_intermediates`
semantics; the teacher, frozen, runs only as deep as needed). ``P_i`` is the identity when the widths
match; for a narrower (or wider) student it is a learned linear projection ``Linear(C_s, C_t)`` per
student block (FitNets-style regressors), trained with the blocks and discarded afterwards. When the
neck could not be copied but its output has the teacher's shape, the last stage also trains it on
``MSE(neck_s, neck_t)`` (added to the block term).

Decoder stage. The student encoder is frozen and the prompt encoder + mask decoder are fine-tuned with
:mod:`volsam.train.tasks`' interaction rounds (a neck that could be neither copied nor distilled is
trained here too).

Every stage is a phase of :func:`volsam.train.fit.fit`: one ``latest.pt`` (student weights, optimizer,
phase, step, RNG states, projections) resumes the run at the exact step; ``student.pt`` holds the final
student, loadable by ``volsam.build_model(student_name, checkpoint=...)``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from volsam.checkpoint import CheckpointError, save_checkpoint
from volsam.modeling import Sam3D
from volsam.train.config import TrainConfig
from volsam.train.data import TrainDataset
from volsam.train.distributed import dist_info, resolve_device
from volsam.train.fit import FitResult, Phase, fit
from volsam.train.log import TrainLog
from volsam.train.state import load_model_state, load_resume
from volsam.train.tasks import InteractiveTask, _autocast
from volsam.train.validate import make_validator

__all__ = [
    "COPYABLE_PARTS",
    "DistillResult",
    "FeatureDistillTask",
    "copy_from_teacher",
    "distill",
    "feature_distances",
    "layer_map",
]

COPYABLE_PARTS: dict[str, str] = {
    "patch_embed": "image_encoder.patch_embed.",
    "pos_embed": "image_encoder.pos_embed",
    "neck": "image_encoder.neck.",
    "prompt_encoder": "prompt_encoder.",
    "mask_decoder": "mask_decoder.",
}
"""Parts copied from the teacher when every tensor's shape matches: name -> state_dict key prefix."""


def layer_map(teacher_depth: int, student_depth: int) -> list[int]:
    """Teacher block (0-based) learnt by each student block: ``floor((i + 1) * T / S + 1/2) - 1``.

    Examples: (12, 6) -> [1, 3, 5, 7, 9, 11]; (4, 4) -> [0, 1, 2, 3]; (12, 5) -> [1, 4, 6, 9, 11];
    (2, 4) -> [0, 0, 1, 1].
    """
    t, s = int(teacher_depth), int(student_depth)
    if t < 1 or s < 1:
        raise ValueError(f"depths must be >= 1, got teacher {t}, student {s}")
    return [min(t - 1, max(0, (2 * (i + 1) * t + s) // (2 * s) - 1)) for i in range(s)]


def copy_from_teacher(teacher: Sam3D, student: Sam3D) -> list[str]:
    """Copy each part of :data:`COPYABLE_PARTS` whose keys and shapes match; returns the copied names."""
    tsd, ssd = teacher.state_dict(), student.state_dict()
    copied = []
    for part, prefix in COPYABLE_PARTS.items():
        skeys = [k for k in ssd if k.startswith(prefix)]
        tkeys = [k for k in tsd if k.startswith(prefix)]
        if skeys and sorted(skeys) == sorted(tkeys) and all(ssd[k].shape == tsd[k].shape for k in skeys):
            with torch.no_grad():
                for k in skeys:
                    ssd[k].copy_(tsd[k])
            copied.append(part)
    return copied


def _make_projections(teacher: Sam3D, student: Sam3D) -> nn.ModuleList | None:
    ct, cs = teacher.image_encoder.cfg.embed_dim, student.image_encoder.cfg.embed_dim
    if ct == cs:
        return None
    return nn.ModuleList(nn.Linear(cs, ct) for _ in range(len(student.image_encoder.blocks)))


def _neck_shapes_match(teacher: Sam3D, student: Sam3D) -> bool:
    return teacher.image_encoder.cfg.out_chans == student.image_encoder.cfg.out_chans


@torch.no_grad()
def _teacher_features(
    teacher: Sam3D, x: torch.Tensor, wanted: set[int], with_neck: bool
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    enc = teacher.image_encoder
    t = enc.tokens(x)
    last = len(enc.blocks) - 1 if with_neck else max(wanted)
    feats = {}
    for j in range(last + 1):
        t = enc.blocks[j](t)
        if j in wanted:
            feats[j] = t
    neck = enc.neck(t.permute(0, 4, 1, 2, 3)) if with_neck else None
    return feats, neck


@torch.no_grad()
def feature_distances(
    teacher: Sam3D, student: Sam3D, images: torch.Tensor, mapping: Sequence[int], projections: nn.ModuleList | None
) -> list[float]:
    """MSE between each student block's (projected) tokens and its teacher block's tokens on ``images``."""
    feats, _ = _teacher_features(teacher, images, set(mapping), False)
    s = student.image_encoder.tokens(images)
    out = []
    for i, blk in enumerate(student.image_encoder.blocks):
        s = blk(s)
        f = projections[i](s) if projections is not None else s
        out.append(float(F.mse_loss(f.float(), feats[mapping[i]].float())))
    return out


class FeatureDistillTask:
    """Encoder stage ``stage`` (1-based): student blocks ``0..stage-1`` learn their teacher blocks.

    Args:
        teacher: frozen teacher.
        student: the student (blocks trained; copied embeddings frozen).
        stage: number of student blocks trained in this stage.
        mapping: :func:`layer_map` of the pair.
        projections: per-block ``Linear(C_s, C_t)`` or None when the widths match.
        train_embed: train patch and position embeddings (they were not copied).
        neck_term: add ``MSE(neck_s, neck_t)`` (the neck was not copied; only in the last stage).
        cfg: settings (``enc_lr`` is the stage's learning rate, ``amp``).
        device: where batches go.
    """

    def __init__(
        self,
        teacher: Sam3D,
        student: Sam3D,
        stage: int,
        mapping: Sequence[int],
        projections: nn.ModuleList | None,
        *,
        train_embed: bool,
        neck_term: bool,
        cfg: TrainConfig,
        device: torch.device,
    ) -> None:
        self.teacher, self.model, self.stage = teacher, student, int(stage)
        self.mapping = list(mapping)
        self.projections = projections
        self.neck_term = neck_term
        self.cfg, self.device = cfg, device
        enc = student.image_encoder
        for p in student.parameters():
            p.requires_grad_(False)
        for p in teacher.parameters():
            p.requires_grad_(False)
        train: list[nn.Parameter] = [p for blk in enc.blocks[: self.stage] for p in blk.parameters()]
        if train_embed:
            train += [*enc.patch_embed.parameters(), enc.pos_embed]
        if neck_term:
            train += list(enc.neck.parameters())
        if projections is not None:
            train += [p for proj in projections[: self.stage] for p in proj.parameters()]
        for p in train:
            p.requires_grad_(True)
        self._params = train

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": self._params, "lr": self.cfg.enc_lr, "name": "encoder"}]

    def trained_modules(self) -> list[nn.Module]:
        return [self.model] if self.projections is None else [self.model, self.projections]

    def train_mode(self) -> None:
        self.model.train()
        self.teacher.eval()

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["image"].to(self.device, non_blocking=True)
        wanted = set(self.mapping[: self.stage])
        with _autocast(self.device, self.cfg.amp):
            feats, tneck = _teacher_features(self.teacher, x, wanted, self.neck_term)
            enc = self.model.image_encoder
            s = enc.tokens(x)
            losses = []
            for i in range(self.stage):
                s = enc.blocks[i](s)
                f = self.projections[i](s) if self.projections is not None else s
                losses.append(F.mse_loss(f.float(), feats[self.mapping[i]].float()))
            loss = torch.stack(losses).mean()
            if self.neck_term:
                assert tneck is not None
                loss = loss + F.mse_loss(enc.neck(s.permute(0, 4, 1, 2, 3)).float(), tneck.float())
        return loss, {"loss_first": float(losses[0].detach()), "loss_last": float(losses[-1].detach())}

    def state(self) -> dict[str, Any]:
        return {"projections": self.projections.state_dict()} if self.projections is not None else {}

    def load_state(self, state: dict[str, Any]) -> None:
        if self.projections is not None and "projections" in state:
            self.projections.load_state_dict(state["projections"])


@dataclass
class DistillResult:
    """Layer mapping, copied parts, per-phase fit results and the probe feature distances.

    ``distances[k]``: per-student-block MSE to the teacher on a fixed probe window after ``k`` encoder
    stages (``k = 0``: after copying, before training); only for stages run in this call.
    """

    mapping: list[int]
    copied: list[str]
    phases: list[FitResult] = field(default_factory=list)
    distances: dict[int, list[float]] = field(default_factory=dict)
    checkpoint: Path | None = None


def distill(
    teacher: Sam3D,
    student: Sam3D,
    data: TrainDataset,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    steps_per_stage: int,
    decoder_steps: int | None = None,
    student_name: str = "",
    teacher_name: str = "",
    val_data: TrainDataset | None = None,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = None,
) -> DistillResult:
    """Distil ``teacher``'s encoder into ``student`` stage by stage, then fine-tune the student's decoder.

    Args:
        teacher: trained teacher (any depth/width).
        student: freshly built student (its parts are copied from the teacher where they fit).
        data: training windows.
        out_dir: ``latest.pt`` (resumed unless ``overwrite``), ``student.pt``, ``train_log.csv``.
        cfg: settings: ``enc_lr`` for the encoder stages, ``lr`` for the decoder stage, batch, rounds, ...
            (``steps``/``epochs`` are ignored).
        steps_per_stage: optimizer steps of each encoder stage.
        decoder_steps: steps of the decoder stage (default ``steps_per_stage``; 0 skips it).
        student_name, teacher_name: recorded in checkpoints (``student_name`` is checked on resume).
        val_data: validation windows for the decoder stage.
        overwrite: ignore an existing ``latest.pt``.
        echo: prints one-line messages.
    """
    out = Path(out_dir)
    rank, _ = dist_info()
    device = resolve_device(cfg.device)
    depth = len(student.image_encoder.blocks)
    mapping = layer_map(len(teacher.image_encoder.blocks), depth)
    copied = copy_from_teacher(teacher, student)
    projections = _make_projections(teacher, student)
    train_embed = not {"patch_embed", "pos_embed"} <= set(copied)
    neck_distilled = "neck" not in copied and _neck_shapes_match(teacher, student)
    dec_trainable = ["prompt_encoder", "mask_decoder"]
    if "neck" not in copied and not neck_distilled:
        dec_trainable.append("image_encoder.neck")
    phases = [Phase(f"stage_{k}", k - 1, steps_per_stage) for k in range(1, depth + 1)]
    dsteps = steps_per_stage if decoder_steps is None else decoder_steps
    if dsteps > 0:
        phases.append(Phase("decoder", depth, dsteps))

    resume = None if overwrite else load_resume(out / "latest.pt")
    if resume is not None:
        saved = str(resume.get("model_name", ""))
        if student_name and saved and saved != student_name:
            raise CheckpointError(
                f"{out / 'latest.pt'} is a checkpoint of {saved!r}, not {student_name!r}; "
                "use another --out or --overwrite"
            )
        if not str(resume.get("phase", "")).startswith(("stage_", "decoder")):
            raise CheckpointError(f"{out / 'latest.pt'} is not a `volsam distill` checkpoint; use another --out")
        load_model_state(student, resume["model_state_dict"], out / "latest.pt")
        if projections is not None and "projections" in resume.get("task_state", {}):
            projections.load_state_dict(resume["task_state"]["projections"])
        if echo and rank == 0:
            echo(f"resuming from {out / 'latest.pt'}: {resume['phase']} step {int(resume['step'])}")
    teacher.to(device).eval()
    student.to(device)
    if projections is not None:
        projections.to(device)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if echo:
            echo(
                f"layer map (student block -> teacher block, 0-based): {mapping}; copied from teacher: "
                f"{', '.join(copied) or 'nothing'}"
                + ("; learned projections for feature matching" if projections else "")
            )
    result = DistillResult(mapping, copied)
    resume_at = (int(resume["phase_index"]), int(resume["step"])) if resume is not None else None
    log = TrainLog(out, resume_at, enabled=rank == 0)
    probe = data.eval_item(0)["image"][None].to(device)
    extra = {"model_name": student_name, "teacher": teacher_name, "layer_map": mapping, "copied": copied}
    try:
        for phase in phases:
            if resume_at is not None and phase.index < resume_at[0]:
                continue
            this_resume = resume if resume_at is not None and phase.index == resume_at[0] else None
            if phase.name == "decoder":
                task: Any = InteractiveTask(student, cfg, device, trainable=dec_trainable)
                validate = make_validator(student, val_data, cfg, device)
            else:
                k = phase.index + 1
                if k == 1 and this_resume is None:
                    result.distances[0] = feature_distances(teacher, student, probe, mapping, projections)
                task = FeatureDistillTask(
                    teacher,
                    student,
                    k,
                    mapping,
                    projections,
                    train_embed=train_embed,
                    neck_term=neck_distilled and k == depth,
                    cfg=cfg,
                    device=device,
                )
                validate = None
            res = fit(
                task, data, cfg, out, phase, log=log, resume=this_resume, validate=validate, extra=extra, echo=echo
            )
            result.phases.append(res)
            if phase.name != "decoder":
                result.distances[phase.index + 1] = feature_distances(teacher, student, probe, mapping, projections)
                if echo and rank == 0:
                    d = result.distances[phase.index + 1]
                    echo(f"{phase.name}: feature MSE per block {[round(v, 4) for v in d]}")
    finally:
        log.close()
    for p in student.parameters():
        p.requires_grad_(True)
    if rank == 0:
        result.checkpoint = save_checkpoint(
            student, out / "student.pt", model_name=student_name, teacher=teacher_name, layer_map=mapping
        )
    return result


def _load_teacher(spec: str, decoder_checkpoint: str | None, trust: bool) -> tuple[Sam3D, str, bool]:
    """(teacher, its name, whether it has trained weights) from a checkpoint path or a registered name."""
    from volsam.checkpoint import read_state_dict
    from volsam.registry import build_model, list_models, load_checkpoint, matching_models

    path = Path(spec).expanduser()
    if path.is_file():
        sd = read_state_dict(path, trust_checkpoint=trust)
        fits = matching_models(sd)
        model = load_checkpoint(path, decoder_checkpoint=decoder_checkpoint, trust_checkpoint=trust)
        return model, (fits[0] if fits else str(path)), True
    if spec in list_models():
        return build_model(spec), spec, False
    raise ValueError(
        f"--teacher {spec!r} is neither a checkpoint file nor a registered model ({', '.join(list_models())})"
    )


def run_distill(args: argparse.Namespace) -> int:
    """``volsam distill``: inputs are checked before the first step."""
    from volsam.registry import build_model, list_models
    from volsam.train.distributed import init_distributed_from_env
    from volsam.train.loop import _echo, config_from_args, datasets_from_args

    created = init_distributed_from_env(args.device)
    try:
        args.steps, args.epochs = None, None
        cfg = config_from_args(args)
        if args.student not in list_models():
            raise ValueError(f"unknown student model {args.student!r}; expected one of {', '.join(list_models())}")
        if args.steps_per_stage < 1:
            raise ValueError(f"--steps-per-stage must be >= 1, got {args.steps_per_stage}")
        teacher, teacher_name, trained = _load_teacher(args.teacher, args.decoder_checkpoint, args.trust_checkpoint)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            student = build_model(args.student)
        data, val = datasets_from_args(args)
        rank, _ = dist_info()
        if rank == 0:
            if not trained:
                _echo(f"[yellow]warning:[/] teacher {teacher_name!r} has random weights (no checkpoint given)")
            _echo(f"distilling {teacher_name} -> {args.student} on {data.describe()}")
        result = distill(
            teacher,
            student,
            data,
            args.out,
            cfg,
            steps_per_stage=args.steps_per_stage,
            decoder_steps=args.decoder_steps,
            student_name=args.student,
            teacher_name=teacher_name,
            val_data=val,
            overwrite=args.overwrite,
            echo=_echo,
        )
        if rank == 0:
            _echo(f"done: student weights in {result.checkpoint}")
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
