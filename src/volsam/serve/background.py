"""Run the server in a background thread of this process (tests, benchmarks, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from volsam.serve.server import DEFAULT_HEADER_TIMEOUT_S, server_options


@contextmanager
def background_server(
    app: Any, host: str = "127.0.0.1", timeout_s: float = 30.0, header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port of ``host`` until the block ends, with ``volsam serve``'s
    timeouts (:func:`volsam.serve.server.server_options`); yields the base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    options = server_options(header_timeout_s)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
