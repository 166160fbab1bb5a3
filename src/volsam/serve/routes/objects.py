"""The objects of a REST session, for the viewer's object list: list them, pick the one prompts edit, clear
one, and paint (brush/eraser) the current one by hand.

- ``GET /sessions/{sid}/objects`` -> ``{"current", "objects": [{"label", "voxels", "volume_ml", "current"}]}``;
- ``POST /sessions/{sid}/objects/{label}/select``: later prompts and paint edit object ``label``;
- ``DELETE /sessions/{sid}/objects/{label}``: clear it (its label stays, empty; undoable);
- ``POST /sessions/{sid}/paint`` ``{"points", "erase", "world"}``: force voxels into (out of) the current
  object; no model runs; undoable.

Each but the listing answers a :class:`~volsam.serve.schemas.PromptResult` for the current object; an
unknown label is HTTP 400 (the session's ValueError), like a bad prompt.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends

from volsam.serve.routes.prompts import _result, prompting
from volsam.serve.schemas import ObjectList, PaintRequest, PromptResult
from volsam.serve.state import State, check_token

router = APIRouter(dependencies=[Depends(check_token)])


@router.get("/sessions/{sid}/objects", response_model=ObjectList)
def list_objects(sid: str, srv: State) -> dict[str, Any]:
    """Every object of the session, in label order, with its visible voxels and volume (ml)."""
    with prompting(srv, sid) as s:
        return {
            "current": s.current_label,
            "objects": [
                {"label": o.label, "voxels": o.voxels, "volume_ml": o.volume_ml, "current": o.current}
                for o in s.object_labels
            ],
        }


@router.post("/sessions/{sid}/objects/{label}/select", response_model=PromptResult)
def select_object(sid: str, label: int, srv: State) -> PromptResult:
    """Make object ``label`` the one later prompts and paint edit."""
    with prompting(srv, sid) as s:
        t0 = time.perf_counter()
        s.select_object(label)
        return _result(s, s.mask, t0)


@router.delete("/sessions/{sid}/objects/{label}", response_model=PromptResult)
def delete_object(sid: str, label: int, srv: State) -> PromptResult:
    """Clear object ``label`` (undoable); the answer describes the current object."""
    with prompting(srv, sid) as s:
        t0 = time.perf_counter()
        s.delete_object(label)
        return _result(s, s.mask, t0)


@router.post("/sessions/{sid}/paint", response_model=PromptResult)
def paint(sid: str, req: PaintRequest, srv: State) -> PromptResult:
    """Brush (or eraser, ``erase``) voxels into (out of) the current object."""
    with prompting(srv, sid) as s:
        t0 = time.perf_counter()
        return _result(s, s.paint(np.asarray(req.points), erase=req.erase, world=req.world), t0)
