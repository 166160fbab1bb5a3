"""Training throughput on this machine: samples/s of one full training step (SAM-Med3D recipe).

A step = encode a batch of 128^3 windows, ``--rounds`` interaction rounds (simulated clicks, DiceCE on
the upsampled logits), backward, AdamW. Data loading is excluded (random windows with a sphere target).
Each variant runs in its own process; times are medians after a warm-up step, fp32.

    python -m benchmarks.bench_train [--variants fastsam3d volsam_small fastsam3d_mini] [--steps 3]
        [--batch-size 1] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

import torch


def _run(name: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    from volsam import build_model
    from volsam.train.loop import InteractiveTask, TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(name)
    cfg = TrainConfig(steps=1, batch_size=args.batch_size, rounds=args.rounds, mask_only_rounds=min(2, args.rounds - 1))
    task = InteractiveTask(model, cfg, torch.device("cpu"))
    opt = torch.optim.AdamW(task.param_groups(), weight_decay=cfg.weight_decay)
    b = args.batch_size
    grid = torch.stack(torch.meshgrid(*[torch.arange(128.0)] * 3, indexing="ij"))
    target = (((grid - 64) ** 2).sum(0) < 20**2).float()[None, None].expand(b, 1, -1, -1, -1).contiguous()
    image = torch.randn(b, 1, 128, 128, 128) + 2 * target
    times = []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        task.train_mode()
        opt.zero_grad(set_to_none=True)
        loss, _ = task.loss({"image": image, "target": target, "index": torch.arange(b) + step * b}, step)
        loss.backward()
        opt.step()
        if step > 0:  # the first step warms up
            times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    queue.put(
        {
            "variant": name,
            "threads": torch.get_num_threads(),
            "batch_size": b,
            "rounds": args.rounds,
            "step_s": round(sec, 3),
            "samples_per_s": round(b / sec, 3),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["fastsam3d_mini", "volsam_small", "fastsam3d"])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for name in args.variants:
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(name, args, queue))
        proc.start()
        row = queue.get()
        proc.join()
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        head = ("thr", "batch", "rounds", "step s", "samples/s", "params M")
        print(f"{'variant':16s} " + " ".join(f"{h:>{w}s}" for h, w in zip(head, (3, 5, 6, 8, 9, 8), strict=True)))
        for r in rows:
            print(
                f"{r['variant']:16s} {r['threads']:3d} {r['batch_size']:5d} {r['rounds']:6d} {r['step_s']:8.3f} "
                f"{r['samples_per_s']:9.3f} {r['params_m']:8.2f}"
            )


if __name__ == "__main__":
    main()
