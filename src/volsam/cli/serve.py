"""``volsam serve``: the REST API (volsam.serve) under uvicorn."""

from __future__ import annotations

import argparse
from pathlib import Path

from volsam.cli.common import add_random_weights_arg, err
from volsam.cli.datastore import add_connection_args, one_line_errors, open_from_args


def register(sub: argparse._SubParsersAction) -> None:
    from volsam.io import DEFAULT_MAX_VOXELS

    p = sub.add_parser("serve", help="REST API for interactive segmentation (OpenAPI docs at /docs)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--model", default=None, help="registered name or checkpoint (default: shipped model)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="folder that path-based sessions may read")
    p.add_argument(
        "--token",
        default=None,
        help="bearer token required on every request (default: $VOLSAM_TOKEN; visible to local users in ps: "
        "prefer VOLSAM_TOKEN or --token-file)",
    )
    p.add_argument("--token-file", default=None, metavar="FILE", help="read the bearer token from FILE (one line)")
    p.add_argument("--max-sessions", type=int, default=8, help="live sessions before LRU eviction (default 8)")
    p.add_argument(
        "--idle-timeout", type=float, default=900, metavar="S", help="a session idle this long expires (default 900)"
    )
    p.add_argument(
        "--min-idle",
        type=float,
        default=120,
        metavar="S",
        help="a session may be evicted for a new one only once idle this long, never while in use; otherwise "
        "the new one gets 503 with Retry-After (default 120)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10,
        metavar="S",
        help="close a connection whose request headers take longer (default 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=30,
        metavar="S",
        help="answer 408 and close a connection whose request body sends nothing for this long (default 30)",
    )
    p.add_argument(
        "--max-memory",
        type=_memory_size,
        default="auto",
        metavar="BYTES",
        help="memory all sessions together may hold, e.g. 8G or 512M; 0: no limit "
        "(default: half the memory available at start)",
    )
    p.add_argument(
        "--max-voxels",
        type=int,
        default=DEFAULT_MAX_VOXELS,
        help=f"largest image a session may hold, checked from the file's header before reading it "
        f"(default 2^28 = {DEFAULT_MAX_VOXELS}: 1 GiB as float32; 0: no limit)",
    )
    p.add_argument(
        "--datastore", default=None, metavar="DIR|URL",
        help="images and labels to serve: a folder, or a DICOMweb URL (e.g. http://pacs:8042/dicom-web); "
        "adds the /datastore routes (list, open, save, resume)",
    )  # fmt: skip
    add_random_weights_arg(p)
    add_connection_args(p)
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from volsam.models import resolve_model
    from volsam.serve.app import create_app
    from volsam.serve.server import server_options
    from volsam.serve.state import token_from

    token = token_from(args.token, args.token_file)
    if args.token is not None:
        err.print(
            "[yellow]warning:[/] a --token on the command line is readable by every local user (ps, "
            "/proc/PID/cmdline); prefer VOLSAM_TOKEN or --token-file"
        )
    _check_port_free(args.host, args.port)
    store = _open_datastore(args) if args.datastore else None
    model = args.model
    if model is None or not (Path(model) / "export.json").is_file():  # an ONNX folder loads per session
        # Loaded now, so a bad --model fails here in one line rather than on the first session's request.
        model = resolve_model(model, args.device, random_weights=args.random_weights)
    app = create_app(
        model,
        data_root=args.data_root,
        token=token,
        max_sessions=args.max_sessions,
        device=args.device,
        max_voxels=args.max_voxels or None,
        datastore=store,
        idle_timeout_s=args.idle_timeout,
        min_idle_s=args.min_idle,
        max_memory=args.max_memory,
        body_stall_s=args.body_timeout,
    )
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/] serving on {args.host} without a token (set VOLSAM_TOKEN or --token-file)")
    uvicorn.run(app, host=args.host, port=args.port, **server_options(args.header_timeout))
    return 0


def _memory_size(text: str) -> int | str | None:
    """``--max-memory``: bytes (8G, 512M, 1073741824), 0 for no limit, or ``auto``."""
    from volsam.serve.budget import parse_bytes

    if text.strip().lower() == "auto":
        return "auto"
    if text.strip() == "0":
        return None
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _open_datastore(args: argparse.Namespace):
    """The --datastore, opened now so a bad folder fails in one line; a PACS that does not answer yet is
    a warning (the server starts; its datastore routes answer 502 until the PACS does)."""
    from volsam.datastore import DatastoreError

    with one_line_errors():
        store = open_from_args(args.datastore, args)
    try:
        n = len(store.list_images())
        err.print(f"datastore {store.location}: {n} image(s)")
    except DatastoreError as e:
        err.print(f"[yellow]warning:[/] {' '.join(str(e).split())}")
    return store


def _check_port_free(host: str, port: int) -> None:
    """OSError ``port N is in use`` (CLI: one line, rc 2) instead of uvicorn's log line and exit 1."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise OSError(f"cannot serve on {host}: {e.strerror or e}") from e
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OSError(f"port {port} is in use on {host} (another server?); pick one with --port") from e
            raise OSError(f"cannot serve on {host}:{port}: {e.strerror or e}") from e
