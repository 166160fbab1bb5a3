"""Command-line interface: thin subcommands over the library, one module per command group.

Each group module has ``register(sub)``, which adds its subcommand(s) to the ``volsam`` parser and sets
``func`` to the body that runs them; :data:`GROUPS` lists the groups in the order ``volsam --help`` shows
them, so a new group is a new module plus its entry there. Options several groups share (model, runtime,
the Session built from them) live in :mod:`volsam.cli.common`.

Errors a user can cause (bad files, points, checkpoints) end with a one-line message on stderr and a
non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from volsam.cli import challenge, datastore, demo, evaluate, export, info, memory, models, segment, serve, train
from volsam.cli.common import err

EXIT_USAGE = 2

GROUPS = (info, demo, memory, serve, datastore, models, segment, evaluate, challenge, export, train)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"volsam: warning: {' '.join(str(message).split())}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="volsam", description="Promptable 3D segmentation of medical volumes.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


_COORD_OPTIONS = ("--point", "--negative", "--box")


def _join_negative_coordinates(argv: Sequence[str]) -> list[str]:
    """``--point -5,100,80`` -> ``--point=-5,100,80``: argparse takes a value that starts with ``-`` and is
    not a plain number for an option, and fails with "expected one argument"."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in _COORD_OPTIONS:
            value = next(it, None)
            if value is not None and value[:1] == "-" and (value[1:2].isdigit() or value[1:2] == "."):
                out.append(f"{arg}={value}")
                continue
            out.append(arg)
            if value is not None:
                out.append(value)
            continue
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(_join_negative_coordinates(sys.argv[1:] if argv is None else argv))
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning  # a CLI user gets one line per warning, not a traceback frame
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except (ValueError, OSError) as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"volsam: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
