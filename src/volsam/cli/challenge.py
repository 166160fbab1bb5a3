"""``volsam challenge-predict``: CVPR 2025 interactive 3D challenge inference (volsam.challenge)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from volsam.cli.common import add_model_args, build_session, err

if TYPE_CHECKING:
    from volsam.session import Session


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "challenge-predict",
        help="CVPR 2025 interactive 3D challenge inference: inputs/*.npz -> outputs/*.npz with 'segs'",
        description="Reads each case's imgs, spacing, boxes, clicks, clicks_order and prev_pred and writes "
        "segs (uint8, class i = the i-th prompt entry) under the same file name; see the README's challenge "
        "section. Exit status: 0 all written, 1 a case failed (the others are still written), 2 usage errors.",
    )
    p.add_argument("--input", required=True, metavar="DIR", help="folder of challenge .npz cases")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the predictions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p, device=False)
    p.add_argument("--device", default=None, help="torch device (default: cpu, as the challenge's CPU runs)")
    p.set_defaults(func=_cmd_challenge_predict)


def _cmd_challenge_predict(args: argparse.Namespace) -> int:
    """Exit 0 when every case was predicted, 1 when any failed (named on stderr)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from volsam.challenge import challenge_predict

    def factory() -> Session:
        return build_session(args, args.device or "cpu")

    files = sorted(Path(args.input).glob("*.npz")) if Path(args.input).is_dir() else []
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, disable=args.no_progress,
    )  # fmt: skip
    with bar:
        task = bar.add_task("challenge-predict", total=len(files))
        results = challenge_predict(args.input, args.output, factory, on_case=lambda r: bar.advance(task))
    for r in results:
        if r.error:
            print(f"volsam: failed {r.name}: {r.error}", file=sys.stderr)
        else:
            slow = " (over the challenge's 90 s per class)" if r.over_budget else ""
            print(f"{r.name}: {r.classes} class(es), {r.seconds:.1f} s{slow}", file=sys.stderr)
    failed = sum(1 for r in results if r.error)
    print(f"volsam: wrote {len(results) - failed} of {len(results)} case(s) to {args.output}", file=sys.stderr)
    return 1 if failed else 0
