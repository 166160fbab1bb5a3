"""What a bigger early-fusion network costs per click on this machine: one 64^3 window through
``FusionSeg3D.net`` (random weights: speed does not depend on them) for the shipped size and larger ones.

Candidates are timed in interleaved rounds (each round times every candidate once, median over rounds after
warm-up) so that a machine that slows down or speeds up part-way affects all of them alike; the ratio to
the shipped size is the figure to compare across machines.

    python -m benchmarks.bench_fusion_sizes [--rounds 5] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics

# (widths, blocks); the first is the shipped volsam_fusion.
CANDIDATES: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = (
    ((16, 32, 64, 128), (1, 2, 2, 2)),
    ((24, 48, 96, 192), (1, 2, 2, 2)),
    ((16, 32, 64, 128, 256), (1, 2, 2, 2, 2)),
    ((16, 32, 64, 128), (1, 3, 4, 6)),
    ((32, 64, 128, 256), (1, 2, 3, 4)),
)


def main() -> None:
    import torch

    from benchmarks.timing import median_ms
    from volsam.config import FusionConfig
    from volsam.modeling.fusion import FusionSeg3D

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds over all candidates")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per candidate per round")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    a = p.parse_args()
    if a.threads is not None:
        torch.set_num_threads(a.threads)

    models, inputs = [], []
    for widths, blocks in CANDIDATES:
        m = FusionSeg3D.from_config(FusionConfig(widths=widths, blocks=blocks)).eval()
        models.append(m)
        inputs.append(torch.randn(1, len(m.config.channels), 64, 64, 64, generator=torch.Generator().manual_seed(0)))
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for r in range(a.rounds):
            for i, (m, x) in enumerate(zip(models, inputs, strict=True)):
                times[i].append(median_ms(lambda m=m, x=x: m.net(x), a.repeats, warmup=2 if r == 0 else 0))
    base = statistics.median(times[0])
    print(f"{'widths':24s} {'blocks':14s} {'M params':>8s} {'ms/window':>9s} {'x shipped':>9s}")
    for (widths, blocks), m, t in zip(CANDIDATES, models, times, strict=True):
        n = sum(q.numel() for q in m.parameters()) / 1e6
        ms = statistics.median(t)
        print(f"{widths!s:24s} {blocks!s:14s} {n:8.2f} {ms:9.1f} {ms / base:9.2f}")


if __name__ == "__main__":
    main()
