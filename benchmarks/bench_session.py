"""Interactive latency: time to first mask and per further click on a 256x256x200 volume.

Per registered full-size model (random weights give the same cost as trained ones): the first click
includes reading nothing (the volume is in memory), window resampling, normalisation and encoding;
further clicks cost the decoder and the paste-back onto the original grid. Medians after warm-up.

``--large``: the shipped default model (its multi-scale windows depend on what it predicts, so trained
weights) on a 4 L ellipsoid (180 x 180 x 240 mm) in the same volume and on a 30 cm^3 ball: median ms per
interaction over a click session (a first click at the centre, then clicks the cvpr25 way on the error),
and the windows each interaction ran.

    python -m benchmarks.bench_session [--models sam_med3d fastsam3d volsam_small] [--clicks 10] [--large]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _volume(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.normal(100, 20, shape).astype(np.float32)
    ijk = np.ogrid[tuple(slice(0, s) for s in shape)]
    r2 = sum(((a - s / 2) / (s / 5)) ** 2 for a, s in zip(ijk, shape, strict=True))
    img[r2 < 1] += 200
    affine = np.diag([0.8, 0.8, 1.25, 1.0])  # a typical CT grid: 205 x 205 x 250 mm
    return img, affine


def bench(model: str, clicks: int, repeats: int) -> dict:
    import torch

    from volsam.session import Session

    torch.manual_seed(0)
    shape = (256, 256, 200)
    img, affine = _volume(shape)
    session = Session(model, device="cpu", max_windows=1)
    centre = np.array(shape) // 2
    rng = np.random.default_rng(1)
    first, further, decode, paste = [], [], [], []
    for r in range(repeats + 1):  # the first round warms up
        session.set_image(img, affine)  # clears the embedding cache
        t0 = time.perf_counter()
        session.add_click(tuple(centre))
        t_first = (time.perf_counter() - t0) * 1e3
        for _ in range(clicks - 1):
            p = centre + rng.integers(-20, 21, 3)
            t0 = time.perf_counter()
            session.add_click(tuple(p), positive=bool(rng.integers(0, 2)))
            dt = (time.perf_counter() - t0) * 1e3
            if r:
                further.append(dt)
                decode.append(session.timings.decode_ms)
                paste.append(session.timings.paste_ms)
        if r:
            first.append(t_first)
    return {
        "model": model,
        "first_ms": statistics.median(first),
        "click_ms": statistics.median(further),
        "decode_ms": statistics.median(decode),
        "paste_ms": statistics.median(paste),
    }


def _target(shape: tuple[int, int, int], affine: np.ndarray, semi_mm: tuple[float, float, float]) -> np.ndarray:
    ijk = np.ogrid[tuple(slice(0, s) for s in shape)]
    sp = np.diag(affine)[:3]
    return sum(((a - s / 2) * d / r) ** 2 for a, s, d, r in zip(ijk, shape, sp, semi_mm, strict=True)) <= 1


def bench_large(clicks: int, repeats: int) -> list[dict]:
    """The shipped model on a ~4 L and a ~30 cm^3 target: ms and windows per interaction."""
    from volsam.prompts import cvpr25_click
    from volsam.session import Session

    shape = (256, 256, 200)
    affine = np.diag([0.8, 0.8, 1.25, 1.0])
    session = Session(device="cpu")
    out = []
    for name, semi in (("4 L ellipsoid", (90.0, 90.0, 120.0)), ("30 cm^3 ball", (19.3, 19.3, 19.3))):
        gt = _target(shape, affine, semi)
        img = np.random.default_rng(0).normal(100, 20, shape).astype(np.float32) + 200 * gt
        session.set_image(img, affine)
        ms, windows = [], []
        for r in range(repeats + 1):  # the first round warms up
            session.reset()
            pred, point, positive = None, tuple(np.array(shape) // 2), True
            for _ in range(clicks):
                t0 = time.perf_counter()
                pred = session.add_click(point, positive=positive)
                if r:
                    ms.append((time.perf_counter() - t0) * 1e3)
                    windows.append(session.timings.windows_decoded)
                c = cvpr25_click(pred, gt, np.diag(affine)[:3])
                if c is None:
                    break
                point, positive = c.point, c.positive
        ml = float(gt.sum() * np.prod(np.diag(affine)[:3]) / 1000)
        out.append({"target": name, "ml": ml, "ms": statistics.median(ms), "max_ms": max(ms),
                    "windows": statistics.median(windows), "max_windows": max(windows)})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["sam_med3d", "fastsam3d", "volsam_small"])
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--large", action="store_true", help="the shipped model on a 4 L and a 30 cm^3 target")
    args = p.parse_args(argv)
    if args.large:
        print("| target | ml | ms per interaction (median) | max ms | windows per interaction (median) | max |")
        print("|---|---|---|---|---|---|")
        for r in bench_large(args.clicks, args.repeats):
            print(f"| {r['target']} | {r['ml']:.0f} | {r['ms']:.0f} | {r['max_ms']:.0f} | {r['windows']:.0f} | "
                  f"{r['max_windows']} |")
        return
    print("| model | time to first mask ms | per further click ms | of which decoder ms | of which paste-back ms |")
    print("|---|---|---|---|---|")
    for m in args.models:
        r = bench(m, args.clicks, args.repeats)
        print(f"| {m} | {r['first_ms']:.0f} | {r['click_ms']:.1f} | {r['decode_ms']:.1f} | {r['paste_ms']:.1f} |")


if __name__ == "__main__":
    main()
