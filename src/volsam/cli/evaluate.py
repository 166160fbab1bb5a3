"""``volsam evaluate``: simulated-click evaluation of a dataset (volsam.eval.runner)."""

from __future__ import annotations

import argparse
import sys

from volsam.cli.common import add_encoder_attention_arg, add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="simulated-click evaluation of a dataset: Dice/NSD/HD95 per click, reports and plots",
        description="Writes per_click.csv, summary.json, summary.md and figures to -o DIR and prints the Markdown "
        "table. Exit status: 0 when every case was evaluated, 1 when a case was skipped (unreadable, grid "
        "mismatch, no foreground; reasons in summary.json), 2 for usage errors.",
    )
    p.add_argument(
        "--data",
        required=True,
        help="nnU-Net raw folder, images/+labels/ folder, CSV, a built-in (colin27-aal, large-targets, "
        "colin27-aal-thick), or a folder of CVPR 2025 challenge .npz",
    )
    p.add_argument(
        "--protocol",
        choices=("sam_med3d", "cvpr25"),
        default=None,
        help="default: cvpr25 for a folder of CVPR 2025 challenge .npz cases, else sam_med3d",
    )
    p.add_argument("--clicks", type=int, default=5, help="clicks per target (after the box for cvpr25; default 5)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="report folder")
    p.add_argument("--labels", help="comma-separated target names or values (default: all)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the simulated clicks (default 0)")
    p.add_argument("--window-metrics", action="store_true", help="also Dice inside the 128^3 window (SAM-Med3D)")
    p.add_argument(
        "--baselines",
        action="store_true",
        help="also Dice of two baselines at every step: the model on an all-zero image with the same prompts, "
        "and a sphere of the target's volume at the first prompt",
    )
    p.add_argument("--clip", type=float, nargs=2, metavar=("LO", "HI"), help="intensity clip, e.g. -1000 1000 for CT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p)
    p.add_argument("--memory", default=None, help="Memorizing-SAM memory file with trained gates")
    add_encoder_attention_arg(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Exit 0 when every case was evaluated, 1 when any was skipped (reasons in summary.json)."""
    from volsam.eval.runner import evaluate

    labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    protocol = args.protocol
    if protocol is None:  # challenge cases are scored by the challenge's protocol unless told otherwise
        from volsam.challenge import is_challenge_folder

        protocol = "cvpr25" if is_challenge_folder(args.data) else "sam_med3d"
    summary = evaluate(
        args.data,
        args.model,
        protocol,
        args.clicks,
        args.output,
        labels=labels,
        workers=args.workers,
        seed=args.seed,
        window_metrics=args.window_metrics,
        clip=tuple(args.clip) if args.clip else None,
        device=args.device,
        progress=not args.no_progress,
        decoder_checkpoint=args.decoder_checkpoint,
        trust_checkpoint=args.trust_checkpoint,
        memory=args.memory,
        attention_backend=args.encoder_attention,
        random_weights=args.random_weights,
        baselines=args.baselines,
    )
    print(summary.markdown(), end="")
    for case, why in summary.skipped:
        print(f"volsam: skipped {case}: {why}", file=sys.stderr)
    print(f"volsam: wrote {', '.join(summary.files)} to {args.output}", file=sys.stderr)
    return 1 if summary.skipped else 0
