"""Datastore endpoints (``volsam serve --datastore DIR|URL``; :mod:`volsam.datastore`): pick an image from
a folder or a PACS, open it in a session that continues from its saved label, save, resume.

All JSON, behind the server's bearer token like the rest of the API; absent (404) when the server has no
datastore. ``IMAGE`` is an image id from the list (local: the file name without extension; DICOMweb: the
SeriesInstanceUID); ``SID`` a session id.

- ``GET /datastore/images`` -> ``{"location", "backend": "local"|"dicomweb", "images": [{"id", "name",
  "status": "none"|"original"|"final", "labels": {"original": 1, "final": 3}, "meta": {...}}]}``
  (``labels``: the latest saved version per kind; ``meta.remote_segs``: SEGs in the PACS for the series).
- ``POST /datastore/images/{IMAGE}/session`` ``{"restore": true}`` (body optional) -> 201 ``{"id", "shape",
  "spacing", "affine", "image_id", "version", "objects"}``: a new session on the image (DICOMweb: retrieved
  into the server's cache first). With ``restore``, the latest ``final`` label is loaded, one object per
  label, each as an initial mask, so the next click continues from it; ``version`` is that label's
  version (null: none saved). The session is then used with the ordinary ``/sessions/{id}/...`` routes.
- ``GET /sessions/{SID}/datastore`` -> ``{"image_id", "version", "latest": {"original": n, "final": n}}``:
  the version the session's next save builds on, and what is saved now.
- ``POST /sessions/{SID}/datastore/save`` ``{"kind": "final"|"original", "force": false}`` (body optional)
  -> ``{"image_id", "kind", "version", "pushed", "remote": {"seg_series_instance_uid",
  "seg_sop_instance_uid", "url"}}``: the session's label map saved as a new version (never overwriting
  one); DICOMweb: a ``final`` label is also stored to the PACS as DICOM-SEG (``pushed``). The session's
  next save builds on the new version.
- ``POST /sessions/{SID}/datastore/resume`` -> ``{"image_id", "version", "objects"}``: replace the session's
  objects by the latest saved ``final`` label (after a conflict, or to pick up someone else's save).

Errors (``detail``: one line, never credentials): 400 an irregular series (missing slice, uneven spacing)
or unreadable image; 404 no datastore, unknown image, a session not opened from the datastore, or nothing
saved to resume from; 409 conflict: someone saved a newer version since this session's (header
``X-Latest-Version``; resume, or save with ``"force": true`` to keep both); 502 the PACS is unreachable,
slow (timeout) or refused the request; on save, the label was already saved locally (the message names
the version, and the session builds on it) and ``volsam datastore push`` sends it later; 503 server full.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException

from volsam.datastore import (
    Datastore,
    DatastoreError,
    LabelConflictError,
    PushError,
    SeriesGeometryError,
    restore_labels,
)
from volsam.io import ImageReadError
from volsam.serve.budget import session_bytes
from volsam.serve.routes.sessions import info
from volsam.serve.schemas import (
    DatastoreImages,
    DatastoreSession,
    OpenRequest,
    SaveRequest,
    SaveResult,
    SessionBinding,
)
from volsam.serve.state import ServerState, State, check_token
from volsam.session import Session

router = APIRouter(dependencies=[Depends(check_token)], tags=["datastore"])


@dataclass
class Binding:
    """Which datastore image a session holds, and the final version its next save builds on (kept in
    ``ServerState.datastore_bindings``, weakly keyed by the session: it goes when the session goes)."""

    image_id: str
    version: int | None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _datastore(srv: ServerState) -> Datastore:
    ds = srv.datastore
    if ds is None:
        raise HTTPException(404, "this server has no datastore (start it with volsam serve --datastore DIR|URL)")
    return ds


def _backend(ds: Datastore) -> str:
    return "dicomweb" if type(ds).__name__ == "DicomwebDatastore" else "local"


@contextmanager
def _errors() -> Iterator[None]:
    """Datastore exceptions as HTTP errors (see the module docstring)."""
    try:
        yield
    except KeyError as e:
        raise HTTPException(404, _one_line(e.args[0] if e.args else e)) from e
    except LabelConflictError as e:
        raise HTTPException(409, _one_line(e), headers={"X-Latest-Version": str(e.latest)}) from e
    except (SeriesGeometryError, ImageReadError) as e:
        raise HTTPException(400, _one_line(e)) from e
    except DatastoreError as e:
        raise HTTPException(502, _one_line(e)) from e
    except ValueError as e:
        raise HTTPException(400, _one_line(e)) from e


def _bound(srv: ServerState, s: Session, sid: str) -> Binding:
    binding = srv.datastore_bindings.get(s)
    if binding is None:
        raise HTTPException(404, f"session {sid} was not opened from the datastore (POST /datastore/images/ID/session)")
    return binding


@router.get("/datastore/images", response_model=DatastoreImages)
def list_images(srv: State) -> dict[str, Any]:
    """Every image of the datastore with its label status."""
    ds = _datastore(srv)
    with _errors():
        images = [e.as_dict() for e in ds.list_images()]
    return {"location": ds.location, "backend": _backend(ds), "images": images}


@router.post("/datastore/images/{image_id}/session", response_model=DatastoreSession, status_code=201)
def open_image(image_id: str, srv: State, req: OpenRequest | None = None) -> dict[str, Any]:
    """Open a datastore image in a new session, continuing from its latest saved final label."""
    ds = _datastore(srv)
    restore = True if req is None else req.restore
    srv.store.check_room()  # before retrieving or decoding: a full server should not pay for the image
    with _errors():
        vol = ds.get_image(image_id, max_voxels=srv.max_voxels)
        saved = ds.get_label(image_id, "final") if restore else None
    voxels = int(np.prod(vol.shape))
    # The session is accounted in the server's memory budget like an uploaded one (503 when it cannot fit).
    with srv.store.reserved(session_bytes(voxels), slot=True) as room:
        session = srv.new_session()
        session.set_image(vol)
        version = None
        if saved is not None:
            with _errors():
                restore_labels(session, saved[0])
            version = saved[1]
        srv.datastore_bindings[session] = Binding(image_id, version)
        sid = srv.store.add(session, session_bytes(voxels), room)
    return {**info(sid, vol), "image_id": image_id, "version": version, "objects": session.num_objects}


@router.get("/sessions/{sid}/datastore", response_model=SessionBinding)
def binding(sid: str, srv: State) -> dict[str, Any]:
    """The datastore image of a session, the version its next save builds on, and the latest saved ones."""
    ds = _datastore(srv)
    with srv.store.use(sid) as s:
        b = _bound(srv, s, sid)
    with _errors():
        latest = next((e.labels for e in ds.list_images() if e.id == b.image_id), {})
    return {"image_id": b.image_id, "version": b.version, "latest": latest}


@router.post("/sessions/{sid}/datastore/save", response_model=SaveResult)
def save(sid: str, srv: State, req: SaveRequest | None = None) -> dict[str, Any]:
    """Save the session's label map as a new version of its image's label (DICOMweb: and push a SEG)."""
    ds = _datastore(srv)
    req = req or SaveRequest()
    with srv.store.use(sid) as s:
        b = _bound(srv, s, sid)
        try:
            with _errors():
                saved = ds.save_label(b.image_id, s.label_map, req.kind, base_version=b.version, force=req.force,
                                      reference=s.volume)
        except HTTPException as e:
            if isinstance(e.__cause__, PushError) and req.kind == "final":
                b.version = e.__cause__.saved.version  # saved locally: the next save builds on it
            raise
        if req.kind == "final":
            b.version = saved.version
    return {"image_id": b.image_id, "kind": req.kind, "version": saved.version, "pushed": bool(saved.remote),
            "remote": saved.remote}


@router.post("/sessions/{sid}/datastore/resume")
def resume(sid: str, srv: State) -> dict[str, Any]:
    """Replace the session's objects by its image's latest saved final label."""
    ds = _datastore(srv)
    with srv.store.use(sid) as s:
        b = _bound(srv, s, sid)
        with _errors():
            saved = ds.get_label(b.image_id, "final")
            if saved is None:
                raise KeyError(f"image {b.image_id} has no saved final label to resume from")
            objects = restore_labels(s, saved[0])
        b.version = saved[1]
    return {"image_id": b.image_id, "version": b.version, "objects": objects}
