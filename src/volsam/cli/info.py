"""``volsam info``: an image's geometry and intensity range."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="shape, spacing, orientation and intensity range of an image")
    p.add_argument("image")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)


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
