"""How uvicorn serves the app: timeouts for slow or stalled clients (:func:`server_options`).

uvicorn (0.55) closes idle keep-alive connections but puts no limit on how long a client may take to send
a request's headers: a client that opens connections and sends a few header bytes holds them forever.
:func:`http_protocol` adds that limit to uvicorn's h11 protocol; the request body has its own stall limit
in the app (:class:`volsam.serve.uploads._BodyLimit`), which answers 408 and closes the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["DEFAULT_HEADER_TIMEOUT_S", "DEFAULT_KEEP_ALIVE_S", "MAX_HEADER_BYTES", "http_protocol", "server_options"]

DEFAULT_HEADER_TIMEOUT_S = 10.0
"""Seconds a connection may take to send a request's line and headers (from connecting, or from the
previous answer on a kept-alive connection) before it is closed."""
DEFAULT_KEEP_ALIVE_S = 5.0
"""Seconds an idle kept-alive connection stays open (uvicorn's default, set explicitly)."""
MAX_HEADER_BYTES = 64 << 10
"""Largest request line + headers (h11's incomplete-event limit); larger ones get 400."""


def http_protocol(header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete within
    ``header_timeout_s`` seconds (pass as ``uvicorn.Config(http=...)``)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # the request's headers are complete: the app takes over
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets the same time for its headers

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def server_options(
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S, keep_alive_s: float = DEFAULT_KEEP_ALIVE_S
) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config``: the header timeout, keep-alive timeout and
    header size limit."""
    return {
        "http": http_protocol(header_timeout_s),
        "timeout_keep_alive": keep_alive_s,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }
