"""``volsam serve``: the REST API (volsam.serve) under uvicorn."""

from __future__ import annotations

import argparse
from pathlib import Path

from volsam.cli.common import add_random_weights_arg, err


def register(sub: argparse._SubParsersAction) -> None:
    from volsam.io import DEFAULT_MAX_VOXELS

    p = sub.add_parser("serve", help="REST API for interactive segmentation (OpenAPI docs at /docs)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--model", default=None, help="registered name or checkpoint (default: shipped model)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="folder that path-based sessions may read")
    p.add_argument("--token", default=None, help="bearer token required on every request (default: $VOLSAM_TOKEN)")
    p.add_argument("--max-sessions", type=int, default=8, help="live sessions before LRU eviction (default 8)")
    p.add_argument(
        "--max-voxels",
        type=int,
        default=DEFAULT_MAX_VOXELS,
        help=f"largest image a session may hold, checked from the file's header before reading it "
        f"(default 2^28 = {DEFAULT_MAX_VOXELS}: 1 GiB as float32; 0: no limit)",
    )
    add_random_weights_arg(p)
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from volsam.serve.app import create_app
    from volsam.session import resolve_model

    token = args.token or os.environ.get("VOLSAM_TOKEN") or None
    _check_port_free(args.host, args.port)
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
    )
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/] serving on {args.host} without a token (set --token or VOLSAM_TOKEN)")
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


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
