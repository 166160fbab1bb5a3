"""Reports of an evaluation run (:func:`volsam.eval.runner.evaluate`): CSV, JSON, Markdown and figures.

Files written into the output folder, each atomically (temporary file beside it, then ``os.replace``):

- ``per_click.csv``: one row per (case, target, step): ``case, target_value, target_name, step,
  click_kind, click_voxel, dice, nsd, hd95, click_ms, encode_ms`` (+ ``window_dice`` with window
  metrics). ``click_voxel`` is ``"i j k"`` for a click, ``"i0 j0 k0 i1 j1 k1"`` (inclusive corners) for
  a box, empty for ``none`` (nothing left to correct); hd95 is in mm (``inf`` for an empty prediction).
- ``summary.json``: config (data, model, protocol, clicks, seed, grid, NSD tolerance, volsam version),
  per-target and overall per-step means, cvpr25 scores, per-case timings, skipped cases with reasons.
- ``summary.md``: mean Dice per target and step, mean NSD row, cvpr25 scores, skipped cases.
- ``dice_vs_clicks.png``: mean Dice against step per target (and over all).
- ``best_case.png`` / ``worst_case.png``: three orthogonal slices through the centroid of the target
  with the highest / lowest final Dice: image, ground-truth contour, prediction overlay.

Figures use matplotlib's object API with the Agg canvas (no pyplot, no global backend change).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from volsam.atomic import atomic_path
from volsam.eval.datasets import Target

if TYPE_CHECKING:
    from matplotlib.figure import Figure


__all__ = [
    "CSV_COLUMNS",
    "CaseResult",
    "StepRecord",
    "Summary",
    "TargetResult",
    "TargetView",
    "markdown",
    "plot_dice_vs_clicks",
    "plot_view",
    "summary_dict",
    "write_reports",
]

CSV_COLUMNS: tuple[str, ...] = (
    "case",
    "target_value",
    "target_name",
    "step",
    "click_kind",
    "click_voxel",
    "dice",
    "nsd",
    "hd95",
    "click_ms",
    "encode_ms",
)
"""Columns of ``per_click.csv`` (``window_dice`` is appended when window metrics were measured)."""


# --------------------------------------------------------------------------------------------------
# what a run produced (the runner fills these; they live here so the dependency runs runner -> report)


@dataclass(frozen=True)
class StepRecord:
    """Metrics after one prompt (one row of ``per_click.csv``).

    Attributes:
        case, target_value, target_name: what was segmented.
        step: 0 = the box (cvpr25), k = after k clicks.
        kind: ``"box"``, ``"positive"``, ``"negative"`` or ``"none"`` (nothing left to correct: the
            previous step's metrics repeated).
        voxel: click voxel ``(i, j, k)``; box corners ``(i0, j0, k0, i1, j1, k1)`` (inclusive); () for none.
        dice, nsd: in [0, 1], on the original grid. hd95: mm (inf when the prediction is empty).
        click_ms: wall time of the Session call (encoding included). encode_ms: encoding within it.
        window_dice: Dice inside the first 128^3 window (``window_metrics``), else None.
        zero_dice: baseline (``baselines``): Dice of the model's mask on an all-zero image of the same grid
            given the same prompts so far, else None.
        sphere_dice: baseline (``baselines``): Dice of a ball of the target's volume centred on the first
            prompt (the click, or the box's centre), the same at every step, else None.
    """

    case: str
    target_value: int
    target_name: str
    step: int
    kind: str
    voxel: tuple[int, ...]
    dice: float
    nsd: float
    hd95: float
    click_ms: float
    encode_ms: float
    window_dice: float | None = None
    zero_dice: float | None = None
    sphere_dice: float | None = None


@dataclass(frozen=True)
class TargetView:
    """Three orthogonal slices through a target's centroid, for the best/worst-case figures.

    ``image[a]``, ``gt[a]``, ``pred[a]`` are 2D slices at ``centroid[a]`` along volume axis ``a``
    (the other two axes kept in order); ``spacing`` in mm per volume axis.
    """

    case: str
    target_name: str
    dice: float
    centroid: tuple[int, int, int]
    spacing: tuple[float, float, float]
    image: tuple[np.ndarray, np.ndarray, np.ndarray]
    gt: tuple[np.ndarray, np.ndarray, np.ndarray]
    pred: tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class TargetResult:
    """All steps of one (case, target)."""

    case_index: int
    target_index: int
    case: str
    target: Target
    steps: list[StepRecord]
    view: TargetView | None = None

    @property
    def final_dice(self) -> float:
        return self.steps[-1].dice


@dataclass
class CaseResult:
    """One case: its targets' results, or why it was skipped; ``encode_ms`` summed over its prompts."""

    index: int
    name: str
    targets: list[TargetResult] = field(default_factory=list)
    skipped: str | None = None
    absent: list[str] = field(default_factory=list)
    encode_ms: float = 0.0
    seconds: float = 0.0


@dataclass
class Summary:
    """Result of :func:`~volsam.eval.runner.evaluate`.

    Attributes:
        config: the run's settings (as written to ``summary.json``).
        steps: step numbers (``[0..N]`` for cvpr25, ``[1..N]`` for sam_med3d).
        records: every step of every evaluated (case, target), in case then target order.
        results: per (case, target) steps, same order.
        per_target: target name -> aggregate (``n``; per-step means ``dice``, ``nsd``, ``hd95`` (finite
            values only; None when none is finite), ``window_dice`` when measured; ``cvpr25`` means).
        overall: the same aggregate over every (case, target).
        cases: per evaluated case: ``case``, ``targets``, ``encode_ms``, ``mean_click_ms``, ``seconds``.
        skipped: ``(case, reason)`` for cases not evaluated.
        absent: ``(case, target)`` pairs with no foreground (not evaluated).
        best, worst: slices of the targets with the highest / lowest final Dice.
        out_dir: where the reports are; files: report name -> path.
    """

    config: dict[str, Any]
    steps: list[int]
    records: list[StepRecord]
    results: list[TargetResult]
    per_target: dict[str, dict[str, Any]]
    overall: dict[str, Any]
    cases: list[dict[str, Any]]
    skipped: list[tuple[str, str]]
    absent: list[tuple[str, str]]
    best: TargetView | None
    worst: TargetView | None
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    def markdown(self) -> str:
        """The ``summary.md`` text: mean Dice per target and step, NSD row, cvpr25 scores, skips."""
        return markdown(self)


# --------------------------------------------------------------------------------------------------
# writing


def _atomic_write(path: Path, write: Callable[[IO[Any]], None], binary: bool = False) -> Path:
    """Write ``path`` through a temporary file in the same folder, then ``os.replace`` it into place."""
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb" if binary else "w", **({} if binary else {"newline": "", "encoding": "utf-8"})) as f,
    ):
        write(f)
    return path


def _num(x: float | None) -> str:
    """Full-precision float for the CSV (``inf``, ``nan``, empty for None)."""
    return "" if x is None else repr(float(x))


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats (not valid JSON) with None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _write_csv(summary: Summary, f: IO[str]) -> None:
    window = summary.config["grid"] != "original"
    base = bool(summary.config.get("baselines"))
    w = csv.writer(f)
    w.writerow((*CSV_COLUMNS, *(("window_dice",) if window else ()), *(("zero_dice", "sphere_dice") if base else ())))
    for r in summary.records:
        row = [
            r.case,
            r.target_value,
            r.target_name,
            r.step,
            r.kind,
            " ".join(str(v) for v in r.voxel),
            _num(r.dice),
            _num(r.nsd),
            _num(r.hd95),
            f"{r.click_ms:.2f}",
            f"{r.encode_ms:.2f}",
        ]
        if window:
            row.append(_num(r.window_dice))
        if base:
            row += [_num(r.zero_dice), _num(r.sphere_dice)]
        w.writerow(row)


def summary_dict(summary: Summary) -> dict[str, Any]:
    """The content of ``summary.json`` (JSON-safe: non-finite numbers become null)."""
    per_case = []
    for r in summary.results:
        entry: dict[str, Any] = {
            "case": r.case,
            "target": r.target.name,
            "value": r.target.value,
            "final_dice": r.steps[-1].dice,
            "final_nsd": r.steps[-1].nsd,
            "final_hd95": r.steps[-1].hd95,
        }
        per_case.append(entry)
    out = {
        "config": summary.config,
        "metrics_grid": _grid_text(summary),
        "steps": summary.steps,
        "per_target": summary.per_target,
        "overall": summary.overall,
        "results": per_case,
        "cases": summary.cases,
        "skipped": [{"case": c, "reason": why} for c, why in summary.skipped],
        "absent_targets": [{"case": c, "target": t} for c, t in summary.absent],
    }
    return _json_safe(out)


def write_reports(summary: Summary, out_dir: str | Path) -> dict[str, Path]:
    """Write every report into ``out_dir`` (created); returns report name -> path.

    The figures of the best and worst case are written only when at least one target was evaluated.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "per_click.csv": _atomic_write(out / "per_click.csv", lambda f: _write_csv(summary, f)),
        "summary.json": _atomic_write(
            out / "summary.json", lambda f: f.write(json.dumps(summary_dict(summary), indent=1) + "\n")
        ),
        "summary.md": _atomic_write(out / "summary.md", lambda f: f.write(markdown(summary))),
    }
    figures: dict[str, Figure | None] = {
        "dice_vs_clicks.png": plot_dice_vs_clicks(summary) if summary.results else None
    }
    figures["best_case.png"] = plot_view(summary.best, "best") if summary.best is not None else None
    figures["worst_case.png"] = plot_view(summary.worst, "worst") if summary.worst is not None else None
    for name, fig in figures.items():
        if fig is not None:
            data = _png(fig)
            files[name] = _atomic_write(out / name, lambda f, d=data: f.write(d), binary=True)
    return files


# --------------------------------------------------------------------------------------------------
# markdown


def _grid_text(summary: Summary) -> str:
    c = summary.config
    text = f"original image grid (true spacing), NSD at {c['nsd_tolerance_mm']:g} mm"
    if c["protocol"] == "cvpr25":
        text += " (0 when DSC <= 0.2)"
    if c["grid"] != "original":
        text += "; window Dice inside the first 128^3 window (1.5 mm)"
    return text


def _fmt(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _step_names(summary: Summary) -> list[str]:
    return ["box" if s == 0 else str(s) for s in summary.steps]


def markdown(summary: Summary) -> str:
    """Markdown report: mean Dice per target (rows) and step (columns), mean NSD, cvpr25 scores, skips."""
    c = summary.config
    n_cases = len(summary.cases)
    lines = [
        f"# volsam evaluate: {c['protocol']}, {c['clicks']} click(s)",
        "",
        f"Model `{c['model']}` ({c['model_weights']}), data `{c['data']}`: {n_cases} case(s), "
        f"{summary.overall.get('n', 0)} target instance(s), seed {c['seed']}. "
        f"Metrics on the {_grid_text(summary)}.",
        "",
    ]
    if summary.results:
        steps = _step_names(summary)
        lines += [
            "Mean Dice per step (columns: " + ("box, then clicks" if c["protocol"] == "cvpr25" else "clicks") + ")",
            "",
            "| target | n | " + " | ".join(steps) + " |",
            "|---|---:|" + "---:|" * len(steps),
        ]
        for name, agg in summary.per_target.items():
            lines.append(f"| {name} | {agg['n']} | " + " | ".join(_fmt(v) for v in agg["dice"]) + " |")
        ov = summary.overall
        lines.append(f"| **mean Dice** | {ov['n']} | " + " | ".join(_fmt(v) for v in ov["dice"]) + " |")
        tol = f"{c['nsd_tolerance_mm']:g} mm"
        lines.append(f"| **mean NSD ({tol})** | {ov['n']} | " + " | ".join(_fmt(v) for v in ov["nsd"]) + " |")
        if "window_dice" in ov:
            lines.append(
                f"| **mean Dice (128³ window)** | {ov['n']} | " + " | ".join(_fmt(v) for v in ov["window_dice"]) + " |"
            )
        if "zero_dice" in ov:
            lines.append(
                f"| *baseline: zero image, same prompts* | {ov['n']} | "
                + " | ".join(_fmt(v) for v in ov["zero_dice"]) + " |"
            )
            lines.append(
                f"| *baseline: sphere of the target's volume at the first prompt* | {ov['n']} | "
                + " | ".join(_fmt(v) for v in ov["sphere_dice"]) + " |"
            )
        if c["protocol"] == "cvpr25":
            keys = ("DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final")
            lines += [
                "",
                f"CVPR 2025 scores (AUC over the {c['clicks']} click steps; mean over cases)",
                "",
                "| target | n | " + " | ".join(keys) + " |",
                "|---|---:|" + "---:|" * len(keys),
            ]
            for name, agg in [*summary.per_target.items(), ("**all**", summary.overall)]:
                lines.append(f"| {name} | {agg['n']} | " + " | ".join(_fmt(agg["cvpr25"][k]) for k in keys) + " |")
            by_case = summary.overall.get("cvpr25_cases")
            if by_case:
                lines.append(
                    f"| **challenge (per case)** | {by_case['n_cases']} | "
                    + " | ".join(_fmt(by_case[k]) for k in keys)
                    + " |"
                )
    else:
        lines.append("No target was evaluated.")
    if summary.skipped:
        lines += ["", f"Skipped {len(summary.skipped)} case(s):", ""]
        lines += [f"- `{case}`: {why}" for case, why in summary.skipped]
    if summary.absent:
        lines += ["", f"Targets absent (no foreground, not evaluated): {len(summary.absent)}", ""]
        lines += [f"- `{case}`: {t}" for case, t in summary.absent]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# figures


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Render a figure to PNG at ``path`` atomically."""
    data = _png(fig)
    return _atomic_write(Path(path), lambda f: f.write(data), binary=True)


def plot_dice_vs_clicks(summary: Summary) -> Figure:
    """Mean Dice against step, one line per target plus the mean over all (dashed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.asarray(summary.steps)
    for name, agg in summary.per_target.items():
        y = np.array([np.nan if v is None else v for v in agg["dice"]], dtype=float)
        ax.plot(x, y, marker="o", markersize=3, linewidth=1.2, label=f"{name} (n={agg['n']})")
    ov = np.array([np.nan if v is None else v for v in summary.overall["dice"]], dtype=float)
    ax.plot(x, ov, color="black", linestyle="--", linewidth=2.2, label="mean")
    ax.set_xticks(x, _step_names(summary))
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("step (box, then clicks)" if summary.config["protocol"] == "cvpr25" else "clicks")
    ax.set_ylabel("Dice (original grid)")
    ax.set_title(f"{summary.config['model']}: {summary.config['protocol']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_view(view: TargetView, which: str = "") -> Figure:
    """Three orthogonal slices through the target centroid: image (grey), prediction (red), gt contour (green).

    Each panel shows the two remaining volume axes (first horizontal, second vertical, origin at the
    bottom left) with the aspect ratio of their true spacing.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.6))  # no layout engine: constrained layout doubles the drawing time
    axes = fig.subplots(1, 3, gridspec_kw={"left": 0.05, "right": 0.98, "bottom": 0.1, "top": 0.86, "wspace": 0.25})
    axis_names = "ijk"
    for a, ax in enumerate(axes):
        img, gt, pred = view.image[a].T, view.gt[a].T, view.pred[a].T
        u, v = (b for b in range(3) if b != a)
        finite = img[np.isfinite(img)]
        lo, hi = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
        ax.imshow(
            img,
            cmap="gray",
            vmin=lo,
            vmax=hi if hi > lo else lo + 1,
            origin="lower",
            aspect=view.spacing[v] / view.spacing[u],
            interpolation="nearest",
        )
        overlay = np.zeros((*pred.shape, 4), dtype=np.float32)
        overlay[pred] = (1.0, 0.15, 0.1, 0.45)
        ax.imshow(overlay, origin="lower", aspect=view.spacing[v] / view.spacing[u], interpolation="nearest")
        if gt.any() and not gt.all():
            ax.contour(gt.astype(np.float32), levels=[0.5], colors=["lime"], linewidths=1.2, origin="lower")
        ax.set_title(f"{axis_names[a]} = {view.centroid[a]}", fontsize="small")
        ax.set_xlabel(axis_names[u])
        ax.set_ylabel(axis_names[v])
        ax.tick_params(labelsize="x-small")
    label = f"{which} case: " if which else ""
    fig.suptitle(
        f"{label}{view.case} / {view.target_name}, final Dice {view.dice:.3f}  (green: truth, red: prediction)"
    )
    return fig
