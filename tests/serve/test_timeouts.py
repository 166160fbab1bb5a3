"""Slow clients (issue 30 item 7): a connection that never finishes its headers, or whose body stalls,
is closed within a bound, on a real uvicorn server on loopback with ``volsam serve``'s options."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from tests.fakes import ThresholdModel
from volsam.serve import create_app
from volsam.serve.background import background_server
from volsam.session import Session


def _app(**kw):
    model = ThresholdModel()
    return create_app(session_factory=lambda: Session(model, "cpu"), **kw)


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock


def _closed_after(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed (s); fails past limit_s."""
    t0, got = time.monotonic(), b""
    sock.settimeout(limit_s)
    while True:
        chunk = sock.recv(65536)  # socket.timeout (an error) when the server holds the connection past limit_s
        if not chunk:
            return got, time.monotonic() - t0
        got += chunk


def test_connections_that_never_finish_their_headers_are_closed():
    with background_server(_app(), header_timeout_s=1.0) as url:
        socks = [_connect(url) for _ in range(20)]
        for s in socks:
            s.sendall(b"POST /claim HTTP/1.1\r\nHost: x\r\nX-Pad: ")  # and then nothing
        for s in socks:
            got, after = _closed_after(s, 5.0)
            assert got == b"" and after < 5.0
            s.close()
        with _connect(url) as s:  # a prompt client is unaffected
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got, _ = _closed_after(s, 5.0)
            assert got.startswith(b"HTTP/1.1 200")


def test_a_stalled_body_gets_408_and_the_connection_is_dropped():
    with background_server(_app(body_stall_s=1.0), header_timeout_s=5.0) as url:
        with _connect(url) as s:
            s.sendall(
                b"POST /set_target_buffer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n" + b'{"shape": [1'
            )  # 12 of 1000 bytes, then nothing
            t0 = time.monotonic()
            got, _ = _closed_after(s, 6.0)
            assert got.startswith(b"HTTP/1.1 408"), got[:200]
            assert b"stalled" in got and time.monotonic() - t0 < 6.0
