"""Train volsam's default model on one accelerator from a packed dataset (the steps of
``scripts/train_default_gpu.sh``; docs/default_model.md has the whole recipe).

    # here, on the CPU: the dataset as one file that travels with the code (<= 64 MiB with the repo)
    python scripts/build_default_data.py /tmp/defdata3 --val-targets 24
    python scripts/train_default_gpu.py pack /tmp/defdata3 .gpu/pack.npz
    # there, on the GPU (bf16; probes batch 16/32/64 for a minute, then trains until --minutes are spent)
    python scripts/train_default_gpu.py train --pack .gpu/pack.npz --init WEIGHTS --minutes 8 --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _pack(args: argparse.Namespace) -> int:
    from volsam.train.pack import pack_dataset

    t = time.perf_counter()
    s = pack_dataset(args.data, args.out, spacing=args.spacing, fg_samples=args.fg_samples)
    print(f"{args.out}: {s.cases} cases, {s.images} images, {s.targets} targets, {s.voxels / 1e6:.1f} M image voxels, "
          f"{s.bytes / 2**20:.1f} MiB in {time.perf_counter() - t:.0f} s")
    return 0


def _train(args: argparse.Namespace) -> int:
    import torch

    from volsam.registry import build_model
    from volsam.train.device_data import PackedVolumes
    from volsam.train.device_loop import DeviceTrainConfig, train_on_device

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed window shapes: let cuDNN pick its kernels once
    cfg = DeviceTrainConfig(
        budget_s=args.minutes * 60.0,
        probe_s=args.probe_s,
        batch_sizes=tuple(args.batch_sizes),
        lr=args.lr,
        max_corrections=args.max_corrections,
        seed=args.seed,
        amp=not args.fp32,
    )
    t = time.perf_counter()
    weights = _case_weights(args.case_weight)
    data = PackedVolumes(
        args.pack, device, window=args.window, jitter=args.jitter, p_synth=args.p_synth, case_weights=weights
    )
    print(f"data: {data.describe()} (loaded in {time.perf_counter() - t:.1f} s)", flush=True)
    if weights is not None:
        shares: dict[str, float] = {}
        for name, v in data.sampling_shares().items():
            shares[name.split("_")[0]] = shares.get(name.split("_")[0], 0.0) + v
        print("draws by source: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()), flush=True)
    model = build_model("volsam_fusion", args.init)
    summary = train_on_device(model, data, cfg, args.out, log=lambda m: print(m, flush=True))
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))
    return 0


def _case_weights(items: list[str] | None) -> dict[str, float] | None:
    if not items:
        return None
    out = {}
    for item in items:
        prefix, sep, value = item.partition("=")
        try:
            out[prefix] = float(value)
        except ValueError:
            sep = ""
        if not sep or not prefix:
            raise ValueError(f"--case-weight expects PREFIX=WEIGHT (e.g. shapes_=0.4), got {item!r}")
    return out


def _validate(args: argparse.Namespace) -> int:
    from volsam.registry import build_model
    from volsam.train.data import TrainDataset
    from volsam.train.validate import evaluate

    # Per seed, the same windows and clicks for every model.
    sets = [(seed, TrainDataset.from_dataset(args.data, size=64, spacing=1.5, seed=seed)) for seed in args.seed]
    for ckpt in args.model:
        t = time.perf_counter()
        model = build_model("volsam_fusion", ckpt)
        runs = [evaluate(model, ds, clicks=args.clicks, seed=seed, device="cpu")["per_click"] for seed, ds in sets]
        mean = [sum(r[c] for r in runs) / len(runs) for c in range(args.clicks)]
        dice = " / ".join(f"{d:.4f}" for d in mean)
        seeds = ",".join(str(s) for s in args.seed)
        print(f"{ckpt}: {len(sets[0][1])} targets, seed(s) {seeds}, Dice at clicks 1..{args.clicks}: {dice} "
              f"(mean of @1 and @{args.clicks}: {(mean[0] + mean[-1]) / 2:.4f}; {time.perf_counter() - t:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack a training dataset into one .npz")
    p.add_argument("data", help="dataset folder (scripts/build_default_data.py output) or any volsam dataset spec")
    p.add_argument("out", help="the .npz to write")
    p.add_argument("--spacing", type=float, default=1.5, help="grid spacing, mm (the model's)")
    p.add_argument("--fg-samples", type=int, default=512, help="foreground voxels stored per target")
    p.set_defaults(fn=_pack)
    t = sub.add_parser("train", help="train volsam_fusion from a pack")
    t.add_argument("--pack", required=True)
    t.add_argument("--init", default=None, help="starting weights (default: random initialisation)")
    t.add_argument("--out", required=True, help="folder for final.safetensors, train_log.jsonl, summary.json")
    t.add_argument("--minutes", type=float, default=8.0, help="training time, the batch-size probe included")
    t.add_argument("--probe-s", type=float, default=60.0, help="seconds spent timing the batch sizes")
    t.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--max-corrections", type=int, default=8)
    t.add_argument("--window", type=int, default=64)
    t.add_argument("--jitter", type=int, default=16, help="window-centre jitter, voxels")
    t.add_argument("--p-synth", type=float, default=0.4)
    t.add_argument("--case-weight", action="append", metavar="PREFIX=W",
                   help="draw the targets of cases whose name starts with PREFIX W times as often (repeatable)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None, help="default: cuda when available")
    t.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    t.set_defaults(fn=_train)
    v = sub.add_parser("validate", help="validation Dice of volsam_fusion weights (random clicks, 64^3 windows)")
    v.add_argument("data", help="validation dataset (build_default_data.py's OUT/validation)")
    v.add_argument("model", nargs="+", help="weights files (.safetensors or checkpoints)")
    v.add_argument("--clicks", type=int, default=5)
    v.add_argument("--seed", type=int, nargs="+", default=[0], help="click seeds; several: Dice averaged over them")
    v.set_defaults(fn=_validate)
    args = ap.parse_args(argv)
    try:
        return int(args.fn(args))
    except (ValueError, FileNotFoundError) as e:
        print(f"train_default_gpu.py {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
