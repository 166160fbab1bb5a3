"""The server's live sessions (:class:`SessionStore`): idle expiry, eviction of sessions idle long enough,
one lock per session, and a memory budget across sessions; shared by the REST API and the nnInteractive
protocol.

Memory is accounted, not measured: each session carries the bytes :mod:`volsam.serve.budget` estimates
for its image, and work that is about to allocate (an image being decoded) holds a :class:`Reservation`
for its transient bytes until it is done. New work that would take the total past ``max_bytes`` first
evicts sessions idle for at least ``min_idle_s`` (least recently used first, never one in use), else is
refused with 503 and a ``Retry-After``."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fastapi import HTTPException

from volsam.session import Session

__all__ = ["DEFAULT_MIN_IDLE_S", "Reservation", "SessionStore"]

_TOMBSTONES = 4096
DEFAULT_MIN_IDLE_S = 120.0
"""Seconds a session must have been idle before a new session may evict it."""
_BUSY_RETRY_S = 5  # Retry-After when every session is in use (no idle one will come of age)


@dataclass
class _Entry:
    session: Session
    nbytes: int = 0  # accounted memory
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0  # requests using the session (never evicted while > 0)


@dataclass
class Reservation:
    """Room held for work in progress: ``nbytes`` of memory and, with ``slot``, one new session."""

    nbytes: int
    slot: bool
    released: bool = False


class SessionStore:
    """Live sessions with idle expiry, eviction and a memory budget; thread-safe."""

    def __init__(
        self,
        max_sessions: int,
        idle_timeout_s: float,
        *,
        min_idle_s: float = DEFAULT_MIN_IDLE_S,
        max_bytes: int | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if min_idle_s < 0 or idle_timeout_s <= 0:
            raise ValueError(f"expected idle_timeout_s > 0 and min_idle_s >= 0, got {idle_timeout_s}, {min_idle_s}")
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self.min_idle_s = min_idle_s
        self.max_bytes = max_bytes  # None: no budget
        self._live: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._expired: OrderedDict[str, str] = OrderedDict()  # id -> 410 message
        self._reserved_bytes = 0
        self._reserved_slots = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._live)

    @property
    def used_bytes(self) -> int:
        """Accounted bytes: every live session's, plus what work in progress holds."""
        with self._lock:
            return self._used()

    def _used(self) -> int:
        return sum(e.nbytes for e in self._live.values()) + self._reserved_bytes

    def _expire(self, sid: str, now: float, why: str = "") -> None:
        entry = self._live.pop(sid)
        self._expired[sid] = f"session {sid} expired after {now - entry.last_used:.0f} s idle{why}"
        while len(self._expired) > _TOMBSTONES:
            self._expired.popitem(last=False)

    def _sweep(self, now: float) -> None:
        for sid, entry in list(self._live.items()):
            if entry.active == 0 and now - entry.last_used >= self.idle_timeout_s:
                self._expire(sid, now)

    def _over(self, nbytes: int, slot: bool) -> str | None:
        """Why ``nbytes`` more (and one more session, with ``slot``) do not fit now; None when they do."""
        if slot and len(self._live) + self._reserved_slots >= self.max_sessions:
            return f"the server holds at most {self.max_sessions} sessions"
        if self.max_bytes is not None and self._used() + nbytes > self.max_bytes:
            return (
                f"the server's memory budget of {self.max_bytes / 2**20:.0f} MiB would be exceeded "
                f"({self._used() / 2**20:.0f} MiB in use, {nbytes / 2**20:.0f} MiB more needed)"
            )
        return None

    def _make_room(self, nbytes: int, slot: bool, evict: bool) -> None:
        """Evict (with ``evict``) sessions idle for at least ``min_idle_s``, least recently used first,
        until the work fits; HTTP 503 with Retry-After when it cannot."""
        now = time.monotonic()
        self._sweep(now)
        if self.max_bytes is not None and nbytes > self.max_bytes:
            raise HTTPException(
                503,
                f"this needs {nbytes / 2**20:.0f} MiB, more than the server's whole memory budget of "
                f"{self.max_bytes / 2**20:.0f} MiB (--max-memory)",
            )
        while (why := self._over(nbytes, slot)) is not None:
            idle = [(s, e) for s, e in self._live.items() if e.active == 0]
            old = [s for s, e in idle if now - e.last_used >= self.min_idle_s]
            if not old:
                waits = [self.min_idle_s - (now - e.last_used) for _, e in idle]
                retry = math.ceil(min(waits)) if waits else _BUSY_RETRY_S
                what = "in use" if not idle else f"in use or active in the last {self.min_idle_s:g} s"
                raise HTTPException(
                    503, f"{why}, and every session is {what}; retry later", headers={"Retry-After": str(max(retry, 1))}
                )
            if not evict:
                return  # check_room: an eviction would make room
            self._expire(old[0], now, f" (evicted: {why})")

    def check_room(self, nbytes: int = 0) -> None:
        """HTTP 503 now, before an upload is read or an image decoded, when a new session of ``nbytes``
        could not be added even by evicting."""
        with self._lock:
            self._make_room(nbytes, True, evict=False)

    def reserve(self, nbytes: int, slot: bool = False) -> Reservation:
        """Hold ``nbytes`` (and a session slot, with ``slot``) for work about to allocate, evicting idle
        sessions to make room; 503 with Retry-After when it cannot. Give it back with :meth:`release`."""
        with self._lock:
            self._make_room(nbytes, slot, evict=True)
            self._reserved_bytes += nbytes
            self._reserved_slots += slot
        return Reservation(nbytes, slot)

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            self._release(reservation)

    def _release(self, r: Reservation) -> None:
        if not r.released:
            self._reserved_bytes -= r.nbytes
            self._reserved_slots -= r.slot
            r.released = True

    @contextmanager
    def reserved(self, nbytes: int, slot: bool = False) -> Iterator[Reservation]:
        """:meth:`reserve` for the duration of a block."""
        r = self.reserve(nbytes, slot)
        try:
            yield r
        finally:
            self.release(r)

    def add(self, session: Session, nbytes: int = 0, reservation: Reservation | None = None) -> str:
        """Register a session accounted at ``nbytes``, in the room ``reservation`` held (released here), or
        evicting to make room; returns its id."""
        sid = uuid.uuid4().hex
        with self._lock:
            if reservation is not None:
                self._release(reservation)
            self._make_room(nbytes, True, evict=True)
            self._live[sid] = _Entry(session, nbytes)
        return sid

    def charge(self, sid: str, nbytes: int, reservation: Reservation | None = None) -> None:
        """Account session ``sid`` at ``nbytes`` from now on (its image changed), releasing ``reservation``."""
        with self._lock:
            if reservation is not None:
                self._release(reservation)
            entry = self._live.get(sid)
            if entry is not None:
                entry.nbytes = nbytes

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
    def busy(self, sid: str) -> Iterator[_Entry]:
        """Mark session ``sid`` in use (never evicted nor expired) for the block, without taking its lock:
        for a request that first reads and decodes a body, then :meth:`use`\\ s the session. 404/410 first."""
        with self._lock:
            entry = self._get(sid)
            entry.active += 1
            entry.last_used = time.monotonic()
            self._live.move_to_end(sid)
        try:
            yield entry
        finally:
            with self._lock:
                entry.active -= 1
                entry.last_used = time.monotonic()

    @contextmanager
    def use(self, sid: str) -> Iterator[Session]:
        """Hold a session's lock for the duration of one request (marked in use as :meth:`busy` does)."""
        with self.busy(sid) as entry, entry.lock:
            yield entry.session
