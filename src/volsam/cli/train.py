"""``volsam train`` and ``volsam distill``: their options and bodies live in volsam.train."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from volsam.train import add_distill_arguments, add_train_arguments

    p = sub.add_parser("train", help="train or fine-tune a model with simulated clicks (SAM-Med3D recipe)")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("distill", help="layer-wise progressive distillation of an encoder (FastSAM3D)")
    add_distill_arguments(p)
    p.set_defaults(func=_cmd_distill)


def _cmd_train(args: argparse.Namespace) -> int:
    from volsam.train.loop import run_train

    return run_train(args)


def _cmd_distill(args: argparse.Namespace) -> int:
    from volsam.train.distill import run_distill

    return run_distill(args)
