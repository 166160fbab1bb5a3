"""The CVPR 2025 challenge loop on one synthetic case: wall time of each container-style run, per class.

Plays the evaluator (``CVPR25_iter_eval.py``) locally: step 1 gives the boxes, steps 2-6 add one click per
class at the centre of its largest error component (:func:`volsam.prompts.cvpr25_click`, array order
``[z, y, x]`` as the challenge stores them) with ``clicks_order`` and ``prev_pred``; every step runs
``python -m volsam challenge-predict`` in a fresh process, as ``sh predict.sh`` does in the container, so the
time includes interpreter start, imports and model loading. The challenge allows 90 s per class per run.

    python -m benchmarks.bench_challenge [--shape 160 384 384] [--classes 3] [--model NAME_OR_PATH] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _case(shape: tuple[int, int, int], classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image (D, H, W) with ``classes`` bright ellipsoids and its label map."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    zz, yy, xx = np.ogrid[:d, :h, :w]
    gts = np.zeros(shape, np.uint8)
    for c in range(1, classes + 1):
        cz, cy, cx = d * (0.3 + 0.4 * rng.random()), h * (0.2 + 0.6 * rng.random()), w * (0.2 + 0.6 * rng.random())
        rz, ry, rx = d * 0.08, h * 0.06, w * 0.06
        blob = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        gts[blob & (gts == 0)] = c
    imgs = np.clip(rng.normal(60, 15, shape) + 120 * (gts > 0), 0, 255).astype(np.uint8)
    return imgs, gts


def _box(mask: np.ndarray) -> dict[str, int]:
    z = np.nonzero(mask)[0]
    zm = int(z[len(z) // 2])
    yy, xx = np.nonzero(mask[zm])
    return {"z_min": int(z.min()), "z_max": int(z.max()), "z_mid": zm, "z_mid_x_min": int(xx.min()),
            "z_mid_y_min": int(yy.min()), "z_mid_x_max": int(xx.max()), "z_mid_y_max": int(yy.max())}  # fmt: skip


def _objects(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, v in enumerate(items):
        out[i] = v
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / s) if s else 1.0


def main() -> None:
    from volsam.prompts import cvpr25_click

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(160, 384, 384), metavar=("D", "H", "W"))
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--model", default=None, help="passed to --model (default: the shipped model)")
    ap.add_argument("--threads", type=int, default=None, help="OMP/torch threads of the runs (default: all)")
    args = ap.parse_args()
    imgs, gts = _case(tuple(args.shape), args.classes)
    classes = list(range(1, args.classes + 1))
    boxes = [_box(gts == c) for c in classes]
    clicks = [{"fg": [], "bg": []} for _ in classes]
    order: list[list[str]] = [[] for _ in classes]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, "-m", "volsam", "challenge-predict", "--no-progress"]
    if args.model:
        cmd += ["--model", args.model]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "inputs", Path(tmp) / "outputs"
        inp.mkdir()
        segs = np.zeros_like(gts)
        for step in range(6):
            if step > 0:  # the evaluator's click for every class with an error left
                for i, c in enumerate(classes):
                    click = cvpr25_click(segs == c, gts == c)
                    if click is not None:
                        kind = "fg" if click.positive else "bg"
                        clicks[i][kind].append(list(click.voxel))
                        order[i].append(kind)
            extra = {"clicks": clicks, "clicks_order": _objects(order), "prev_pred": segs} if step > 0 else {}
            np.savez_compressed(inp / "case.npz", imgs=imgs, spacing=np.array([1.5, 0.8, 0.8]), boxes=boxes, **extra)
            t0 = time.perf_counter()
            proc = subprocess.run([*cmd, "--input", str(inp), "--output", str(out)], env=env, capture_output=True)
            seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(proc.stderr.decode())
            with np.load(out / "case.npz") as z:
                segs = z["segs"]
            dsc = float(np.mean([_dice(segs == c, gts == c) for c in classes]))
            per_class = round(seconds / len(classes), 2)
            row = {"step": step + 1, "seconds": round(seconds, 2), "per_class_s": per_class, "mean_dsc": round(dsc, 4)}
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    worst = max(r["per_class_s"] for r in rows)
    print(json.dumps({"shape_dhw": list(args.shape), "classes": args.classes, "model": args.model or "shipped default",
                      "max_per_class_s": worst, "budget_per_class_s": 90.0}))  # fmt: skip


if __name__ == "__main__":
    main()
