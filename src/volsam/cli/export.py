"""``volsam export``: a model as encoder.onnx + decoder.onnx (volsam.export)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from volsam.cli.common import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model as encoder.onnx + decoder.onnx (+ export.json)",
        description="The decoder takes image_embeddings, point_coords [1,N,3] float32, point_labels [1,N] int64, "
        "mask_input [1,1,32,32,32] and has_mask_input [1] (0: no mask prompt); see volsam.export.",
    )
    add_model_args(p, device=False)
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from volsam.export import export_onnx
    from volsam.models import resolve_model

    model = resolve_model(
        args.model,
        "cpu",
        decoder_checkpoint=args.decoder_checkpoint,
        trust_checkpoint=args.trust_checkpoint,
        random_weights=args.random_weights,
    )
    name = Path(args.model).stem if args.model and Path(args.model).exists() else (args.model or "default")
    paths = export_onnx(model, args.output, opset=args.opset, name=name)
    print(f"volsam: wrote {', '.join(p.name for p in paths.values())} to {args.output}", file=sys.stderr)
    return 0
