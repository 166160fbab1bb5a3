"""REST API over :class:`volsam.session.Session` (FastAPI; OpenAPI at ``/docs`` and ``/openapi.json``).

One server holds several sessions, each one image with its clicks and objects, addressed by an id.

Endpoints (all JSON unless noted; points are voxel indices (i, j, k) of the image array, or mm RAS+ with
``"world": true``):

- ``POST /sessions``: multipart upload (field ``file``; .nii, .nii.gz, .nrrd, .mha) or JSON
  ``{"path": "rel/path.nii.gz"}`` (a file, or a DICOM series folder) under ``data_root``
  -> ``{"id", "shape", "spacing", "affine"}``; ``POST /sessions/demo``: the bundled demo volume.
- ``GET /sessions/{id}``: shape, objects and clicks of the current object.
- ``POST /sessions/{id}/clicks`` ``{"point", "positive", "world"}`` -> ``{"voxels", "latency_ms", "object",
  "clicks"}``; ``POST /sessions/{id}/box`` ``{"lo", "hi", "world"}`` (corners equal along one axis: a box
  drawn on one slice, which gives the 3D object); ``POST /sessions/{id}/scribble`` ``{"points", "positive",
  "world"}``; ``POST /sessions/{id}/lasso`` ``{"polygon", "axis", "index", "positive"}``;
  ``POST /sessions/{id}/undo``;
  ``POST /sessions/{id}/reset``; ``POST /sessions/{id}/objects`` (start a new object).
- Objects (the viewer's list): ``GET /sessions/{id}/objects``, ``POST /sessions/{id}/objects/{label}/select``,
  ``DELETE /sessions/{id}/objects/{label}``, ``POST /sessions/{id}/paint`` ``{"points", "erase", "world"}``
  (brush/eraser): see :mod:`volsam.serve.routes.objects`.
- ``GET /sessions/{id}/labels?format=auto|nii.gz|nrrd|mha|dcm``: the label map file on the image grid
  (``auto``, the default: the image's own format, DICOM-SEG for a DICOM series).
- ``GET /sessions/{id}/overlay?order=C|F``: the label map as gzip-compressed raw bytes (``application/gzip``)
  of the (X, Y, Z) image array, C order (byte ``(i * Y + j) * Z + k`` is voxel (i, j, k)) or F order
  (NIfTI's, i fastest); headers ``X-Shape`` (``X,Y,Z``), ``X-Dtype`` (``uint8``: at most 255 objects) and
  ``X-Order``.
- ``GET /sessions/{id}/image``: the image as .nii.gz (what the viewer displays).
- ``GET /``: the NiiVue viewer (``static/``), served without the token (it holds no data).
- ``DELETE /sessions/{id}``.
- nnInteractive's remote protocol (``/claim``, ``/set_image``, ``/add_*_interaction``, ...; what the 3D Slicer
  and napari nnInteractive plugins speak), on the same sessions: see :mod:`volsam.serve.nninteractive`.
- With a datastore (``volsam serve --datastore DIR|URL``): ``GET /datastore/images``, ``POST
  /datastore/images/{image}/session``, ``GET /sessions/{id}/datastore``, ``POST /sessions/{id}/datastore/save``
  and ``/resume``: pick an image from a folder or a PACS, continue from its saved label, save versions
  (DICOMweb: and a DICOM-SEG to the PACS); see :mod:`volsam.serve.routes.datastore`.

Errors: 400 bad prompt (e.g. a click outside the volume; the message says why), unreadable or empty image,
an image declaring more than ``max_voxels`` voxels (refused from its header, before any voxel is read), or
an .mha/.nrrd whose header names a separate data file (uploads: always refused, it could point anywhere;
``{"path"}``: refused unless it resolves inside ``data_root``); 401 missing/wrong bearer token; 403 path
outside ``data_root`` or path-based creation without one; 404 unknown session or file; 409 a session
already holding ``MAX_OBJECTS`` (255) objects; 410 expired session; 413 upload larger than
``max_upload_mb`` (counted while it streams in) or a JSON body over 64 KiB; 415 unsupported upload type;
503 with ``Retry-After`` when a new session or image does not fit (checked before the upload is read or
decoded): ``max_sessions`` are live, or the memory budget ``max_memory`` would be exceeded, and no session
may be evicted.

Lifetime: a session idle for ``idle_timeout_s`` expires. When a new session or image needs room, the least
recently used sessions idle for at least ``min_idle_s`` are evicted (never one running a request or
receiving an image); clients of an expired or evicted session get
410 ``session expired after N s idle`` (the ids of the last 4096 expired sessions are remembered; older
ones give 404). Requests on one session are serialised by a per-session lock; different sessions run
concurrently and share one model (loaded with the first session; no session outlives its DELETE or expiry).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from volsam.datastore import Datastore, open_datastore
from volsam.io import DEFAULT_MAX_VOXELS
from volsam.serve.budget import default_max_bytes
from volsam.serve.errors import validation_error
from volsam.serve.nninteractive import weights_licence
from volsam.serve.routes import datastore as datastore_routes
from volsam.serve.routes import exports, health, nninteractive, objects, prompts, sessions, viewer
from volsam.serve.routes.viewer import STATIC_DIR as STATIC_DIR
from volsam.serve.state import DEFAULT_MAX_PROMPT_VOXELS, ModelLoader, ServerState
from volsam.serve.store import DEFAULT_MIN_IDLE_S, SessionStore
from volsam.serve.uploads import DEFAULT_BODY_STALL_S, _BodyLimit
from volsam.serve.uploads import MAX_JSON_BYTES as MAX_JSON_BYTES
from volsam.serve.uploads import UPLOAD_SUFFIXES as UPLOAD_SUFFIXES
from volsam.session import Session

LABEL_FORMATS = ("nii.gz", "nrrd", "mha")


def create_app(
    model: Any = None,
    *,
    data_root: str | Path | None = None,
    token: str | None = None,
    max_sessions: int = 8,
    idle_timeout_s: float = 900,
    max_upload_mb: float = 512,
    session_factory: Callable[[], Session] | None = None,
    device: str | None = None,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    datastore: Datastore | str | Path | None = None,
    max_prompt_voxels: int = DEFAULT_MAX_PROMPT_VOXELS,
    min_idle_s: float = DEFAULT_MIN_IDLE_S,
    max_memory: int | Literal["auto"] | None = "auto",
    body_stall_s: float = DEFAULT_BODY_STALL_S,
) -> FastAPI:
    """Build the FastAPI app (see the module docstring for the API).

    Args:
        model: what :class:`~volsam.session.Session` accepts (name, checkpoint, export folder, Sam3D, None);
            loaded once, on the first session, and shared by all sessions.
        data_root: folder that ``{"path": ...}`` requests may read from; None disables path-based creation.
        token: when set, every API request needs ``Authorization: Bearer <token>``.
        session_factory: builds an empty Session (overrides ``model``/``device``; used by tests).
        max_voxels: largest image a session may hold, checked against the file's header before any voxel
            is read (:data:`volsam.io.DEFAULT_MAX_VOXELS`, 2^28: 1 GiB as float32); None: no limit.
        datastore: images and labels to serve (:mod:`volsam.datastore`): a Datastore, or a folder or
            DICOMweb URL for :func:`~volsam.datastore.open_datastore` (credentials from the environment);
            None: no datastore routes answer (404).
        max_prompt_voxels: most voxels a scribble or lasso may mark, and a lasso's box on its slice may hold
            (:data:`volsam.serve.state.DEFAULT_MAX_PROMPT_VOXELS`, 2^20); refused with 400 beyond.
        idle_timeout_s: a session idle this long expires (410 afterwards).
        min_idle_s: a session may be evicted for a new one only once idle this long; never while in use.
        max_memory: bytes all sessions together may hold, as :mod:`volsam.serve.budget` accounts them;
            ``"auto"``: half the memory available at start; None: no budget. New work beyond it is evicted
            for, or refused with 503 and Retry-After.
        body_stall_s: a request body that sends no byte for this long gets 408 and its connection is
            closed (the header timeout is uvicorn's side: :func:`volsam.serve.server.server_options`).
    """
    root = Path(data_root).expanduser() if data_root is not None else None
    if root is not None and not root.is_dir():
        raise ValueError(f"data root {root} is not a directory")
    state = ServerState(
        store=SessionStore(
            max_sessions,
            idle_timeout_s,
            min_idle_s=min_idle_s,
            max_bytes=default_max_bytes() if max_memory == "auto" else max_memory,
        ),
        new_session=ModelLoader(model, device, session_factory),
        data_root=root,
        upload_bytes=int(max_upload_mb * 2**20),
        max_voxels=max_voxels,
        max_prompt_voxels=max_prompt_voxels,
        token=token,
        licence=weights_licence(model) if session_factory is None else "!!MISSING!!",
        datastore=open_datastore(datastore) if isinstance(datastore, str | Path) else datastore,
    )
    app = FastAPI(
        title="volsam",
        summary="Promptable 3D segmentation of CT/MRI volumes",
        description=__doc__ or "",
    )
    app.state.server, app.state.store = state, state.store  # routes read app.state.server (volsam.serve.state)
    app.add_middleware(_BodyLimit, upload_bytes=state.upload_bytes, stall_s=body_stall_s)
    app.add_exception_handler(RequestValidationError, validation_error)
    # One line per router. The API's routers check the token; the viewer's page and scripts (no data in
    # them) do not, so a browser can load them and then send the token the user types with every API call.
    app.include_router(sessions.router)
    app.include_router(prompts.router)
    app.include_router(objects.router)
    app.include_router(exports.router)
    app.include_router(health.router)
    app.include_router(datastore_routes.router)
    # nnInteractive's remote protocol (3D Slicer / napari plugins) over the same store, model, limits and token.
    app.include_router(nninteractive.public)
    app.include_router(nninteractive.router)
    app.include_router(viewer.router)
    viewer.mount_static(app)
    return app
