"""Aggregation of an evaluation run's results: per-step means, the CVPR 2025 challenge's scores, and the
best and worst targets' views kept for the report's figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from volsam.eval.interaction import _Config
from volsam.eval.metrics import cvpr25_case_scores, cvpr25_summary
from volsam.eval.report import CaseResult, TargetResult, TargetView


def _case_cvpr25(case: CaseResult, clicks: int) -> dict[str, float] | None:
    """The challenge's per-case scores (classes averaged per step, :func:`cvpr25_case_scores`)."""
    if not case.targets:
        return None
    return cvpr25_case_scores(
        [[s.dice for s in t.steps] for t in case.targets], [[s.nsd for s in t.steps] for t in case.targets], clicks
    )


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
    keys = ("dice", "nsd", "hd95") + (("window_dice",) if cfg.window_metrics else ())
    for key in keys + (("zero_dice", "sphere_dice") if cfg.baselines else ()):
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
