"""Model speed and memory on this machine: encoder, prompt encoder + decoder + upsample, padded reference.

Each variant runs in its own process (so peak RSS is its own); times are medians after warm-up, fp32.

    python -m benchmarks.bench_model [--variants sam_med3d fastsam3d volsam_small] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource

import torch

from benchmarks.timing import median_ms


def _gemm_peak() -> float:
    """fp32 GEMM throughput of this machine right now, GFLOP/s (the machine is shared: report ratios)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    ms = median_ms(lambda: a @ b, 7, warmup=2)
    return 2 * 2048**3 / ms / 1e6


def _run(name: str, repeats: int, reference: bool, queue: mp.Queue) -> None:
    from volsam import build_model
    from volsam.registry import model_config

    torch.manual_seed(0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build_model(name)
    x = torch.randn(1, 1, 128, 128, 128)
    coords = torch.tensor([[[64.0, 60.0, 70.0], [50.0, 64.0, 64.0]]])
    labels = torch.tensor([[1, 0]])
    row: dict = {"variant": name, "threads": torch.get_num_threads()}
    with torch.inference_mode():
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            emb = model.image_encoder(x)
        row["encoder_gflop"] = counter.get_total_flops() / 1e9
        row["encoder_ms"] = median_ms(lambda: model.image_encoder(x), repeats, warmup=2)
        row["encoder_gflops"] = row["encoder_gflop"] / row["encoder_ms"] * 1e3
        prev = torch.zeros(1, 1, 32, 32, 32)

        def click() -> torch.Tensor:
            low, _ = model.decode(emb, coords, labels, prev)
            return model.upsample_logits(low) > 0

        row["click_ms"] = median_ms(click, repeats * 3, warmup=2)
        row["peak_rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        if reference:
            from tests.modeling.reference import reference_encoder

            sd = model.state_dict()
            cfg = model_config(name).encoder
            row["padded_reference_ms"] = median_ms(lambda: reference_encoder(sd, cfg, x), 1, warmup=1)
            row["speedup_vs_reference"] = row["padded_reference_ms"] / row["encoder_ms"]
    queue.put(row)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["sam_med3d", "fastsam3d", "volsam_small"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-reference", action="store_true", help="skip the slow padded reference encoder")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    peak = _gemm_peak()
    print(f"this machine now: fp32 GEMM 2048^3 at {peak:.0f} GFLOP/s (2 threads, median)")
    rows = []
    for name in args.variants:
        q = ctx.Queue()
        proc = ctx.Process(target=_run, args=(name, args.repeats, not args.no_reference, q))
        proc.start()
        rows.append(q.get())
        proc.join()
    print(
        "| variant | encoder GFLOP | encoder ms | % of GEMM peak | prompt+decoder+upsample ms | peak RSS MB "
        "| padded reference ms | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = r.get("padded_reference_ms")
        ref_s = "" if ref is None else f"{ref:.0f}"
        up_s = "" if ref is None else f"{r['speedup_vs_reference']:.1f}x"
        print(
            f"| {r['variant']} | {r['encoder_gflop']:.0f} | {r['encoder_ms']:.0f} | "
            f"{100 * r['encoder_gflops'] / peak:.0f}% | {r['click_ms']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{ref_s} | {up_s} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gemm_gflops": peak, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
