"""The routes of nnInteractive's remote protocol (:mod:`volsam.serve.nninteractive` describes it and holds
its messages): ``public`` (``/healthz``, no token) and ``router`` (everything else, behind the token).
A lease is a session of the server's :class:`~volsam.serve.store.SessionStore`, with its
:class:`~volsam.serve.nninteractive.LeaseState` in :attr:`ServerState.leases`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from volsam.serve import wire
from volsam.serve.budget import image_bytes, load_bytes, session_bytes
from volsam.serve.nninteractive import (
    BUFFER_DTYPES,
    LEASE_HEADER,
    LeaseState,
    answer,
    bad,
    box_of,
    capabilities_of,
    check_lasso,
    decode,
    flag,
    json_object,
    marked_voxels,
    meta_of,
    nothing,
    one_line,
    point_of,
    ready,
    shown,
    spacing_of,
)
from volsam.serve.state import ServerState, State, check_token
from volsam.serve.wire import peek
from volsam.session import Session

public = APIRouter(tags=["nnInteractive protocol"])
router = APIRouter(dependencies=[Depends(check_token)], tags=["nnInteractive protocol"])

Token = Annotated[str | None, Header(alias=LEASE_HEADER)]
"""The lease token a request carries (``X-Lease-Token``)."""


@contextmanager
def leased(srv: ServerState, token: str | None) -> Iterator[tuple[Session, LeaseState]]:
    """The lease's session (locked for this request) and protocol state; 410 for a missing, unknown or
    expired lease, 400 for a ValueError (bad input) inside."""
    if not token:
        raise HTTPException(410, f"lease token missing ({LEASE_HEADER}); POST /claim first")
    try:
        with srv.store.use(token) as s:
            try:
                yield s, srv.leases.setdefault(s, LeaseState())
            except ValueError as e:
                raise bad(one_line(e)) from e
    except HTTPException as e:
        if e.status_code == 404:  # unknown to the store: the client's "expired or unknown lease"
            raise HTTPException(410, "lease expired or unknown; claim a new one") from e
        raise


@contextmanager
def lease_busy(srv: ServerState, token: str | None) -> Iterator[None]:
    """Mark the lease in use (never evicted) while its body arrives and decodes: checked, 410 for a
    missing, unknown or expired lease, before a byte of the body is read."""
    if not token:
        raise HTTPException(410, f"lease token missing ({LEASE_HEADER}); POST /claim first")
    with ExitStack() as stack:
        try:
            stack.enter_context(srv.store.busy(token))
        except HTTPException as e:
            if e.status_code == 404:
                raise HTTPException(410, "lease expired or unknown; claim a new one") from e
            raise
        yield


def _voxel_budget(srv: ServerState) -> int:
    return srv.max_voxels if srv.max_voxels is not None else 1 << 62  # None: no limit


def _declared_length(request: Request, srv: ServerState) -> int:
    """Bytes the body will hold: its Content-Length, or the upload limit when it is chunked; 413 over it."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        if int(length) > srv.upload_bytes:
            raise HTTPException(413, f"request body larger than the limit of {srv.upload_mb:g} MB")
        return int(length)
    return srv.upload_bytes


async def read_body(request: Request, srv: ServerState) -> bytes:
    """The request body, 413 as soon as it passes the upload limit (declared or streamed)."""
    _declared_length(request, srv)
    parts, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > srv.upload_bytes:
            raise HTTPException(413, f"request body larger than the limit of {srv.upload_mb:g} MB")
        parts.append(chunk)
    return b"".join(parts)


@asynccontextmanager
async def packed_body(request: Request, srv: ServerState, token: str | None) -> AsyncIterator[bytes]:
    """A packed-array body, read only once the lease is known good, with the lease marked in use and the
    body's bytes held in the memory budget (503 when they do not fit) until the block ends."""
    with lease_busy(srv, token), srv.store.reserved(_declared_length(request, srv)):
        yield await read_body(request, srv)


async def _json_of(request: Request, srv: ServerState) -> dict[str, Any]:
    return json_object(await read_body(request, srv))


def _idle_left(srv: ServerState, token: str | None) -> float:
    if not token:
        raise HTTPException(410, f"lease token missing ({LEASE_HEADER})")
    left = srv.store.idle_left_s(token)
    if left is None:
        raise HTTPException(410, "lease expired or unknown; claim a new one")
    return left


@public.get("/healthz")
def healthz() -> dict[str, Any]:
    """Liveness (no token: it holds no data)."""
    return {"ok": True}


@router.get("/capabilities")
def capabilities(srv: State) -> dict[str, Any]:
    """What the loaded model takes (interactions, initial label, undo) and the licence of its weights."""
    if not srv.capabilities:
        srv.capabilities.update(capabilities_of(srv.new_session(), srv.licence))
    return srv.capabilities


@router.post("/claim")
def claim(srv: State) -> dict[str, Any]:
    """A new lease (a volsam session; the least recently used idle one is evicted when full)."""
    sid = srv.store.add(srv.new_session(), session_bytes(0))
    return {
        "lease_token": sid,
        "idle_timeout_seconds": float(srv.store.idle_timeout_s),
        "liveness_timeout_seconds": 0.0,  # no liveness reaping: the idle timeout alone ends a lease
        "max_sessions": srv.store.max_sessions,
    }


@router.post("/release")
def release(srv: State, token: Token = None) -> dict[str, Any]:
    """End a lease (idempotent)."""
    if token:
        try:
            srv.store.remove(token)
        except HTTPException:
            pass
    return {"released": True}


@router.post("/heartbeat")
def heartbeat(srv: State, token: Token = None) -> dict[str, Any]:
    """Seconds left before the lease expires idle (a heartbeat does not count as activity)."""
    return {"remaining_seconds": _idle_left(srv, token)}


@router.get("/lease_status")
def lease_status(srv: State, token: Token = None) -> dict[str, Any]:
    return {"remaining_seconds": _idle_left(srv, token), "idle_timeout_seconds": float(srv.store.idle_timeout_s)}


def _set_image(srv: ServerState, token: str, raw: bytes, spacing: list[float]) -> dict[str, Any]:
    try:
        voxels, itemsize = peek(raw)
    except ValueError:
        voxels, itemsize = 0, 0  # decode() below says what is wrong with it
    need = load_bytes(voxels, itemsize) + image_bytes(voxels) if voxels <= _voxel_budget(srv) else 0
    with srv.store.reserved(need) as room:  # before decoding; the old image stays until the new one is set
        image = decode(raw, max_elements=_voxel_budget(srv), ndim=4, dtypes=wire.NUMERIC_DTYPES - {"bool"})
        if image.shape[0] != 1 or min(image.shape[1:]) < 1:
            raise bad(f"expected an image [1, x, y, z] (one channel), got shape {list(image.shape)}")
        # Slab by slab: a whole-volume isfinite would allocate a bool per voxel.
        if image.dtype.kind == "f" and not all(np.isfinite(slab).all() for slab in image[0]):
            raise bad("the image holds NaN or infinite values")
        with leased(srv, token) as (s, lease):
            s.set_image(np.asarray(image[0], dtype=np.float32), np.diag([*spacing, 1.0]))
            lease.image_shape, lease.sent, lease.pending = tuple(image.shape), None, False
            srv.store.charge(token, session_bytes(voxels), room)
            return {"original_image_shape": list(image.shape)}


@router.post("/set_image")
async def set_image(request: Request, srv: State, token: Token = None) -> dict[str, Any]:
    """The image as a packed 4D array [c, x, y, z] (one channel) with ``image_properties.spacing``."""
    spacing = spacing_of(meta_of(request))
    async with packed_body(request, srv, token) as raw:
        return await run_in_threadpool(_set_image, srv, str(token), raw, spacing)


def _set_target_buffer(srv: ServerState, token: str | None, shape: Any) -> dict[str, Any]:
    with leased(srv, token) as (s, lease):
        if lease.image_shape is None:
            raise bad("call set_image before set_target_buffer")
        if shape != list(lease.image_shape[1:]):
            raise bad(f"target buffer shape must be the image's {list(lease.image_shape[1:])}, got {shown(shape)}")
        lease.sent, lease.pending = np.zeros(s.volume.shape, dtype=np.uint8), False
        return {}


@router.post("/set_target_buffer")
async def set_target_buffer(request: Request, srv: State, token: Token = None) -> dict:
    """Shape (the image's x, y, z) and dtype of the client's mask buffer; it starts empty."""
    payload = await _json_of(request, srv)
    shape, dtype = payload.get("shape"), payload.get("dtype")
    if not isinstance(dtype, str) or dtype not in BUFFER_DTYPES:
        raise bad(f"target buffer dtype must be one of {', '.join(sorted(BUFFER_DTYPES))}, got {shown(dtype)}")
    return await run_in_threadpool(_set_target_buffer, srv, token, shape)


@router.post("/set_do_autozoom")
async def set_do_autozoom(request: Request, srv: State, token: Token = None) -> dict:
    """Accepted for compatibility; volsam grows windows along a large target instead of zooming out."""
    payload = await _json_of(request, srv)
    flag(payload, "do_autozoom", True)
    with leased(srv, token):
        return {}


@router.post("/reset_interactions")
def reset_interactions(srv: State, token: Token = None) -> dict[str, Any]:
    """Forget every interaction; the client empties its buffer."""
    with leased(srv, token) as (s, lease):
        if lease.image_shape is not None:
            s.reset()
        if lease.sent is not None:
            lease.sent[:] = 0
        lease.pending = False
        return {}


def _add_point(srv: ServerState, token: str | None, point: Any, positive: bool, run_prediction: bool) -> Response:
    with leased(srv, token) as (s, lease):
        ready(s, lease)
        s.add_click(point, positive=positive)
        return answer(s, lease, run_prediction)


@router.post("/add_point_interaction")
async def add_point(request: Request, srv: State, token: Token = None) -> Response:
    """A click at voxel ``coordinates`` [x, y, z]; ``include_interaction`` false: negative."""
    payload = await _json_of(request, srv)
    point = point_of(payload)
    positive, run_prediction = flag(payload, "include_interaction", True), flag(payload, "run_prediction", True)
    return await run_in_threadpool(_add_point, srv, token, point, positive, run_prediction)


def _add_bbox(srv: ServerState, token: str | None, corners: Any, positive: bool, run_prediction: bool) -> Response:
    with leased(srv, token) as (s, lease):
        ready(s, lease)
        s.add_box(*corners, positive=positive)
        return answer(s, lease, run_prediction)


@router.post("/add_bbox_interaction")
async def add_bbox(request: Request, srv: State, token: Token = None) -> Response:
    """A box ``bbox_coords`` [[x0, x1], [y0, y1], [z0, z1]] (half-open voxel ranges); one slice thick
    along an axis is a 2D box (the whole 3D object is segmented)."""
    payload = await _json_of(request, srv)
    corners = box_of(payload)
    positive, run_prediction = flag(payload, "include_interaction", True), flag(payload, "run_prediction", True)
    return await run_in_threadpool(_add_bbox, srv, token, corners, positive, run_prediction)


def _add_mask(srv: ServerState, token: str | None, raw: bytes, kind: str, positive: bool, run: bool) -> Response:
    with leased(srv, token) as (s, lease):
        shape = ready(s, lease)
        marks = decode(raw, max_elements=_voxel_budget(srv), shape=shape)
        voxels = marked_voxels(marks, kind, srv.max_prompt_voxels)
        if kind == "scribble":
            del marks  # the image-sized array is no longer needed
            s.add_scribble(voxels, positive=positive)
        else:
            check_lasso(voxels, srv.max_prompt_voxels)
            s.add_lasso(marks, positive=positive)
        return answer(s, lease, run)


async def _mask_interaction(request: Request, srv: ServerState, token: str | None, kind: str) -> Response:
    meta = meta_of(request)
    positive, run_prediction = flag(meta, "include_interaction", True), flag(meta, "run_prediction", True)
    async with packed_body(request, srv, token) as raw:
        return await run_in_threadpool(_add_mask, srv, token, raw, kind, positive, run_prediction)


@router.post("/add_scribble_interaction")
async def add_scribble(request: Request, srv: State, token: Token = None) -> Response:
    """A scribble: packed image-shaped array, non-zero on the stroke."""
    return await _mask_interaction(request, srv, token, "scribble")


@router.post("/add_lasso_interaction")
async def add_lasso(request: Request, srv: State, token: Token = None) -> Response:
    """A lasso: packed image-shaped array, non-zero inside the filled polygon (on one slice)."""
    return await _mask_interaction(request, srv, token, "lasso")


def _add_initial_seg(srv: ServerState, token: str | None, raw: bytes) -> Response:
    with leased(srv, token) as (s, lease):
        shape = ready(s, lease)
        initial = decode(raw, max_elements=_voxel_budget(srv), shape=shape)
        s.set_initial_mask(initial)
        lease.sent = (initial != 0).astype(np.uint8)  # the client wrote it into its buffer itself
        lease.pending = False
        return answer(s, lease, run_prediction=False)


@router.post("/add_initial_seg_interaction")
async def add_initial_seg(request: Request, srv: State, token: Token = None) -> Response:
    """An existing segmentation to edit (packed, image-shaped, non-zero = object); it replaces the
    interactions so far and stays the mask until prompts refine it. The client already holds it."""
    flag(meta_of(request), "run_prediction", False)  # validated; volsam has no prompt-free refinement to run
    async with packed_body(request, srv, token) as raw:
        return await run_in_threadpool(_add_initial_seg, srv, token, raw)


@router.post("/undo")
def undo(srv: State, token: Token = None) -> Response:
    """Undo the last interaction; answers the restored box (``ran_prediction`` false: nothing to undo)."""
    with leased(srv, token) as (s, lease):
        ready(s, lease)
        try:
            s.undo()
        except ValueError:  # nothing to undo
            return nothing()
        return answer(s, lease)


@router.post("/predict")
def predict(srv: State, token: Token = None) -> Response:
    """Send what interactions added with ``run_prediction`` false changed (volsam predicts at once)."""
    with leased(srv, token) as (s, lease):
        ready(s, lease)
        return answer(s, lease) if lease.pending else nothing()
