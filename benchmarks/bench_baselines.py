"""Does the model use the image? First-click masks on the held-out Colin27 structures beside two baselines.

For each held-out structure (``colin27-aal``, the 8 of issue 15) and ``--repeats`` first clicks (uniform random
voxels of the target, as the ``sam_med3d`` protocol's first click), it segments:

- the real image (Dice against the label);
- an all-zero image of the same grid with the same click: Dice against the label, and Dice between the two
  masks (high = the model ignores the image);
- a sphere of the target's own volume centred on the click (Dice against the label): what a model that only
  knows "something of this size is here" scores.

    python -m benchmarks.bench_baselines [--model NAME_OR_CHECKPOINT] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

HELD_OUT = "Thalamus_L,Thalamus_R,Caudate_L,Caudate_R,Putamen_L,Putamen_R,Hippocampus_L,Hippocampus_R"


def sphere(shape: tuple[int, ...], centre: np.ndarray, volume_mm3: float, spacing: np.ndarray) -> np.ndarray:
    """Ball of ``volume_mm3`` centred on ``centre`` (voxel index) on a grid with ``spacing`` mm."""
    r = (3 * volume_mm3 / (4 * np.pi)) ** (1 / 3)
    ijk = np.ogrid[tuple(slice(0, s) for s in shape)]
    d2 = sum(((a - c) * sp) ** 2 for a, c, sp in zip(ijk, centre, spacing, strict=True))
    return d2 <= r * r


def main() -> None:
    from volsam.eval.datasets import load_dataset, load_target_mask
    from volsam.eval.metrics import dice
    from volsam.io import read_image
    from volsam.prompts import first_click
    from volsam.session import Session

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="registered name or checkpoint (default: the shipped model)")
    p.add_argument("--labels", default=HELD_OUT)
    p.add_argument("--repeats", type=int, default=3, help="first clicks per structure")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    (case,) = load_dataset("colin27-aal", a.labels.split(","))
    vol = read_image(case.image)
    spacing = np.asarray(vol.spacing, dtype=float)
    real, zero = Session(a.model, "cpu"), Session(a.model, "cpu")
    real.set_image(vol)
    zero.set_image(np.zeros(vol.shape, np.float32), vol.affine)
    rows = []
    head = ("Dice real", "Dice zero", "zero~real", "sphere", "mask cm3", "gt cm3")
    print(f"{'structure':14s} " + " ".join(f"{h:>9s}" for h in head))
    for t in case.targets:
        gt = load_target_mask(case, t) > 0
        rng = np.random.default_rng([a.seed, t.value])
        for _ in range(a.repeats):
            c = first_click(gt, rng, "random")
            assert c is not None
            point = tuple(round(x) for x in c.point)
            real.reset()
            zero.reset()
            m_real = real.add_click(point) > 0
            m_zero = zero.add_click(point) > 0
            ball = sphere(vol.shape, np.asarray(point), float(gt.sum() * spacing.prod()), spacing)
            cm3 = spacing.prod() / 1e3
            row = (dice(m_real, gt), dice(m_zero, gt), dice(m_zero, m_real), dice(ball, gt), m_real.sum() * cm3,
                   gt.sum() * cm3)
            rows.append((t.name, *row))
            print(f"{t.name:14s} " + " ".join(f"{v:9.3f}" for v in row))
    cols = list(zip(*rows, strict=True))
    m = [statistics.mean(c) for c in cols[1:]]
    print(
        f"mean over {len(rows)} first clicks: Dice real {m[0]:.3f}, zero image {m[1]:.3f}, "
        f"zero-image mask vs real-image mask {m[2]:.3f}, sphere {m[3]:.3f}; "
        f"mask {m[4]:.2f} cm3 vs target {m[5]:.2f} cm3"
    )


if __name__ == "__main__":
    main()
