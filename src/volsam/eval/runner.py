"""Evaluation runner: simulated-click protocols over a dataset, metrics after every prompt, reports.

:func:`evaluate` segments every target of every case of a dataset with a :class:`~volsam.session.Session`,
prompted by a click simulator from :mod:`volsam.prompts`, and scores the prediction after each prompt
with :mod:`volsam.eval.metrics`. Reports are written by :mod:`volsam.eval.report`.

Protocols (``N = clicks``):

``sam_med3d`` (steps ``1 .. N``)
    Step 1: a positive click on a uniform random voxel of the target (``first_click(mode="random")``).
    Steps 2..N: SAM-Med3D's ``random`` protocol (uniform random voxel of FN ∪ FP; FN -> positive,
    FP -> negative). Every click is a refinement (the Session keeps all clicks and the previous low-res
    logits). Metrics: Dice, NSD at 1 mm, HD95 (mm).
``cvpr25`` (steps ``0 .. N``)
    Step 0: the CVPR 2025 challenge box (``cvpr25_box``, randomly enlarged as in the challenge) given
    as ``Session.add_box``. Steps 1..N: the challenge click (largest 26-connected error component,
    maximum EDT, voxel units). Metrics: Dice, NSD at 2 mm (area-weighted surface elements as the
    challenge's ``surface-distance`` code, set to 0 when DSC <= 0.2), HD95; per target DSC_AUC and
    NSD_AUC over the N click steps and the final DSC/NSD (:func:`~volsam.eval.metrics.cvpr25_summary`).

Challenge cases (a folder of CVPR 2025 ``.npz`` files, :mod:`volsam.challenge`): the box of step 0 is the
one in the file, not a drawn one; a file without ``boxes`` skips the box step (scored 0, kind ``"none"``)
as the challenge does. ``Summary.cases[i]["cvpr25"]`` and ``overall["cvpr25_cases"]`` give the challenge's
own per-case scores: per step, DSC averaged over the case's classes, NSD averaged when that mean DSC > 0.2
(:func:`~volsam.eval.metrics.cvpr25_case_scores`). Two differences remain: each class is segmented as its
own binary object (the challenge scores one multi-class label map, where classes compete for voxels), and
a class whose own DSC <= 0.2 enters the NSD mean as 0 (its NSD is not computed).

Early stop: when a simulator returns None (the prediction equals the target: nothing to correct), the
remaining steps repeat the last metrics with click kind ``"none"``, so every target has the same steps.

Absent targets: a target with no foreground in a case (e.g. a named dataset.json label missing from
that case) gets no rows; :attr:`Summary.absent` lists it. A case that cannot be evaluated at all
(unreadable file, image and label grids differ, no foreground: :func:`~volsam.eval.datasets.validate_case`)
is skipped with the reason in :attr:`Summary.skipped`, and the run goes on.

Grid: metrics are computed on the image's original grid with its true spacing, after the Session's
paste-back. With ``window_metrics=True`` the Dice inside the first 128^3 window (the ground truth
resampled into it with nearest neighbour, against the window's own mask before any box restriction)
is reported too, as the SAM-Med3D paper measured it.

Reproducibility: each (case, target) has its own ``np.random.default_rng`` seeded from ``seed`` and
``zlib.crc32`` of the case name, target value and name, so serial and parallel runs draw the same
clicks. A registered model name with ``random_weights=True`` gets random weights drawn under
``torch.manual_seed(seed)`` in the calling process, the same in every worker.

Parallel runs (``workers > 1``) evaluate cases in a spawn-context process pool; each worker builds one
Session (the model is shared with the workers, CPU tensors through shared memory) and uses
``cores // workers`` torch threads. Results are ordered as in a serial run and are identical to a
serial run made with the same torch thread count: the model's float reductions depend on the thread
count, so with another count a voxel whose logit is ~0 may occasionally flip.
"""

from __future__ import annotations

import math
import os
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from scipy import ndimage

from volsam.eval.datasets import Case, Target, load_dataset, load_target_mask, resolve_targets, validate_case
from volsam.eval.metrics import (
    CVPR25_DSC_THRESHOLD,
    CVPR25_NSD_TOLERANCE_MM,
    case_metrics,
    cvpr25_case_scores,
    cvpr25_nsd,
    cvpr25_summary,
    dice,
    hd95,
    nsd,
)
from volsam.eval.report import CaseResult, StepRecord, Summary, TargetResult, TargetView
from volsam.io import Volume, read_image
from volsam.prompts import cvpr25_box, first_click, simulate_click
from volsam.transforms import Window, extract_window

if TYPE_CHECKING:
    from volsam.modeling import Sam3D

__all__ = [
    "PROTOCOLS",
    "CaseResult",
    "SessionLike",
    "StepRecord",
    "Summary",
    "TargetResult",
    "TargetView",
    "evaluate",
    "target_rng",
]

PROTOCOLS: tuple[str, ...] = ("sam_med3d", "cvpr25")
"""Protocols :func:`evaluate` accepts."""

_DEFAULT_NSD_MM = {"sam_med3d": 1.0, "cvpr25": CVPR25_NSD_TOLERANCE_MM}


class SessionLike(Protocol):
    """What the runner needs from a :class:`~volsam.session.Session` (tests inject fakes).

    ``timings`` is optional: when present, its ``encode_ms`` is read after every prompt.
    """

    def set_image(self, image: Volume) -> None: ...

    def reset(self) -> None: ...

    def add_click(self, point: tuple[float, float, float], positive: bool = True) -> np.ndarray: ...

    def add_box(self, lo: tuple[float, float, float], hi: tuple[float, float, float]) -> np.ndarray: ...


SessionFactory = Callable[[], SessionLike]


@dataclass(frozen=True)
class _Config:
    protocol: str
    clicks: int
    seed: int
    nsd_tolerance_mm: float
    window_metrics: bool


# --------------------------------------------------------------------------------------------------
# seeds, models, sessions


def target_rng(seed: int, case: str, target: Target) -> np.random.Generator:
    """The generator of one (case, target): seeded by ``seed`` and a CRC32 of case name, value and name."""
    key = zlib.crc32(f"{case}\x00{target.value}\x00{target.name}".encode())
    return np.random.default_rng([seed, key])


@dataclass(frozen=True)
class _SessionFactory:
    """Picklable: builds a Session around an already resolved model."""

    model: Any  # Sam3D
    device: str | None
    clip: tuple[float, float] | None

    def __call__(self) -> SessionLike:
        from volsam.session import Session

        return Session(self.model, self.device, clip=self.clip)


def _resolve_model(
    model: Any,
    seed: int,
    device: str | None,
    decoder_checkpoint: str | Path | None,
    trust_checkpoint: bool,
    attention_backend: str | None = None,
    random_weights: bool = False,
) -> Any:
    """A Sam3D from a name (with ``random_weights``: drawn under ``torch.manual_seed(seed)``), path or
    instance."""
    from volsam.registry import list_models
    from volsam.session import resolve_model

    if random_weights and isinstance(model, str) and model in list_models():
        from volsam.registry import build_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(model)
    return resolve_model(
        model,
        device,
        decoder_checkpoint=decoder_checkpoint,
        trust_checkpoint=trust_checkpoint,
        attention_backend=attention_backend,
    )


def _model_label(model: Any) -> str:
    if model is None:
        return "default"
    if isinstance(model, str | Path):
        return str(model)
    return type(model).__name__


def _first_window(session: SessionLike) -> tuple[Window, np.ndarray] | None:
    """The current object's first window and its (size,)^3 bool mask; None for sessions without windows
    (test fakes) or before any prediction."""
    windows = getattr(session, "windows", None)
    return windows[0] if windows else None


# --------------------------------------------------------------------------------------------------
# one target, one case


def _metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], cfg: _Config) -> tuple[float, float, float]:
    """(dice, nsd, hd95) of the prediction on the original grid."""
    if cfg.protocol == "cvpr25":
        d = dice(pred, gt)
        # the challenge's NSD is 0 at DSC <= 0.2: skip computing it there
        n = nsd(pred, gt, spacing, cfg.nsd_tolerance_mm, use_subvoxels=True) if d > CVPR25_DSC_THRESHOLD else 0.0
        return d, cvpr25_nsd(d, n), hd95(pred, gt, spacing)
    m = case_metrics(pred, gt, spacing, cfg.nsd_tolerance_mm)
    return m["dice"], m["nsd"], m["hd95"]


def target_view(case: str, target: str, vol: Volume, gt: np.ndarray, pred: np.ndarray, d: float) -> TargetView:
    """Slices of image, truth and prediction through the truth's centroid (for figures)."""
    c = tuple(round(float(x)) for x in ndimage.center_of_mass(gt))
    ci, cj, ck = (min(max(x, 0), n - 1) for x, n in zip(c, gt.shape, strict=True))
    img = np.asarray(vol.array, dtype=np.float32)

    def cut(a: np.ndarray, dtype: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.array(a[ci, :, :], dtype=dtype),
            np.array(a[:, cj, :], dtype=dtype),
            np.array(a[:, :, ck], dtype=dtype),
        )

    return TargetView(case, target, d, (ci, cj, ck), vol.spacing, cut(img, np.float32), cut(gt, bool), cut(pred, bool))


def _run_target(
    session: SessionLike,
    vol: Volume,
    gt: np.ndarray,
    case: str,
    target: Target,
    cfg: _Config,
    box: tuple[tuple[int, int, int], tuple[int, int, int]] | str = "simulate",
) -> tuple[list[StepRecord], np.ndarray]:
    """Prompt one target through every step; returns the records and the final prediction (uint8).

    ``box`` (cvpr25): ``"simulate"`` draws the challenge box from the target; inclusive corners ``(lo, hi)``
    are a box given by the case file; ``"skip"`` is a case file without boxes: as in the challenge, the box
    step scores 0 (kind ``"none"``) and the clicks start from an empty prediction."""
    session.reset()
    rng = target_rng(cfg.seed, case, target)
    spacing = vol.spacing
    steps = range(0, cfg.clicks + 1) if cfg.protocol == "cvpr25" else range(1, cfg.clicks + 1)
    pred = np.zeros(gt.shape, dtype=np.uint8)
    records: list[StepRecord] = []
    window_gt: tuple[Window, np.ndarray] | None = None
    for step in steps:
        if cfg.protocol == "cvpr25" and step == 0 and box == "skip":
            wd0 = math.nan if cfg.window_metrics else None
            records.append(
                StepRecord(case, target.value, target.name, 0, "none", (), 0.0, 0.0, math.inf, 0.0, 0.0, wd0)
            )
            continue
        if cfg.protocol == "cvpr25" and step == 0:
            if isinstance(box, str):
                drawn = cvpr25_box(gt, rng)
                assert drawn is not None  # gt has foreground
                lo, hi = drawn.lo, drawn.hi
            else:
                lo, hi = box
            kind, voxel = "box", (*lo, *hi)
            t0 = time.perf_counter()
            pred = session.add_box(tuple(float(x) for x in lo), tuple(float(x) for x in hi))
        else:
            if cfg.protocol == "sam_med3d":
                click = first_click(gt, rng, "random") if step == 1 else simulate_click("random", pred, gt, rng)
            else:
                click = simulate_click("cvpr25", pred, gt, rng)
            if click is None:  # nothing left to correct: repeat the last metrics for the remaining steps
                last = records[-1]
                records += [
                    replace(last, step=s, kind="none", voxel=(), click_ms=0.0, encode_ms=0.0)
                    for s in steps
                    if s >= step
                ]
                break
            kind, voxel = ("positive" if click.positive else "negative"), click.voxel
            t0 = time.perf_counter()
            pred = session.add_click(click.point, positive=click.positive)
        click_ms = (time.perf_counter() - t0) * 1e3
        timings = getattr(session, "timings", None)
        encode_ms = float(getattr(timings, "encode_ms", 0.0))
        d, n, h = _metrics(pred, gt, spacing, cfg)
        wd = None
        if cfg.window_metrics:
            win = _first_window(session)
            if win is None:
                wd = math.nan
            else:
                if window_gt is None or window_gt[0] != win[0]:
                    window_gt = (win[0], extract_window(gt.view(np.uint8), vol.affine, win[0], order=0) > 0.5)
                wd = dice(win[1], window_gt[1])
        vox = tuple(int(v) for v in voxel)
        records.append(StepRecord(case, target.value, target.name, step, kind, vox, d, n, h, click_ms, encode_ms, wd))
    return records, np.asarray(pred)


def _run_case(
    session: SessionLike, index: int, case: Case, cfg: _Config, tick: Callable[[float], None] | None = None
) -> CaseResult:
    """Evaluate every target of one case with one image set (embeddings cached across targets).

    ``tick(fraction)`` is called after each target with its share of the case (for progress bars).
    """
    t_case = time.perf_counter()
    out = CaseResult(index, case.name)
    reason = validate_case(case)
    boxes: dict[int, Any] | None = None  # boxes given by a challenge case file, by label value
    if reason is None:
        try:
            if _is_challenge_case(case):
                from volsam.challenge import eval_inputs

                vol, label, boxes = eval_inputs(case.image)
                boxes = boxes if boxes is not None else {}  # {}: the file has no boxes
            else:
                vol = read_image(case.image)
                label = read_image(case.label, dtype=None).array
            targets = resolve_targets(case, label)
        except (OSError, ValueError) as e:
            reason = f"unreadable: {' '.join(str(e).split())}"
    if reason is not None:
        out.skipped = reason
        return out
    session.set_image(vol)
    for ti, target in enumerate(targets):
        gt = load_target_mask(case, target, label)
        if not gt.any():
            out.absent.append(target.name)
            continue
        gt = np.ascontiguousarray(gt, dtype=bool)
        box = "simulate" if boxes is None else boxes.get(target.value, "skip")
        records, pred = _run_target(session, vol, gt, case.name, target, cfg, box)
        out.encode_ms += sum(r.encode_ms for r in records)
        view = target_view(case.name, target.name, vol, gt, pred, records[-1].dice)
        out.targets.append(TargetResult(index, ti, case.name, target, records, view))
        if tick is not None:
            tick(1.0 / len(targets))
    out.seconds = time.perf_counter() - t_case
    return out


def _is_challenge_case(case: Case) -> bool:
    """A CVPR 2025 challenge ``.npz`` (image, label and boxes in one file; :mod:`volsam.challenge`)."""
    return case.image.name.endswith(".npz")


def _case_cvpr25(case: CaseResult, clicks: int) -> dict[str, float] | None:
    """The challenge's per-case scores (classes averaged per step, :func:`cvpr25_case_scores`)."""
    if not case.targets:
        return None
    return cvpr25_case_scores(
        [[s.dice for s in t.steps] for t in case.targets], [[s.nsd for s in t.steps] for t in case.targets], clicks
    )


# --------------------------------------------------------------------------------------------------
# worker processes

_WORKER: dict[str, Any] = {}  # the Session of this worker process, set by _init_worker


def _init_worker(factory: SessionFactory, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["session"] = factory()


def _worker_case(index: int, case: Case, cfg: _Config) -> CaseResult:
    return _run_case(_WORKER["session"], index, case, cfg)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------
# aggregation


def _mean(values: Sequence[float], finite_only: bool = False) -> float | None:
    v = [float(x) for x in values if x is not None and (math.isfinite(x) or not finite_only)]
    v = [x for x in v if not math.isnan(x)]
    return float(np.mean(v)) if v else None


def _aggregate(results: Sequence[TargetResult], cfg: _Config) -> dict[str, Any]:
    """Per-step means over ``results`` (all with the same steps) and, for cvpr25, mean challenge scores."""
    agg: dict[str, Any] = {"n": len(results)}
    if not results:
        return agg
    n_steps = len(results[0].steps)
    for key in ("dice", "nsd", "hd95") + (("window_dice",) if cfg.window_metrics else ()):
        agg[key] = [
            _mean([getattr(r.steps[s], key) for r in results], finite_only=key == "hd95") for s in range(n_steps)
        ]
    if cfg.protocol == "cvpr25":
        scores = [cvpr25_summary([s.dice for s in r.steps], [s.nsd for s in r.steps], cfg.clicks) for r in results]
        agg["cvpr25"] = {k: _mean([s[k] for s in scores]) for k in ("DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final")}
    return agg


class _Extremes:
    """Keeps the views of the highest and lowest final Dice seen (ties: the first in case/target order),
    dropping every other view so that memory stays bounded; the outcome does not depend on arrival order."""

    def __init__(self) -> None:
        self.best: tuple[tuple[float, int, int], TargetView] | None = None
        self.worst: tuple[tuple[float, int, int], TargetView] | None = None

    def add(self, case: CaseResult) -> None:
        for r in case.targets:
            if r.view is None:
                continue
            hi = (r.final_dice, -r.case_index, -r.target_index)
            lo = (r.final_dice, r.case_index, r.target_index)
            if self.best is None or hi > self.best[0]:
                self.best = (hi, r.view)
            if self.worst is None or lo < self.worst[0]:
                self.worst = (lo, r.view)
            r.view = None


# --------------------------------------------------------------------------------------------------
# entry point


def evaluate(
    data: str | Path | Sequence[Case],
    model: str | Path | Sam3D | None,
    protocol: str,
    clicks: int,
    out_dir: str | Path,
    *,
    labels: Sequence[str | int] | None = None,
    workers: int = 1,
    seed: int = 0,
    nsd_tolerance_mm: float | None = None,
    window_metrics: bool = False,
    clip: tuple[float, float] | None = None,
    device: str | None = None,
    progress: bool = True,
    decoder_checkpoint: str | Path | None = None,
    trust_checkpoint: bool = False,
    session_factory: SessionFactory | None = None,
    write: bool = True,
    memory: str | Path | None = None,
    attention_backend: str | None = None,
    random_weights: bool = False,
) -> Summary:
    """Run a simulated-click protocol over a dataset and write the reports (see the module docstring).

    Args:
        data: anything :func:`~volsam.eval.datasets.load_dataset` accepts, or a list of cases.
        model: checkpoint path, built Sam3D, None for the shipped default, or a registered name (the
            default model's bundled weights; others need ``random_weights``, seeded by ``seed``).
        protocol: ``"sam_med3d"`` or ``"cvpr25"``.
        clicks: clicks per target (after the box for cvpr25), >= 1.
        out_dir: report folder (created; existing reports are replaced atomically).
        labels: targets to keep, by name or value (``load_dataset``'s ``labels``).
        workers: processes; > 1 evaluates cases in parallel with identical results.
        seed: base seed of the per-target click generators (>= 0).
        nsd_tolerance_mm: NSD tolerance; None = 1 mm (sam_med3d) or 2 mm (cvpr25).
        window_metrics: also report Dice inside the first 128^3 window.
        clip: intensity clip before normalisation (e.g. (-1000, 1000) for CT).
        device: torch device; None = CUDA when available.
        progress: show a progress bar with ETA on stderr.
        decoder_checkpoint, trust_checkpoint: as for :class:`~volsam.session.Session`.
        session_factory: zero-argument callable returning a Session-like object, used instead of
            building a Session from ``model`` (picklable when ``workers > 1``); for tests.
        write: write the report files (``Summary.files``).
        memory: Memorizing-SAM memory file attached to the model (:func:`volsam.memory.use_memory`).
        attention_backend: ``"dense"`` or ``"dilated"`` encoder attention (same weights); None: the model's.
        random_weights: a registered name builds random weights (tests, benchmarks) instead of being refused.

    Raises:
        ValueError: bad protocol, clicks, workers, seed or labels; FileNotFoundError: no such dataset.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if int(clicks) < 1:
        raise ValueError(f"clicks must be >= 1, got {clicks}")
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    tol = _DEFAULT_NSD_MM[protocol] if nsd_tolerance_mm is None else float(nsd_tolerance_mm)
    if not tol >= 0:
        raise ValueError(f"nsd_tolerance_mm must be >= 0, got {nsd_tolerance_mm}")
    cfg = _Config(protocol, int(clicks), int(seed), tol, bool(window_metrics))
    if isinstance(data, str | Path):
        cases = load_dataset(data, labels)
        data_label = str(data)
    else:
        cases = list(data)
        data_label = f"{len(cases)} case(s)"
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError("case names must be unique")

    injected = session_factory is not None
    if session_factory is None:
        net = _resolve_model(
            model,
            cfg.seed,
            None if workers > 1 else device,
            decoder_checkpoint,
            trust_checkpoint,
            attention_backend,
            random_weights,
        )
        if memory is not None:
            from volsam.memory import use_memory

            use_memory(net, memory)
        session_factory = _SessionFactory(net, device, tuple(clip) if clip is not None else None)

    case_results, best, worst = _run_all(cases, cfg, session_factory, int(workers), progress)

    results = [t for c in case_results for t in c.targets]
    by_name: dict[str, list[TargetResult]] = {}
    for r in results:
        by_name.setdefault(r.target.name, []).append(r)
    per_target = {name: {"value": rs[0].target.value, **_aggregate(rs, cfg)} for name, rs in by_name.items()}
    steps = list(range(0, cfg.clicks + 1)) if protocol == "cvpr25" else list(range(1, cfg.clicks + 1))
    from volsam import __version__

    config = {
        "data": data_label,
        "model": "injected session" if injected and model is None else _model_label(model),
        "model_weights": _weights_label(model, injected, random_weights),
        "protocol": protocol,
        "clicks": cfg.clicks,
        "seed": cfg.seed,
        "labels": list(labels) if labels is not None else None,
        "grid": "original+window" if cfg.window_metrics else "original",
        "nsd_tolerance_mm": tol,
        "nsd_surface": "area-weighted (surface-distance)" if protocol == "cvpr25" else "voxel count",
        "clip": list(clip) if clip is not None else None,
        "device": device,
        "workers": int(workers),
        "volsam_version": __version__,
    }
    overall = _aggregate(results, cfg)
    if protocol == "cvpr25":
        # The challenge's leaderboard numbers: per-case scores (classes averaged per step), then the case mean.
        per_case = [sc for sc in (_case_cvpr25(c, cfg.clicks) for c in case_results if c.skipped is None) if sc]
        keys = ("DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final")
        overall["cvpr25_cases"] = {k: _mean([sc[k] for sc in per_case]) for k in keys} | {"n_cases": len(per_case)}
    summary = Summary(
        config=config,
        steps=steps,
        records=[s for r in results for s in r.steps],
        results=results,
        per_target=per_target,
        overall=overall,
        cases=[
            {
                "case": c.name,
                "targets": len(c.targets),
                "absent": c.absent,
                "encode_ms": c.encode_ms,
                "mean_click_ms": _mean([s.click_ms for t in c.targets for s in t.steps if s.kind != "none"]),
                "seconds": c.seconds,
                **({"cvpr25": _case_cvpr25(c, cfg.clicks)} if protocol == "cvpr25" else {}),
            }
            for c in case_results
            if c.skipped is None
        ],
        skipped=[(c.name, c.skipped) for c in case_results if c.skipped is not None],
        absent=[(c.name, a) for c in case_results for a in c.absent],
        best=best,
        worst=worst,
        out_dir=Path(out_dir),
    )
    if write:
        from volsam.eval.report import write_reports

        summary.files = write_reports(summary, out_dir)
    return summary


def _weights_label(model: Any, injected: bool, random_weights: bool = False) -> str:
    from volsam.registry import list_models

    if injected:
        return "injected session"
    if model is None:
        return "shipped default"
    if isinstance(model, str) and model in list_models():
        return "random, torch.manual_seed(seed)" if random_weights else "shipped default"
    return "checkpoint" if isinstance(model, str | Path) else "given instance"


def _run_all(
    cases: Sequence[Case], cfg: _Config, factory: SessionFactory, workers: int, show: bool
) -> tuple[list[CaseResult], TargetView | None, TargetView | None]:
    """Evaluate cases serially or in a process pool; results in case order, the best and worst views."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("cases"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not show,
    )
    out: list[CaseResult] = []
    extremes = _Extremes()
    with bar:
        task = bar.add_task(f"evaluate ({cfg.protocol})", total=len(cases))
        if workers == 1 or len(cases) <= 1:
            session = factory()
            for i, case in enumerate(cases):
                bar.update(task, description=case.name)
                out.append(_run_case(session, i, case, cfg, lambda f: bar.advance(task, f)))
                extremes.add(out[-1])
                bar.update(task, completed=i + 1)
        else:
            threads = max(1, _cores() // workers)
            with ProcessPoolExecutor(
                max_workers=min(workers, len(cases)),
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(factory, threads),
            ) as pool:
                futures = [pool.submit(_worker_case, i, case, cfg) for i, case in enumerate(cases)]
                for fut in as_completed(futures):
                    res = fut.result()
                    bar.update(task, description=res.name)
                    out.append(res)
                    extremes.add(res)
                    bar.advance(task)
    best = extremes.best[1] if extremes.best else None
    worst = extremes.worst[1] if extremes.worst else None
    return sorted(out, key=lambda c: c.index), best, worst
