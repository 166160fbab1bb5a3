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

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from volsam.eval.aggregate import _aggregate, _case_cvpr25, _Extremes, _mean
from volsam.eval.datasets import Case, load_dataset
from volsam.eval.interaction import SessionFactory, SessionLike, _Config, _run_case, target_rng
from volsam.eval.interaction import target_view as target_view
from volsam.eval.metrics import CVPR25_NSD_TOLERANCE_MM
from volsam.eval.report import CaseResult, StepRecord, Summary, TargetResult, TargetView

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


# --------------------------------------------------------------------------------------------------
# models, sessions


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
    from volsam.models import resolve_model
    from volsam.registry import list_models

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


# --------------------------------------------------------------------------------------------------
# worker processes

_WORKER: dict[str, Any] = {}  # the Session of this worker process, set by _init_worker


def _init_worker(factory: SessionFactory, threads: int, baselines: bool = False) -> None:
    torch.set_num_threads(threads)
    _WORKER["session"] = factory()
    _WORKER["zero"] = factory() if baselines else None


def _worker_case(index: int, case: Case, cfg: _Config) -> CaseResult:
    return _run_case(_WORKER["session"], index, case, cfg, zero=_WORKER["zero"])


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------
# aggregation


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
    baselines: bool = False,
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
        baselines: also score two baselines at every step (``StepRecord.zero_dice``, ``sphere_dice``): the
            same prompts on an all-zero image of the same grid (a second Session; doubles the run time),
            and a ball of the target's volume centred on the first prompt.

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
    cfg = _Config(protocol, int(clicks), int(seed), tol, bool(window_metrics), bool(baselines))
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
        "baselines": bool(baselines),
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
            zero = factory() if cfg.baselines else None
            for i, case in enumerate(cases):
                bar.update(task, description=case.name)
                out.append(_run_case(session, i, case, cfg, lambda f: bar.advance(task, f), zero))
                extremes.add(out[-1])
                bar.update(task, completed=i + 1)
        else:
            threads = max(1, _cores() // workers)
            with ProcessPoolExecutor(
                max_workers=min(workers, len(cases)),
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(factory, threads, cfg.baselines),
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
