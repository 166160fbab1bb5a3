"""Benchmark :func:`volsam.transforms.paste_back` on a 256x256x200 volume (median ms after warm-up).

Run from the repository root: ``python -m benchmarks.bench_paste_back``. Cases: an axis-aligned RAS volume, an
LPS-like flipped and axis-permuted one (both the fast separable path) and an oblique one (general path).
"""

from __future__ import annotations

import numpy as np

from benchmarks.timing import median_ms
from volsam.transforms import extract_window, paste_back, window_for_point

SHAPE = (256, 256, 200)


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


def _affine(linear: np.ndarray) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = -linear @ (np.array(SHAPE) / 2)
    return a


CASES = {
    "axis-aligned RAS 0.9x0.9x1.2 mm": _affine(np.diag([0.9, 0.9, 1.2])),
    "flipped+permuted (LPS-like)": _affine(np.array([[0, 0, -1.2], [-0.9, 0, 0], [0, 0.8, 0]], dtype=float)),
    "oblique 20 deg": _affine(_rotation(20) @ np.diag([0.9, 0.9, 1.2])),
}


def main() -> None:
    """Print the median paste_back (and extract_window) time per geometry."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((128, 128, 128)).astype(np.float32)  # worst case: noise fills the window
    g = np.ogrid[:128, :128, :128]
    ball = sum((a - 64.0) ** 2 for a in g) < (40 / 1.5 / 2) ** 2  # a 40 mm structure, the usual case
    image = np.asfortranarray(rng.random(SHAPE, dtype=np.float32))  # read_image returns F-order arrays
    for name, affine in CASES.items():
        window = window_for_point(affine, np.array(SHAPE) / 2 + 10)
        paste = median_ms(lambda w=window, a=affine: paste_back(logits, w, SHAPE, a), 30, warmup=3)
        paste_ball = median_ms(lambda w=window, a=affine: paste_back(ball, w, SHAPE, a), 30, warmup=3)
        extract = median_ms(lambda w=window, a=affine: extract_window(image, a, w), 5, warmup=1)
        print(
            f"{name:34s} paste_back {paste:7.1f} ms (window full), {paste_ball:6.1f} ms (40 mm ball)   "
            f"extract_window {extract:7.1f} ms"
        )


if __name__ == "__main__":
    main()
