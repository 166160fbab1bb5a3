"""``volsam demo``: one click on the bundled volume with the shipped model."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment the bundled real volume from one click with the shipped model")
    p.add_argument("-o", "--output", default="volsam_demo", help="output folder (default: volsam_demo)")
    p.add_argument("--model", default=None, help="registered name or checkpoint (default: shipped model)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from volsam.demo import run_demo

    r = run_demo(args.output, args.model, args.device)
    print(f"click at voxel {r.click} (left thalamus, Colin27 crop bundled with volsam)")
    print(f"Dice against the AAL label: {r.dice:.3f}")
    print(
        f"timings: model load {r.model_ms:.0f} ms, encode {r.encode_ms:.0f} ms, decode {r.decode_ms:.0f} ms, "
        f"paste-back {r.paste_ms:.0f} ms"
    )
    print(f"wrote {r.mask_path} and {r.png_path}")
    return 0
