"""Where a session's image may come from, and how much a request may send: upload file types, paths under
the data root (:func:`resolve_under`) and the request-body cap (:class:`_BodyLimit`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

__all__ = ["MAX_JSON_BYTES", "UPLOAD_SUFFIXES", "parse_json", "resolve_under"]

UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
_CHUNK = 1 << 20
#: Largest JSON (or other non-upload) request body; a click or path is ~100 bytes.
MAX_JSON_BYTES = 64 << 10
DEFAULT_BODY_STALL_S = 30.0
"""Seconds a request body may go without a byte before the request gets 408 and its connection closes."""


def parse_json(raw: bytes | str, what: str) -> Any:
    """``raw`` parsed as JSON, or HTTP 400 naming ``what`` was expected: malformed, or nested deeper than
    Python's recursion limit (``json`` raises RecursionError there, which would otherwise be a 500)."""
    try:
        return json.loads(raw)
    except RecursionError as e:
        raise HTTPException(400, f"expected {what}: JSON nested too deeply") from e
    except ValueError as e:  # also bytes that are not UTF-8, and integers past Python's 4300-digit limit
        raise HTTPException(400, f"expected {what}: {' '.join(str(e).split())}") from e


def _upload_suffix(filename: str) -> str:
    name = filename.lower()
    for suffix in UPLOAD_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise HTTPException(415, f"unsupported upload {filename!r}: expected a {', '.join(UPLOAD_SUFFIXES)} file")


def resolve_under(root: Path | None, relative: str) -> Path:
    """``relative`` inside ``root``, or HTTP 403 when it is absolute, has ``..`` or resolves outside."""
    if root is None:
        raise HTTPException(403, "path-based sessions are disabled: start the server with --data-root DIR")
    if not relative or "\x00" in relative:
        raise HTTPException(400, "empty or invalid path")
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or relative.startswith(("/", "\\", "~")):
        raise HTTPException(
            403, f"absolute paths are not allowed: {relative!r} (give a path relative to the data root)"
        )
    if ".." in posix.parts or ".." in windows.parts:
        raise HTTPException(403, f"'..' is not allowed in paths: {relative!r}")
    base = root.resolve()
    try:
        target = (base / posix).resolve()
        if not target.is_relative_to(base):
            raise HTTPException(403, f"{relative!r} resolves outside the data root")
        if not target.exists():
            raise HTTPException(404, f"no such file under the data root: {relative!r}")
        if target.is_dir():  # a DICOM series folder: every entry must stay inside the root too
            for entry in target.iterdir():
                if not entry.resolve().is_relative_to(base):
                    raise HTTPException(403, f"{relative!r} holds {entry.name!r}, which resolves outside the data root")
            return target
        if not target.is_file():
            raise HTTPException(400, f"{relative!r} is not a file or a DICOM folder")
    except OSError as e:  # e.g. a name longer than the file system allows (ENAMETOOLONG), a symlink loop
        raise HTTPException(400, f"cannot open {relative[:80]!r}: {e.strerror or type(e).__name__}") from e
    _upload_suffix(target.name)
    return target


class _BodyLimit:
    """ASGI middleware: 413 once a request body passes its cap, counted as it streams in (a chunked upload
    has no Content-Length to check first). Multipart uploads get ``upload_bytes`` (plus 1 MiB of part
    headers), every other body :data:`MAX_JSON_BYTES`. A body that stalls (no bytes for ``stall_s``
    seconds) gets 408 and its connection is closed (``Connection: close``)."""

    def __init__(self, app: Any, upload_bytes: int, stall_s: float = DEFAULT_BODY_STALL_S) -> None:
        self.app = app
        self.upload_bytes = upload_bytes
        self.stall_s = stall_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        # Multipart uploads and the nnInteractive protocol's packed arrays (octet-stream) carry images.
        multipart = headers.get(b"content-type", b"").startswith((b"multipart/form-data", b"application/octet-stream"))
        limit = self.upload_bytes + _CHUNK if multipart else MAX_JSON_BYTES
        what = "upload larger than the limit" if multipart else f"request body larger than {MAX_JSON_BYTES >> 10} KiB"
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await JSONResponse({"detail": what}, status_code=413)(scope, receive, send)
            return
        seen, done = 0, False

        async def counted() -> Any:
            nonlocal seen, done
            if done:  # the body is in: what follows is the wait for a disconnect, which has no limit
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.stall_s)
            except asyncio.TimeoutError:  # not the builtin on Python 3.10
                stalled = f"request body stalled: no bytes for {self.stall_s:g} s"
                raise HTTPException(408, stalled, headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                done = not message.get("more_body", False)
                if seen > limit:
                    raise HTTPException(413, what)
            return message

        await self.app(scope, counted, send)
