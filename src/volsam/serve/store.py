"""The server's live sessions (:class:`SessionStore`): idle expiry, least-recently-used eviction, and one
lock per session; shared by the REST API and the nnInteractive protocol."""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fastapi import HTTPException

from volsam.session import Session

__all__ = ["SessionStore"]

_TOMBSTONES = 4096


@dataclass
class _Entry:
    session: Session
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0  # requests using the session (never evicted while > 0)


class SessionStore:
    """Live sessions with idle expiry and least-recently-used eviction; thread-safe."""

    def __init__(self, max_sessions: int, idle_timeout_s: float) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self._live: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._expired: OrderedDict[str, str] = OrderedDict()  # id -> 410 message
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._live)

    def _expire(self, sid: str, now: float, why: str = "") -> None:
        entry = self._live.pop(sid)
        self._expired[sid] = f"session {sid} expired after {now - entry.last_used:.0f} s idle{why}"
        while len(self._expired) > _TOMBSTONES:
            self._expired.popitem(last=False)

    def _sweep(self, now: float) -> None:
        for sid, entry in list(self._live.items()):
            if entry.active == 0 and now - entry.last_used >= self.idle_timeout_s:
                self._expire(sid, now)

    def check_room(self) -> None:
        """HTTP 503 now, before an upload is read or an image decoded, when no session could be added."""
        with self._lock:
            self._sweep(time.monotonic())
            if len(self._live) >= self.max_sessions and all(e.active for e in self._live.values()):
                raise HTTPException(503, f"all {self.max_sessions} sessions are busy; retry later")

    def add(self, session: Session) -> str:
        """Register a session (evicting the least recently used idle one when full); returns its id."""
        sid = uuid.uuid4().hex
        with self._lock:
            now = time.monotonic()
            self._sweep(now)
            if len(self._live) >= self.max_sessions:
                victim = next((s for s, e in self._live.items() if e.active == 0), None)
                if victim is None:
                    raise HTTPException(503, f"all {self.max_sessions} sessions are busy; retry later")
                self._expire(victim, now, f" (evicted: the server holds at most {self.max_sessions} sessions)")
            self._live[sid] = _Entry(session)
        return sid

    def idle_left_s(self, sid: str) -> float | None:
        """Seconds before session ``sid`` expires idle, without counting as a use; None when not live."""
        with self._lock:
            now = time.monotonic()
            self._sweep(now)
            entry = self._live.get(sid)
            if entry is None:
                return None
            return self.idle_timeout_s if entry.active else max(0.0, self.idle_timeout_s - (now - entry.last_used))

    def remove(self, sid: str) -> None:
        with self._lock:
            self._get(sid)
            del self._live[sid]

    def _get(self, sid: str) -> _Entry:
        self._sweep(time.monotonic())
        entry = self._live.get(sid)
        if entry is None:
            if sid in self._expired:
                raise HTTPException(410, self._expired[sid])
            raise HTTPException(404, f"no session {sid!r} (unknown id, or deleted)")
        return entry

    @contextmanager
    def use(self, sid: str) -> Iterator[Session]:
        """Hold a session's lock for the duration of one request."""
        with self._lock:
            entry = self._get(sid)
            entry.active += 1
            entry.last_used = time.monotonic()
            self._live.move_to_end(sid)
        try:
            with entry.lock:
                yield entry.session
        finally:
            with self._lock:
                entry.active -= 1
                entry.last_used = time.monotonic()
