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

Errors: 400 bad prompt (e.g. a click outside the volume; the message says why), unreadable or empty image,
an image declaring more than ``max_voxels`` voxels (refused from its header, before any voxel is read), or
an .mha/.nrrd whose header names a separate data file (uploads: always refused, it could point anywhere;
``{"path"}``: refused unless it resolves inside ``data_root``); 401 missing/wrong bearer token; 403 path
outside ``data_root`` or path-based creation without one; 404 unknown session or file; 409 a session
already holding ``MAX_OBJECTS`` (255) objects; 410 expired session; 413 upload larger than
``max_upload_mb`` (counted while it streams in) or a JSON body over 64 KiB; 415 unsupported upload type;
503 every session busy when a new one is needed (checked before the upload is read or decoded).

Lifetime: a session idle for ``idle_timeout_s`` expires. When ``max_sessions`` are live, creating one evicts
the least recently used session that is not running a request; clients of an expired or evicted session get
410 ``session expired after N s idle`` (the ids of the last 4096 expired sessions are remembered; older
ones give 404). Requests on one session are serialised by a per-session lock; different sessions run
concurrently and share one model (loaded with the first session; no session outlives its DELETE or expiry).
"""

from __future__ import annotations

import gzip
import hmac
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from volsam.io import DEFAULT_MAX_VOXELS, ImageReadError, Volume, nifti_bytes, read_image
from volsam.serve.schemas import (
    BoxRequest,
    ClickRequest,
    LassoRequest,
    PathRequest,
    PromptResult,
    ScribbleRequest,
    SessionInfo,
    SessionState,
)
from volsam.serve.store import SessionStore
from volsam.serve.uploads import _CHUNK, _BodyLimit, _upload_suffix, resolve_under
from volsam.serve.uploads import MAX_JSON_BYTES as MAX_JSON_BYTES
from volsam.serve.uploads import UPLOAD_SUFFIXES as UPLOAD_SUFFIXES
from volsam.session import MAX_OBJECTS, Session

_OWN_FORMAT = {"nifti": "nii.gz", "nrrd": "nrrd", "mha": "mha", "mhd": "mha", "dicom": "dcm"}
"""Label-file format ``GET /sessions/{id}/labels?format=auto`` gives for each input format."""

LABEL_FORMATS = ("nii.gz", "nrrd", "mha")
STATIC_DIR = Path(__file__).parent / "static"


def _result(session: Session, mask: Any, t0: float) -> PromptResult:
    return PromptResult(
        voxels=int(np.count_nonzero(mask)),  # not sum(): that widens every voxel to int64 first
        latency_ms=round((time.perf_counter() - t0) * 1e3, 3),
        object=session.current_label,
        clicks=session.num_clicks,
    )


def _info(sid: str, vol: Volume) -> dict[str, Any]:
    return {"id": sid, "shape": vol.shape, "spacing": vol.spacing, "affine": vol.affine.tolist()}


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
    """
    root = Path(data_root).expanduser() if data_root is not None else None
    if root is not None and not root.is_dir():
        raise ValueError(f"data root {root} is not a directory")
    store = SessionStore(max_sessions, idle_timeout_s)
    max_bytes = int(max_upload_mb * 2**20)
    factory_lock = threading.Lock()
    shared: dict[str, Any] = {}

    def new_session() -> Session:
        if session_factory is not None:
            return session_factory()
        # The model is shared, not a session: a session kept as a prototype would hold its image, masks
        # and embeddings for the server's lifetime, after its DELETE.
        with factory_lock:
            if "model" not in shared:
                first = Session(model, device)
                shared["model"], shared["device"] = first.model, first.device
                return first
        onnx = isinstance(model, str | Path) and (Path(model) / "export.json").is_file()
        return Session(model if onnx else shared["model"], shared["device"])

    bearer = HTTPBearer(auto_error=False, description="set when the server runs with --token / VOLSAM_TOKEN")

    def check_token(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if token is None:
            return
        given = cred.credentials if cred is not None and cred.scheme.lower() == "bearer" else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(
        title="volsam",
        summary="Promptable 3D segmentation of CT/MRI volumes",
        description=__doc__ or "",
    )
    app.state.store = store
    app.add_middleware(_BodyLimit, upload_bytes=max_bytes)
    # The API needs the token; the viewer's page and scripts (no data in them) do not, so a browser can
    # load them and then send the token the user types with every API call.
    api = APIRouter(dependencies=[Depends(check_token)])

    def open_session(path: Path, shown: str, data_files: Literal["refuse"] | Path) -> tuple[str, Volume]:
        """Read ``path`` (named ``shown`` in errors) into a new session; detached data files as
        :func:`volsam.io.read_header`'s ``data_files`` says."""
        store.check_room()  # before decoding: a full server should not pay for the image
        try:
            vol = read_image(path, max_voxels=max_voxels, data_files=data_files)
        except ImageReadError as e:
            raise HTTPException(400, " ".join(str(e).replace(str(path), shown).split())) from e
        session = new_session()
        session.set_image(vol)
        return store.add(session), vol

    def from_upload(src: Any, filename: str) -> tuple[str, Volume]:
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
                    if total > max_bytes:
                        raise HTTPException(413, f"upload larger than the limit of {max_upload_mb:g} MB")
                    out.write(chunk)
            return open_session(tmp, tmp.name, "refuse")
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    upload_schema = {
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

    @api.post("/sessions", response_model=SessionInfo, status_code=201, openapi_extra=upload_schema)
    async def create_session(request: Request) -> dict[str, Any]:
        """Create a session from an uploaded image (multipart field ``file``) or ``{"path"}`` under the data root."""
        ctype = request.headers.get("content-type", "")
        store.check_room()  # before the upload streams in (and again before decoding)
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4)
            try:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise HTTPException(400, "multipart upload needs a file field named 'file'")
                sid, vol = await run_in_threadpool(from_upload, upload.file, upload.filename or "")
            finally:
                await form.close()
        elif ctype.startswith("application/json"):
            try:
                req = PathRequest.model_validate(await request.json())
            except ValueError as e:
                raise HTTPException(400, f'expected JSON {{"path": "relative/path.nii.gz"}}: {e}') from e
            path = resolve_under(root, req.path)
            assert root is not None  # resolve_under refuses without one
            sid, vol = await run_in_threadpool(open_session, path, req.path, root)
        else:
            raise HTTPException(415, "send multipart/form-data with a 'file', or JSON {\"path\": ...}")
        return _info(sid, vol)

    @api.get("/sessions/{sid}", response_model=SessionState)
    def get_session(sid: str) -> dict[str, Any]:
        """Geometry and prompt counts of a session."""
        with store.use(sid) as s:
            return {**_info(sid, s.volume), "objects": s.num_objects, "clicks": s.num_clicks}

    @contextmanager
    def prompt(sid: str) -> Iterator[Session]:
        with store.use(sid) as s:
            try:
                yield s
            except ValueError as e:
                raise HTTPException(400, " ".join(str(e).split())) from e

    @api.post("/sessions/{sid}/clicks", response_model=PromptResult)
    def add_click(sid: str, req: ClickRequest) -> PromptResult:
        """Add a positive or negative click to the current object."""
        with prompt(sid) as s:
            t0 = time.perf_counter()
            return _result(s, s.add_click(req.point, positive=req.positive, world=req.world), t0)

    @api.post("/sessions/{sid}/box", response_model=PromptResult)
    def add_box(sid: str, req: BoxRequest) -> PromptResult:
        """Segment the current object inside a 3D box given by two opposite corners."""
        with prompt(sid) as s:
            t0 = time.perf_counter()
            return _result(s, s.add_box(req.lo, req.hi, world=req.world), t0)

    @api.post("/sessions/{sid}/scribble", response_model=PromptResult)
    def add_scribble(sid: str, req: ScribbleRequest) -> PromptResult:
        """Add a positive or negative scribble (its voxels) to the current object."""
        with prompt(sid) as s:
            t0 = time.perf_counter()
            return _result(s, s.add_scribble(np.asarray(req.points), positive=req.positive, world=req.world), t0)

    @api.post("/sessions/{sid}/lasso", response_model=PromptResult)
    def add_lasso(sid: str, req: LassoRequest) -> PromptResult:
        """Add a positive or negative lasso (a closed polygon on one slice) to the current object."""
        with prompt(sid) as s:
            t0 = time.perf_counter()
            mask = s.add_lasso(np.asarray(req.polygon), axis=req.axis, index=req.index, positive=req.positive)
            return _result(s, mask, t0)

    @api.post("/sessions/{sid}/undo", response_model=PromptResult)
    def undo(sid: str) -> PromptResult:
        """Undo the last click, box or new object (400 when there is nothing to undo)."""
        with prompt(sid) as s:
            t0 = time.perf_counter()
            return _result(s, s.undo(), t0)

    @api.post("/sessions/{sid}/reset", response_model=PromptResult)
    def reset(sid: str) -> PromptResult:
        """Forget all clicks and objects; keep the image."""
        with prompt(sid) as s:
            t0 = time.perf_counter()
            s.reset()
            return _result(s, s.mask, t0)

    @api.post("/sessions/{sid}/objects", response_model=PromptResult)
    def new_object(sid: str) -> PromptResult:
        """Start a new object (next label) in the same label map; 409 past ``MAX_OBJECTS`` (255) objects."""
        with prompt(sid) as s:
            t0 = time.perf_counter()
            if s.num_objects >= MAX_OBJECTS:
                raise HTTPException(409, f"a session holds at most {MAX_OBJECTS} objects (one uint8 label map)")
            s.new_object()
            return _result(s, s.mask, t0)

    @api.get(
        "/sessions/{sid}/labels",
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}, "description": "label map file"}},
    )
    def labels(sid: str, format: Literal["auto", "nii.gz", "nrrd", "mha", "dcm"] = "auto") -> Response:
        """The label map (object n has label n) as a file on the image's grid; ``auto``: the image's own
        format (NIfTI, NRRD, MHA, or DICOM-SEG for a DICOM series)."""
        with prompt(sid) as s:
            if format == "auto":
                format = _OWN_FORMAT.get(s.volume.format, "nii.gz")
            if format == "dcm" and s.volume.format != "dicom":
                raise HTTPException(400, f"DICOM-SEG needs a DICOM series; this image is {s.volume.format}")
            tmpdir = tempfile.mkdtemp(prefix="volsam-labels-")
            try:
                data = s.save(Path(tmpdir) / f"labels.{format}").read_bytes()
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="labels.{format}"'},
        )

    @api.get(
        "/sessions/{sid}/overlay",
        response_class=Response,
        responses={200: {"content": {"application/gzip": {}}, "description": "gzip of the raw label map"}},
    )
    def overlay(sid: str, order: Literal["C", "F"] = "C") -> Response:
        """Label map as gzip-compressed raw bytes of the (X, Y, Z) array in C order (k fastest) or F order
        (i fastest, NIfTI's voxel order); see X-Shape, X-Dtype, X-Order."""
        with prompt(sid) as s:
            lm = s.label_map
            data = gzip.compress(lm.tobytes(order=order), compresslevel=1)
        return Response(
            data,
            media_type="application/gzip",
            headers={"X-Shape": ",".join(map(str, lm.shape)), "X-Dtype": str(lm.dtype), "X-Order": order},
        )

    @api.get(
        "/sessions/{sid}/image",
        response_class=Response,
        responses={200: {"content": {"application/gzip": {}}, "description": "the image as .nii.gz"}},
    )
    def image(sid: str) -> Response:
        """The session's image as a gzip-compressed NIfTI-1 file (what the viewer displays)."""
        with store.use(sid) as s:
            vol = s.volume
        return Response(
            nifti_bytes(vol.array, vol),
            media_type="application/gzip",
            headers={"Content-Disposition": 'attachment; filename="image.nii.gz"'},
        )

    @api.post("/sessions/demo", response_model=SessionInfo, status_code=201)
    def create_demo_session() -> dict[str, Any]:
        """Create a session on volsam's bundled demo volume (a crop of the Colin27 T1, see volsam.demo)."""
        from volsam.demo import DEMO_IMAGE

        sid, vol = open_session(DEMO_IMAGE, DEMO_IMAGE.name, "refuse")
        return _info(sid, vol)

    @api.delete("/sessions/{sid}", status_code=204, response_class=Response)
    def delete_session(sid: str) -> Response:
        """Forget a session."""
        store.remove(sid)
        return Response(status_code=204)

    @api.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and the number of live sessions."""
        return {"status": "ok", "sessions": len(store), "max_sessions": store.max_sessions}

    app.include_router(api)
    # nnInteractive's remote protocol (3D Slicer / napari plugins) over the same store, model, limits and token.
    from volsam.serve.nninteractive import nninteractive_router, weights_licence

    app.include_router(
        nninteractive_router(
            store=store,
            new_session=new_session,
            check_token=check_token,
            max_bytes=max_bytes,
            max_voxels=max_voxels,
            licence=weights_licence(model) if session_factory is None else "!!MISSING!!",
        )
    )
    _mount_viewer(app)
    return app


def _mount_viewer(app: FastAPI) -> None:
    """Serve the NiiVue viewer at ``/`` and its files at ``/static`` (see ``scripts/build_viewer.sh``)."""
    if not (STATIC_DIR / "vendor" / "niivue.umd.js").is_file():

        @app.get("/", include_in_schema=False)
        def no_viewer() -> Response:
            return Response(
                "volsam's viewer is not built in this installation: run scripts/build_viewer.sh "
                "(needs npm). The REST API is at /docs.",
                status_code=503,
                media_type="text/plain",
            )

        return

    @app.get("/", include_in_schema=False)
    def viewer() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
