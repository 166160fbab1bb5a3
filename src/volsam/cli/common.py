"""What several command groups share: the stderr console, point/box argument types, the model and runtime
options, and the one place that turns those options into a :class:`~volsam.session.Session`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from volsam.session import Session

err = Console(stderr=True, highlight=False, soft_wrap=True)


def _numbers(text: str, n: int, form: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise argparse.ArgumentTypeError(f"expected {form} ({n} comma-separated numbers), got {text!r}")
    return vals


def point(text: str) -> tuple[float, ...]:
    """argparse type: ``i,j,k`` -> 3 floats."""
    return _numbers(text, 3, "a point as i,j,k")


def box(text: str) -> tuple[float, ...]:
    """argparse type: ``i0,j0,k0,i1,j1,k1`` -> 6 floats."""
    return _numbers(text, 6, "a box as i0,j0,k0,i1,j1,k1")


class Click(argparse.Action):
    """Collects --point and --negative into one ordered list, so refinements keep the order given."""

    def __call__(self, parser, namespace, values, option_string=None):
        clicks = list(getattr(namespace, "clicks", None) or [])
        clicks.append((values, self.const))
        namespace.clicks = clicks


def add_model_args(p: argparse.ArgumentParser, *, required: bool = False, device: bool = True) -> None:
    """--model (+ --decoder-checkpoint, --trust-checkpoint, --random-weights and, unless ``device=False``,
    --device)."""
    if required:
        p.add_argument("--model", required=True, help="registered model, official weights name or checkpoint path")
    else:
        p.add_argument(
            "--model",
            default=None,
            help="registered model, official weights name (volsam weights list) or checkpoint path "
            "(default: shipped model)",
        )
    p.add_argument("--decoder-checkpoint", default=None, help="prompt encoder + decoder for an encoder-only file")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of a checkpoint you trust")
    add_random_weights_arg(p)
    if device:
        p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def add_random_weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="let a registered architecture name run with random weights (tests and benchmarks only)",
    )


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """--precision, --attention, --compile and --encoder-attention (volsam.runtime.choose_runtime; unsupported
    choices fall back)."""
    from volsam.runtime import ATTENTION, PRECISIONS

    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto: bf16 on a CUDA GPU, fp32 on CPU")
    p.add_argument("--attention", default="auto", choices=ATTENTION, help="SDPA kernel (flash: CUDA + bf16/fp16)")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile encoder and decoder (pays off over many volumes)"
    )
    add_encoder_attention_arg(p)


def add_encoder_attention_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encoder-attention",
        default=None,
        choices=("dense", "dilated"),
        help="encoder global attention, same weights (default: the model's own; dilated = FastSAM3D's sparse)",
    )


# Session keyword <- argparse destination, for the model and runtime options a command may have.
SESSION_OPTIONS = {
    "clip": "clip",
    "decoder_checkpoint": "decoder_checkpoint",
    "trust_checkpoint": "trust_checkpoint",
    "precision": "precision",
    "attention": "attention",
    "compile": "compile",
    "memory": "memory",
    "attention_backend": "encoder_attention",
    "random_weights": "random_weights",
}


def build_session(args: argparse.Namespace, device: str | None = None) -> Session:
    """The Session a command's model and runtime options ask for (``device`` overrides ``args.device``);
    options the command does not have are left to Session's own defaults."""
    from volsam.session import Session

    opts = {kw: getattr(args, dest) for kw, dest in SESSION_OPTIONS.items() if hasattr(args, dest)}
    if opts.get("clip"):
        opts["clip"] = tuple(opts["clip"])
    return Session(args.model, device if device is not None else args.device, **opts)
