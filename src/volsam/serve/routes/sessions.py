"""Creating, describing and deleting REST sessions: ``POST /sessions`` (upload or ``{"path"}``),
``POST /sessions/demo``, ``GET /sessions/{sid}``, ``DELETE /sessions/{sid}``."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from volsam.io import ImageReadError, Volume, read_header, read_image
from volsam.serve.budget import load_bytes, session_bytes
from volsam.serve.schemas import PathRequest, SessionInfo, SessionState
from volsam.serve.state import ServerState, State, check_token
from volsam.serve.uploads import _CHUNK, _upload_suffix, parse_json, resolve_under

router = APIRouter(dependencies=[Depends(check_token)])

_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "application/json": {"schema": PathRequest.model_json_schema()},
        },
    }
}


def info(sid: str, vol: Volume) -> dict[str, Any]:
    return {"id": sid, "shape": vol.shape, "spacing": vol.spacing, "affine": vol.affine.tolist()}


def open_session(srv: ServerState, path: Path, shown: str, data_files: Literal["refuse"] | Path) -> tuple[str, Volume]:
    """Read ``path`` (named ``shown`` in errors) into a new session; detached data files as
    :func:`volsam.io.read_header`'s ``data_files`` says."""
    try:
        header = read_header(path, data_files=data_files)
        voxels = header.voxels * header.components
        within = srv.max_voxels is None or voxels <= srv.max_voxels  # else read_image refuses it from the header
        # Room for the decoding and the session, held before any voxel is read: a full server does not pay.
        with srv.store.reserved(load_bytes(voxels) + session_bytes(voxels) if within else 0, slot=True) as room:
            vol = read_image(path, max_voxels=srv.max_voxels, data_files=data_files)
            session = srv.new_session()
            session.set_image(vol)
            return srv.store.add(session, session_bytes(voxels), room), vol
    except ImageReadError as e:
        raise HTTPException(400, " ".join(str(e).replace(str(path), shown).split())) from e


def _from_upload(srv: ServerState, src: Any, filename: str) -> tuple[str, Volume]:
    suffix = _upload_suffix(filename)
    # Saved under the user's own file name (made safe), so what the readers say names their file.
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename).name[: -len(suffix)])[:100].lstrip(".") or "upload"
    tmpdir = Path(tempfile.mkdtemp(prefix="volsam-upload-"))
    tmp = tmpdir / f"{stem}{suffix}"
    try:
        with tmp.open("wb") as out:
            total = 0
            while chunk := src.read(_CHUNK):
                total += len(chunk)
                if total > srv.upload_bytes:
                    raise HTTPException(413, f"upload larger than the limit of {srv.upload_mb:g} MB")
                out.write(chunk)
        return open_session(srv, tmp, tmp.name, "refuse")
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


async def _from_multipart(srv: ServerState, request: Request) -> tuple[str, Volume]:
    form = await request.form(max_files=1, max_fields=4)
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "multipart upload needs a file field named 'file'")
        return await run_in_threadpool(_from_upload, srv, upload.file, upload.filename or "")
    finally:
        await form.close()


async def _from_path(srv: ServerState, request: Request) -> tuple[str, Volume]:
    what = 'JSON {"path": "relative/path.nii.gz"}'
    try:
        req = PathRequest.model_validate(parse_json(await request.body(), what))
    except ValueError as e:
        raise HTTPException(400, f"expected {what}: {e}") from e
    path = resolve_under(srv.data_root, req.path)
    assert srv.data_root is not None  # resolve_under refuses without one
    return await run_in_threadpool(open_session, srv, path, req.path, srv.data_root)


@router.post("/sessions", response_model=SessionInfo, status_code=201, openapi_extra=_UPLOAD_SCHEMA)
async def create_session(request: Request, srv: State) -> dict[str, Any]:
    """Create a session from an uploaded image (multipart field ``file``) or ``{"path"}`` under the data root."""
    ctype = request.headers.get("content-type", "")
    srv.store.check_room()  # before the upload streams in (and again before decoding)
    if ctype.startswith("multipart/form-data"):
        sid, vol = await _from_multipart(srv, request)
    elif ctype.startswith("application/json"):
        sid, vol = await _from_path(srv, request)
    else:
        raise HTTPException(415, "send multipart/form-data with a 'file', or JSON {\"path\": ...}")
    return info(sid, vol)


@router.get("/sessions/{sid}", response_model=SessionState)
def get_session(sid: str, srv: State) -> dict[str, Any]:
    """Geometry and prompt counts of a session."""
    with srv.store.use(sid) as s:
        return {**info(sid, s.volume), "objects": s.num_objects, "clicks": s.num_clicks}


@router.post("/sessions/demo", response_model=SessionInfo, status_code=201)
def create_demo_session(srv: State) -> dict[str, Any]:
    """Create a session on volsam's bundled demo volume (a crop of the Colin27 T1, see volsam.demo)."""
    from volsam.demo import DEMO_IMAGE

    sid, vol = open_session(srv, DEMO_IMAGE, DEMO_IMAGE.name, "refuse")
    return info(sid, vol)


@router.delete("/sessions/{sid}", status_code=204, response_class=Response)
def delete_session(sid: str, srv: State) -> Response:
    """Forget a session."""
    srv.store.remove(sid)
    return Response(status_code=204)
