"""volsam serve (volsam.cli.serve); the API itself is tested in tests/serve/."""

from __future__ import annotations

from volsam.cli import main


def test_busy_port_is_one_line(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"volsam: error: port {port} is in use on 127.0.0.1 (another server?); pick one with --port"
