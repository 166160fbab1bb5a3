"""Attention backends of the encoder: time and peak memory, dense vs dilated, at 128^3 and 256^3.

Each (model, backend, size) runs in its own subprocess so that its peak resident memory (``ru_maxrss``)
is its own; the figure reported is the peak minus the process's resident memory after building the model
and the input (i.e. what the forward pass adds). Time: median wall-clock ms after warm-up
(benchmarks/timing.py), fp32, ``torch.inference_mode``. 256^3 inputs use the learned position grid
interpolated to 16^3 (``ImageEncoder3D.tokens``), 4096 tokens, where dense global attention grows as
tokens^2 and the dilated branches (segment 4/8/16, dilation 1/2/4) do not.

    python -m benchmarks.bench_attention [--models fastsam3d volsam_tiny] [--sizes 128 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _one(model: str, backend: str, size: int, repeats: int, threads: int) -> dict:
    import resource

    import torch

    from benchmarks.timing import median_ms
    from volsam.modeling import Sam3D
    from volsam.registry import model_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = Sam3D.from_config(model_config(model).with_encoder(attention_backend=backend)).eval()
    x = torch.randn(1, 1, size, size, size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def run() -> None:
        with torch.inference_mode():
            net.image_encoder(x)

    ms = median_ms(run, repeats=repeats, warmup=1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extra_mb = round((peak - base) / 1024, 1)  # ru_maxrss is in KiB on Linux
    return {"model": model, "backend": backend, "size": size, "ms": round(ms, 1), "peak_extra_mb": extra_mb}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["fastsam3d", "volsam_tiny"])
    ap.add_argument("--backends", nargs="+", default=["dense", "dilated"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "BACKEND", "SIZE"), help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.one:
        m, b, s = args.one
        print(json.dumps(_one(m, b, int(s), args.repeats, args.threads)))
        return 0
    rows = []
    for m in args.models:
        for s in args.sizes:
            for b in args.backends:
                cmd = [sys.executable, "-m", "benchmarks.bench_attention", "--one", m, b, str(s)]
                cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    print("\n| model | input | backend | encoder ms | peak extra MB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size']}^3 | {r['backend']} | {r['ms']} | {r['peak_extra_mb']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
