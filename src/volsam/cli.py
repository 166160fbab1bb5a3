"""Command-line interface: thin subcommands over the library.

Errors a user can cause (bad files, points, checkpoints) end with a one-line message on stderr and a
non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

EXIT_USAGE = 2
_err = Console(stderr=True, highlight=False, soft_wrap=True)


def _point(text: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected a point as i,j,k (three numbers), got {text!r}")
    return vals  # type: ignore[return-value]


def _box(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        vals = ()
    if len(vals) != 6:
        raise argparse.ArgumentTypeError(f"expected a box as i0,j0,k0,i1,j1,k1 (six numbers), got {text!r}")
    return vals


class _Click(argparse.Action):
    """Collects --point and --negative into one ordered list, so refinements keep the order given."""

    def __call__(self, parser, namespace, values, option_string=None):
        clicks = list(getattr(namespace, "clicks", None) or [])
        clicks.append((values, self.const))
        namespace.clicks = clicks


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="registered model name or checkpoint path (default: shipped model)")
    p.add_argument("--decoder-checkpoint", default=None, help="prompt encoder + decoder for an encoder-only file")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of a checkpoint you trust")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def _cmd_info(args: argparse.Namespace) -> int:
    from volsam.io import image_info

    info = image_info(args.image)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    for key in ("path", "format", "shape", "spacing", "orientation", "dtype", "min", "max", "mean"):
        val = info[key]
        if key == "spacing":
            val = " x ".join(f"{s:.4g}" for s in val) + " mm"
        elif key == "orientation":
            val = "".join(val)
        print(f"{key:12s} {val}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from volsam.registry import list_models, model_spec

    for name in list_models():
        print(f"{name:16s} {model_spec(name).description}")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from volsam.io import default_output_path
    from volsam.session import Session

    clicks = getattr(args, "clicks", None) or []
    if not clicks and args.box is None:
        raise ValueError("give at least one --point i,j,k (or --box)")
    t0 = time.perf_counter()
    session = Session(
        args.model,
        args.device,
        clip=tuple(args.clip) if args.clip else None,
        decoder_checkpoint=args.decoder_checkpoint,
        trust_checkpoint=args.trust_checkpoint,
    )
    _err.print(f"model ready in {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    session.set_image(args.image)
    vol = session.volume
    out = Path(args.output) if args.output else default_output_path(vol)
    _err.print(
        f"read {args.image}: shape {vol.shape}, spacing {tuple(round(s, 3) for s in vol.spacing)} mm "
        f"({time.perf_counter() - t0:.2f} s)"
    )
    mask = None
    if args.box is not None:
        mask = session.add_box(args.box[:3], args.box[3:], world=args.world)
        _report("box", session)
    for point, positive in clicks:
        mask = session.add_click(point, positive=positive, world=args.world)
        _report(f"{'+' if positive else '-'} click {point}", session)
    assert mask is not None
    if not mask.any():
        _err.print("[yellow]warning:[/] the mask is empty")
    path = session.save(out)
    spacing = np.prod(vol.spacing)
    _err.print(f"wrote {path}: {int(mask.sum())} voxels, {mask.sum() * spacing / 1000:.1f} mL")
    return 0


def _report(what: str, session) -> None:
    t = session.timings
    _err.print(
        f"{what}: encode {t.encode_ms:.0f} ms ({t.windows_encoded} window(s)), decode {t.decode_ms:.0f} ms, "
        f"paste-back {t.paste_ms:.0f} ms"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="volsam", description="Promptable 3D segmentation of medical volumes.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="shape, spacing, orientation and intensity range of an image")
    p.add_argument("image")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser(
        "segment",
        help="segment an image from clicks",
        description="Clicks are voxel indices i,j,k of the image array (nibabel order for NIfTI, ITK index "
        "order otherwise), or world points in mm RAS+ with --world. They are applied in the order given.",
    )
    p.add_argument("image", help="NIfTI, NRRD, MHA/MHD file or DICOM series folder")
    p.add_argument("--point", type=_point, action=_Click, const=True, metavar="I,J,K", help="positive click")
    p.add_argument("--negative", type=_point, action=_Click, const=False, metavar="I,J,K", help="negative click")
    p.add_argument("--box", type=_box, metavar="I0,J0,K0,I1,J1,K1", help="3D box (two opposite corners)")
    p.add_argument("--world", action="store_true", help="points are world coordinates in mm (RAS+)")
    p.add_argument("--clip", type=float, nargs=2, metavar=("LO", "HI"), help="intensity clip, e.g. -1000 1000 for CT")
    p.add_argument("-o", "--output", help="output mask (default: beside the input, in its format)")
    _add_model_args(p)
    p.set_defaults(func=_cmd_segment)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _err.print("interrupted")
        return 130
    except (ValueError, OSError) as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"volsam: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
