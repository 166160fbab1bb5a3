"""Prompting a REST session's current object: clicks, boxes, scribbles, lassos, undo, reset and new
objects (``POST /sessions/{sid}/...``); each answers a :class:`~volsam.serve.schemas.PromptResult`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException

from volsam.serve.schemas import BoxRequest, ClickRequest, LassoRequest, PromptResult, ScribbleRequest
from volsam.serve.state import ServerState, State, check_token
from volsam.session import MAX_OBJECTS, Session

router = APIRouter(dependencies=[Depends(check_token)])


@contextmanager
def prompting(srv: ServerState, sid: str) -> Iterator[Session]:
    """Session ``sid``, locked for this request; a ValueError from it (a bad prompt) becomes HTTP 400."""
    with srv.store.use(sid) as s:
        try:
            yield s
        except ValueError as e:
            raise HTTPException(400, " ".join(str(e).split())) from e


def _result(session: Session, mask: Any, t0: float) -> PromptResult:
    return PromptResult(
        voxels=int(np.count_nonzero(mask)),  # not sum(): that widens every voxel to int64 first
        latency_ms=round((time.perf_counter() - t0) * 1e3, 3),
        object=session.current_label,
        clicks=session.num_clicks,
    )


def _check_lasso_area(polygon: np.ndarray, shape: tuple[int, ...], axis: int, limit: int) -> None:
    """400 when the polygon's bounding box, clipped to the slice, holds more than ``limit`` voxels: filling
    it costs in proportion to that box (a non-finite polygon is left to the session, which refuses it)."""
    if not np.isfinite(polygon).all():
        return
    plane = np.asarray([n for a, n in enumerate(shape) if a != axis])
    lo = np.clip(np.floor(polygon.min(axis=0)), 0, plane - 1)
    hi = np.clip(np.ceil(polygon.max(axis=0)), 0, plane - 1)
    area = int(np.prod(hi - lo + 1))
    if area > limit:
        raise HTTPException(400, f"a lasso's bounding box may hold at most {limit} voxels, this one holds {area}")


@router.post("/sessions/{sid}/clicks", response_model=PromptResult)
def add_click(sid: str, req: ClickRequest, srv: State) -> PromptResult:
    """Add a positive or negative click to the current object."""
    with prompting(srv, sid) as s:
        t0 = time.perf_counter()
        return _result(s, s.add_click(req.point, positive=req.positive, world=req.world), t0)


@router.post("/sessions/{sid}/box", response_model=PromptResult)
def add_box(sid: str, req: BoxRequest, srv: State) -> PromptResult:
    """Segment the current object inside a 3D box given by two opposite corners."""
    with prompting(srv, sid) as s:
        t0 = time.perf_counter()
        return _result(s, s.add_box(req.lo, req.hi, world=req.world), t0)


@router.post("/sessions/{sid}/scribble", response_model=PromptResult)
def add_scribble(sid: str, req: ScribbleRequest, srv: State) -> PromptResult:
    """Add a positive or negative scribble (its voxels) to the current object."""
    with prompting(srv, sid) as s:
        t0 = time.perf_counter()
        return _result(s, s.add_scribble(np.asarray(req.points), positive=req.positive, world=req.world), t0)


@router.post("/sessions/{sid}/lasso", response_model=PromptResult)
def add_lasso(sid: str, req: LassoRequest, srv: State) -> PromptResult:
    """Add a positive or negative lasso (a closed polygon on one slice) to the current object."""
    with prompting(srv, sid) as s:
        t0 = time.perf_counter()
        polygon = np.asarray(req.polygon, dtype=np.float64)
        _check_lasso_area(polygon, s.volume.shape, req.axis, srv.max_prompt_voxels)
        mask = s.add_lasso(polygon, axis=req.axis, index=req.index, positive=req.positive)
        return _result(s, mask, t0)


@router.post("/sessions/{sid}/undo", response_model=PromptResult)
def undo(sid: str, srv: State) -> PromptResult:
    """Undo the last click, box or new object (400 when there is nothing to undo)."""
    with prompting(srv, sid) as s:
        t0 = time.perf_counter()
        return _result(s, s.undo(), t0)


@router.post("/sessions/{sid}/reset", response_model=PromptResult)
def reset(sid: str, srv: State) -> PromptResult:
    """Forget all clicks and objects; keep the image."""
    with prompting(srv, sid) as s:
        t0 = time.perf_counter()
        s.reset()
        return _result(s, s.mask, t0)


@router.post("/sessions/{sid}/objects", response_model=PromptResult)
def new_object(sid: str, srv: State) -> PromptResult:
    """Start a new object (next label) in the same label map; 409 past ``MAX_OBJECTS`` (255) objects."""
    with prompting(srv, sid) as s:
        t0 = time.perf_counter()
        if s.num_objects >= MAX_OBJECTS:
            raise HTTPException(409, f"a session holds at most {MAX_OBJECTS} objects (one uint8 label map)")
        s.new_object()
        return _result(s, s.mask, t0)
