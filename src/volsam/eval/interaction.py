"""One case, one target: the simulated interaction of an evaluation run and its metrics after every prompt.

:func:`_run_case` prompts every target of a case through a Session-like object (:class:`SessionLike`) with
a click simulator of :mod:`volsam.prompts`; the protocols, seeds and metrics are described in
:mod:`volsam.eval.runner`, which runs it over a dataset.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

from volsam.eval.datasets import Case, Target, load_target_mask, resolve_targets, validate_case
from volsam.eval.metrics import CVPR25_DSC_THRESHOLD, case_metrics, cvpr25_nsd, dice, hd95, nsd
from volsam.eval.report import CaseResult, StepRecord, TargetResult, TargetView
from volsam.io import Volume, read_image
from volsam.prompts import cvpr25_box, first_click, simulate_click
from volsam.transforms import Window, extract_window

__all__ = ["SessionFactory", "SessionLike", "sphere_mask", "target_rng", "target_view"]


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
    baselines: bool = False


def target_rng(seed: int, case: str, target: Target) -> np.random.Generator:
    """The generator of one (case, target): seeded by ``seed`` and a CRC32 of case name, value and name."""
    key = zlib.crc32(f"{case}\x00{target.value}\x00{target.name}".encode())
    return np.random.default_rng([seed, key])


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


def sphere_mask(
    shape: Sequence[int], centre: Sequence[float], volume_mm3: float, spacing: Sequence[float]
) -> np.ndarray:
    """Ball of ``volume_mm3`` centred on voxel ``centre`` of a grid with ``spacing`` mm: bool ``shape``."""
    r = (3.0 * volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)
    ijk = np.ogrid[tuple(slice(0, int(n)) for n in shape)]
    d2 = sum(((a - c) * sp) ** 2 for a, c, sp in zip(ijk, centre, spacing, strict=True))
    return np.asarray(d2 <= r * r)


def _with_baselines(
    records: list[StepRecord], zero: SessionLike, gt: np.ndarray, spacing: Sequence[float]
) -> list[StepRecord]:
    """``records`` with the two baselines filled in: the same prompts replayed on ``zero`` (a Session whose
    image is all zeros) and a ball of the target's volume at the first prompt."""
    zero.reset()
    first = next((r for r in records if r.kind != "none"), None)
    if first is None:
        return records
    v = first.voxel
    centre = [(v[a] + v[a + 3]) / 2.0 for a in range(3)] if first.kind == "box" else list(v)
    d_ball = dice(sphere_mask(gt.shape, centre, float(gt.sum()) * float(np.prod(spacing)), spacing), gt)
    d_zero = 0.0
    out: list[StepRecord] = []
    for r in records:
        if r.kind == "box":
            pred = zero.add_box(tuple(float(x) for x in r.voxel[:3]), tuple(float(x) for x in r.voxel[3:]))
            d_zero = dice(pred, gt)
        elif r.kind in ("positive", "negative"):
            pred = zero.add_click(tuple(float(x) for x in r.voxel), positive=r.kind == "positive")
            d_zero = dice(pred, gt)
        out.append(replace(r, zero_dice=d_zero, sphere_dice=d_ball))
    return out


def _run_case(
    session: SessionLike,
    index: int,
    case: Case,
    cfg: _Config,
    tick: Callable[[float], None] | None = None,
    zero: SessionLike | None = None,
) -> CaseResult:
    """Evaluate every target of one case with one image set (embeddings cached across targets).

    ``tick(fraction)`` is called after each target with its share of the case (for progress bars).
    ``zero``: a second session for the zero-image baseline (``cfg.baselines``).
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
    if cfg.baselines:
        if zero is None:
            raise ValueError("baselines need a second session for the zero image")
        zero.set_image(Volume(np.zeros(vol.shape, np.float32), vol.affine))
    for ti, target in enumerate(targets):
        gt = load_target_mask(case, target, label)
        if not gt.any():
            out.absent.append(target.name)
            continue
        gt = np.ascontiguousarray(gt, dtype=bool)
        box = "simulate" if boxes is None else boxes.get(target.value, "skip")
        records, pred = _run_target(session, vol, gt, case.name, target, cfg, box)
        if cfg.baselines:
            assert zero is not None
            records = _with_baselines(records, zero, gt, vol.spacing)
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
