"""``volsam memory build``: key/value memories for Memorizing SAM."""

from __future__ import annotations

import argparse
import sys

from volsam.cli.common import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memory", help="key/value memories for Memorizing SAM (memory-augmented attention)")
    msub = p.add_subparsers(dest="memory_command", required=True)
    p = msub.add_parser("build", help="memorise one encoder block's keys/values over a labelled dataset")
    p.add_argument("--data", required=True, help="nnU-Net raw folder, images/+labels/ folder, CSV, or colin27-aal")
    add_model_args(p, required=True, device=False)
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--block", type=int, required=True, help="encoder block (with attention) to memorise")
    p.add_argument("--tokens", choices=("labelled", "all"), default="labelled", help="default: labelled")
    p.add_argument("--max-tokens", type=int, default=None, help="random subset of at most this many tokens")
    p.add_argument("--fp16", action="store_true", help="store keys/values in float16 (half the size)")
    p.add_argument("-o", "--output", required=True, metavar="MEMORY", help="output file (.safetensors)")
    p.set_defaults(func=_cmd_memory_build)


def _cmd_memory_build(args: argparse.Namespace) -> int:
    from volsam.memory import build_memory, save_memory
    from volsam.models import resolve_model

    model = resolve_model(
        args.model,
        args.device,
        decoder_checkpoint=args.decoder_checkpoint,
        trust_checkpoint=args.trust_checkpoint,
        random_weights=args.random_weights,
    )
    mem = build_memory(
        model,
        args.data,
        args.block,
        tokens=args.tokens,
        max_tokens=args.max_tokens,
        model_name=str(args.model),
        fp16=args.fp16,
    )
    path = save_memory(mem, args.output)
    heads, m, hd = mem.keys.shape
    print(f"volsam: memorised {m} tokens x {heads} heads x {hd} (block {mem.block}) to {path}", file=sys.stderr)
    return 0
