"""nnInteractive's remote protocol on ``volsam serve``, so the plugins built on ``nninteractive-client``
(SlicerNNInteractive, napari-nninteractive) drive volsam unchanged.

The protocol (as ``nninteractive-client`` 2.x speaks it): ``POST /claim`` gives a lease token that every
later request carries in ``X-Lease-Token``; arrays travel as NNIA packed bodies (:mod:`volsam.serve.wire`)
with JSON metadata in the ``X-Meta`` header; ``Authorization: Bearer <api_key>`` is volsam's ``--token``.
Endpoints: ``/healthz`` (no token), ``/capabilities``, ``/claim``, ``/release``, ``/heartbeat``,
``/lease_status``, ``/set_image`` (4D ``[c, x, y, z]``, one channel, ``image_properties.spacing`` in mm; no
orientation: voxel axes are taken as RAS+), ``/set_target_buffer``, ``/add_point_interaction``,
``/add_bbox_interaction`` (half-open ``[[x0, x1], [y0, y1], [z0, z1]]``; one slice thick = a 2D box),
``/add_scribble_interaction``, ``/add_lasso_interaction``, ``/add_initial_seg_interaction``, ``/undo``,
``/reset_interactions``, ``/predict``, ``/set_do_autozoom`` (accepted, no effect). A prediction's answer
is the box of voxels that changed since the last answer (``X-Meta`` ``{"ran_prediction", "bbox"}``, body:
that box of the 0/1 mask, packed), which the client writes into its target buffer.

A lease is a volsam session of the same :class:`~volsam.serve.store.SessionStore` as the REST API: same
model, size limits, token, idle expiry, LRU eviction and per-session lock. An expired or evicted lease
answers 410 (the client raises ``SessionExpiredError``); 503 when every session is busy
(``ServerAtCapacityError``); 400 for bad input, 413 for bodies over the upload limit or arrays over
the voxel limit (checked from the header, before decoding).
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from volsam.serve import wire
from volsam.session import PROMPT_CHANNELS, Session

META_HEADER = "X-Meta"
LEASE_HEADER = "X-Lease-Token"
MAX_VOXELS = 1 << 28
"""Default largest image (voxels over all channels) a lease may set: 256 Mi voxels (1 GiB as float32)."""
BUFFER_DTYPES = frozenset({"bool", "uint8", "uint16", "int16", "int32", "float32"})
PROTOCOL_VERSION = "2.6.0"
"""Reported as ``inference_session_version``: the nnInteractive session API (``nninteractive-client``
2.6.0) these endpoints follow and are tested against; plugins compare it as a version number."""


@dataclass
class _Lease:
    """Protocol state beside a lease's Session: what the client's target buffer holds as far as we sent it."""

    image_shape: tuple[int, ...] | None = None  # [c, x, y, z]
    sent: np.ndarray | None = None  # uint8 (x, y, z): the client's target buffer, as of our last answer
    pending: bool = False  # a prompt added with run_prediction=False whose result was not sent yet


def weights_licence(model: Any) -> str:
    """Licence string of the weights ``create_app(model=...)`` serves, for ``/capabilities``."""
    from volsam.registry import list_models

    if model is None:
        return "Apache-2.0 (volsam's default weights; see MODEL_CARD.md)"
    if isinstance(model, str) and model in list_models():
        return f"none: {model} is randomly initialised (no trained weights)"
    return "!!MISSING!!"  # nnInteractive's marker for an unknown licence: a user-supplied checkpoint


def _volsam_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("volsam")
    except PackageNotFoundError:  # a source checkout on PYTHONPATH
        return "(source)"


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _bad(detail: str) -> HTTPException:
    return HTTPException(400, detail)


def _flag(meta: dict[str, Any], key: str, default: bool) -> bool:
    v = meta.get(key, default)
    if not isinstance(v, bool):
        raise _bad(f"{key} must be true or false, got {v!r}")
    return v


def _changed_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest box (slices) holding every voxel where ``a`` and ``b`` (uint8, same 3D shape, C-contiguous)
    differ; None when equal. Runs once per answer on the whole volume, so it first compares 8 voxels at a
    time to find the changed slabs of axis 0, then voxel by voxel inside them only."""
    n0 = a.shape[0]
    row = a[0].size if n0 else 0
    if row % 8 == 0 and a.flags.c_contiguous and b.flags.c_contiguous:
        words = (a.reshape(-1).view(np.uint64) != b.reshape(-1).view(np.uint64)).reshape(n0, -1)
        rows = np.flatnonzero(words.any(axis=1))
    else:
        rows = np.flatnonzero((a != b).reshape(n0, -1).any(axis=1))
    if rows.size == 0:
        return None
    i0, i1 = int(rows[0]), int(rows[-1]) + 1
    diff = a[i0:i1] != b[i0:i1]
    box = [slice(i0, i1)]
    for axis in (1, 2):
        hit = np.flatnonzero(diff.any(axis=tuple(x for x in range(3) if x != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def nninteractive_router(
    *,
    store: Any,
    new_session: Callable[[], Session],
    check_token: Callable[..., None],
    max_bytes: int,
    max_voxels: int | None = MAX_VOXELS,
    licence: str = "!!MISSING!!",
) -> APIRouter:
    """The protocol's routes over ``store`` (a :class:`~volsam.serve.store.SessionStore`); ``new_session``,
    ``check_token``, ``max_bytes`` (body cap) and ``max_voxels`` (image cap, None: none) are the REST API's
    own, so both share limits and auth."""
    budget = max_voxels if max_voxels is not None else 1 << 62  # None: no limit (as create_app's max_voxels)
    leases: weakref.WeakKeyDictionary[Session, _Lease] = weakref.WeakKeyDictionary()
    caps: dict[str, Any] = {}
    api = APIRouter(dependencies=[Depends(check_token)], tags=["nnInteractive protocol"])
    public = APIRouter(tags=["nnInteractive protocol"])

    @contextmanager
    def leased(token: str | None) -> Iterator[tuple[Session, _Lease]]:
        if not token:
            raise HTTPException(410, f"lease token missing ({LEASE_HEADER}); POST /claim first")
        try:
            with store.use(token) as s:
                try:
                    yield s, leases.setdefault(s, _Lease())
                except ValueError as e:
                    raise _bad(_one_line(e)) from e
        except HTTPException as e:
            if e.status_code == 404:  # unknown to the store: the client's "expired or unknown lease"
                raise HTTPException(410, "lease expired or unknown; claim a new one") from e
            raise

    async def body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise HTTPException(413, f"request body larger than the limit of {max_bytes / 2**20:g} MB")
        parts, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise HTTPException(413, f"request body larger than the limit of {max_bytes / 2**20:g} MB")
            parts.append(chunk)
        return b"".join(parts)

    def meta_of(request: Request) -> dict[str, Any]:
        raw = request.headers.get(META_HEADER)
        if raw is None:
            return {}
        try:
            meta = json.loads(raw)
        except ValueError as e:
            raise _bad(f"{META_HEADER} must be a JSON object: {e}") from e
        if not isinstance(meta, dict):
            raise _bad(f"{META_HEADER} must be a JSON object, got {type(meta).__name__}")
        return meta

    async def json_of(request: Request) -> dict[str, Any]:
        raw = await body(request)
        if not raw:
            return {}
        try:
            payload = json.loads(raw)
        except ValueError as e:
            raise _bad(f"expected a JSON object body: {e}") from e
        if not isinstance(payload, dict):
            raise _bad(f"expected a JSON object body, got {type(payload).__name__}")
        return payload

    def decode(raw: bytes, **kw: Any) -> np.ndarray:
        try:
            return wire.unpack(raw, **kw)
        except ValueError as e:
            msg = _one_line(e)
            raise HTTPException(413 if "over the limit" in msg else 400, msg) from e

    def ready(s: Session, lease: _Lease) -> tuple[int, int, int]:
        if lease.image_shape is None or lease.sent is None:
            raise _bad("call set_image and set_target_buffer before adding interactions")
        return s.volume.shape

    def answer(s: Session, lease: _Lease, run_prediction: bool = True) -> Response:
        """The changed box since the last answer (nothing, with ``run_prediction`` false)."""
        meta: dict[str, Any] = {"ran_prediction": False, "bbox": None}
        content = b""
        if run_prediction and lease.sent is not None:
            mask = s.mask
            box = _changed_box(mask, lease.sent)
            meta["ran_prediction"] = True
            if box is not None:
                sub = np.ascontiguousarray(mask[box])
                lease.sent[box] = sub
                meta.update(bbox=[[b.start, b.stop] for b in box], dtype=str(sub.dtype), shape=list(sub.shape))
                content = wire.pack(sub)
            lease.pending = False
        elif not run_prediction:
            lease.pending = True
        return Response(content, media_type="application/octet-stream", headers={META_HEADER: json.dumps(meta)})

    def capabilities_of(s: Session) -> dict[str, Any]:
        sp = s.supported_prompts
        channels = {"prev_seg": 0}
        for i, kind in enumerate(("points", "bbox", "scribble", "lasso")):
            pair = [1 + 2 * i, 2 + 2 * i]
            channels.update({"bbox2d": pair, "bbox3d": pair} if kind == "bbox" else {kind: pair})
        return {
            "supported_interactions": {
                "points": "point+" in sp,
                "bbox2d": "box+" in sp,
                "bbox3d": "box+" in sp,
                "scribble": "scribble+" in sp,
                "lasso": "lasso+" in sp,
            },
            # volsam's dense prompt channels (Session.prompt_channels, after the previous mask).
            "channel_mapping": channels,
            "num_interaction_channels": 1 + len(PROMPT_CHANNELS),
            "supports_initial_label": "initial" in sp,
            "supports_zero_shot_label_refinement": False,
            "supports_negative_bbox": "box-" in sp,
            "preferred_scribble_thickness": [2, 2, 2],
            "interaction_decay": None,
            "patch_size": [s.size] * 3,
            "do_autozoom": False,
            "supports_undo": True,
            "inference_session_version": PROTOCOL_VERSION,
            "license": licence,
            "server": f"volsam {_volsam_version()}",
            "model": type(s.model).__name__,
        }

    @public.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness (no token: it holds no data)."""
        return {"ok": True}

    @api.get("/capabilities")
    def capabilities() -> dict[str, Any]:
        """What the loaded model takes (interactions, initial label, undo) and the licence of its weights."""
        if not caps:
            caps.update(capabilities_of(new_session()))
        return caps

    @api.post("/claim")
    def claim() -> dict[str, Any]:
        """A new lease (a volsam session; the least recently used idle one is evicted when full)."""
        sid = store.add(new_session())
        return {
            "lease_token": sid,
            "idle_timeout_seconds": float(store.idle_timeout_s),
            "liveness_timeout_seconds": 0.0,  # no liveness reaping: the idle timeout alone ends a lease
            "max_sessions": store.max_sessions,
        }

    @api.post("/release")
    def release(token: str | None = Header(None, alias=LEASE_HEADER)) -> dict[str, Any]:
        """End a lease (idempotent)."""
        if token:
            try:
                store.remove(token)
            except HTTPException:
                pass
        return {"released": True}

    @api.post("/heartbeat")
    def heartbeat(token: str | None = Header(None, alias=LEASE_HEADER)) -> dict[str, Any]:
        """Seconds left before the lease expires idle (a heartbeat does not count as activity)."""
        return {"remaining_seconds": idle_left(token)}

    @api.get("/lease_status")
    def lease_status(token: str | None = Header(None, alias=LEASE_HEADER)) -> dict[str, Any]:
        return {"remaining_seconds": idle_left(token), "idle_timeout_seconds": float(store.idle_timeout_s)}

    def idle_left(token: str | None) -> float:
        if not token:
            raise HTTPException(410, f"lease token missing ({LEASE_HEADER})")
        left = store.idle_left_s(token)
        if left is None:
            raise HTTPException(410, "lease expired or unknown; claim a new one")
        return left

    @api.post("/set_image")
    async def set_image(request: Request, token: str | None = Header(None, alias=LEASE_HEADER)) -> dict[str, Any]:
        """The image as a packed 4D array [c, x, y, z] (one channel) with ``image_properties.spacing``."""
        meta = meta_of(request)
        props = meta.get("image_properties") or {}
        if not isinstance(props, dict):
            raise _bad("image_properties must be a JSON object")
        spacing = props.get("spacing", [1.0, 1.0, 1.0])
        if (
            not isinstance(spacing, list | tuple)
            or len(spacing) != 3
            or not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in spacing)
        ):
            raise _bad(f"image_properties.spacing must be 3 positive numbers (mm), got {spacing!r}")
        raw = await body(request)

        def run() -> dict[str, Any]:
            image = decode(raw, max_elements=budget, ndim=4, dtypes=wire.NUMERIC_DTYPES - {"bool"})
            if image.shape[0] != 1 or min(image.shape[1:]) < 1:
                raise _bad(f"expected an image [1, x, y, z] (one channel), got shape {list(image.shape)}")
            if image.dtype.kind == "f" and not np.isfinite(image).all():
                raise _bad("the image holds NaN or infinite values")
            with leased(token) as (s, lease):
                s.set_image(np.asarray(image[0], dtype=np.float32), np.diag([*map(float, spacing), 1.0]))
                lease.image_shape, lease.sent, lease.pending = tuple(image.shape), None, False
                return {"original_image_shape": list(image.shape)}

        return await run_in_threadpool(run)

    @api.post("/set_target_buffer")
    async def set_target_buffer(request: Request, token: str | None = Header(None, alias=LEASE_HEADER)) -> dict:
        """Shape (the image's x, y, z) and dtype of the client's mask buffer; it starts empty."""
        payload = await json_of(request)
        shape, dtype = payload.get("shape"), payload.get("dtype")
        if dtype not in BUFFER_DTYPES:
            raise _bad(f"target buffer dtype must be one of {', '.join(sorted(BUFFER_DTYPES))}, got {dtype!r}")

        def run() -> dict[str, Any]:
            with leased(token) as (s, lease):
                if lease.image_shape is None:
                    raise _bad("call set_image before set_target_buffer")
                if shape != list(lease.image_shape[1:]):
                    raise _bad(f"target buffer shape must be the image's {list(lease.image_shape[1:])}, got {shape!r}")
                lease.sent, lease.pending = np.zeros(s.volume.shape, dtype=np.uint8), False
                return {}

        return await run_in_threadpool(run)

    @api.post("/set_do_autozoom")
    async def set_do_autozoom(request: Request, token: str | None = Header(None, alias=LEASE_HEADER)) -> dict:
        """Accepted for compatibility; volsam grows windows along a large target instead of zooming out."""
        payload = await json_of(request)
        _flag(payload, "do_autozoom", True)
        with leased(token):
            return {}

    @api.post("/reset_interactions")
    def reset_interactions(token: str | None = Header(None, alias=LEASE_HEADER)) -> dict[str, Any]:
        """Forget every interaction; the client empties its buffer."""
        with leased(token) as (s, lease):
            if lease.image_shape is not None:
                s.reset()
            if lease.sent is not None:
                lease.sent[:] = 0
            lease.pending = False
            return {}

    @api.post("/add_point_interaction")
    async def add_point(request: Request, token: str | None = Header(None, alias=LEASE_HEADER)) -> Response:
        """A click at voxel ``coordinates`` [x, y, z]; ``include_interaction`` false: negative."""
        payload = await json_of(request)
        point = payload.get("coordinates")
        if not isinstance(point, list) or len(point) != 3 or not all(isinstance(v, int | float) for v in point):
            raise _bad(f"coordinates must be 3 numbers [x, y, z], got {point!r}")
        positive = _flag(payload, "include_interaction", True)
        run_prediction = _flag(payload, "run_prediction", True)

        def run() -> Response:
            with leased(token) as (s, lease):
                ready(s, lease)
                s.add_click(tuple(float(v) for v in point), positive=positive)
                return answer(s, lease, run_prediction)

        return await run_in_threadpool(run)

    @api.post("/add_bbox_interaction")
    async def add_bbox(request: Request, token: str | None = Header(None, alias=LEASE_HEADER)) -> Response:
        """A box ``bbox_coords`` [[x0, x1], [y0, y1], [z0, z1]] (half-open voxel ranges); one slice thick
        along an axis is a 2D box (the whole 3D object is segmented)."""
        payload = await json_of(request)
        coords = payload.get("bbox_coords")
        ok = (
            isinstance(coords, list)
            and len(coords) == 3
            and all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
                for p in coords
            )
            and all(p[1] > p[0] for p in coords)
        )
        if not ok:
            raise _bad(f"bbox_coords must be 3 half-open integer ranges [[x0, x1], [y0, y1], [z0, z1]], got {coords!r}")
        positive = _flag(payload, "include_interaction", True)
        run_prediction = _flag(payload, "run_prediction", True)

        def run() -> Response:
            with leased(token) as (s, lease):
                ready(s, lease)
                lo = tuple(float(p[0]) for p in coords)
                hi = tuple(float(p[1] - 1) for p in coords)
                s.add_box(lo, hi, positive=positive)
                return answer(s, lease, run_prediction)

        return await run_in_threadpool(run)

    async def mask_interaction(request: Request, token: str | None, kind: str) -> Response:
        meta = meta_of(request)
        positive = _flag(meta, "include_interaction", True)
        run_prediction = _flag(meta, "run_prediction", True)
        raw = await body(request)

        def run() -> Response:
            with leased(token) as (s, lease):
                shape = ready(s, lease)
                mask = decode(raw, max_elements=budget, shape=shape) != 0
                if not mask.any():
                    raise _bad(f"the {kind} image holds no voxel")
                if kind == "scribble":
                    s.add_scribble(np.argwhere(mask), positive=positive)
                else:
                    s.add_lasso(mask, positive=positive)
                return answer(s, lease, run_prediction)

        return await run_in_threadpool(run)

    @api.post("/add_scribble_interaction")
    async def add_scribble(request: Request, token: str | None = Header(None, alias=LEASE_HEADER)) -> Response:
        """A scribble: packed image-shaped array, non-zero on the stroke."""
        return await mask_interaction(request, token, "scribble")

    @api.post("/add_lasso_interaction")
    async def add_lasso(request: Request, token: str | None = Header(None, alias=LEASE_HEADER)) -> Response:
        """A lasso: packed image-shaped array, non-zero inside the filled polygon (on one slice)."""
        return await mask_interaction(request, token, "lasso")

    @api.post("/add_initial_seg_interaction")
    async def add_initial_seg(request: Request, token: str | None = Header(None, alias=LEASE_HEADER)) -> Response:
        """An existing segmentation to edit (packed, image-shaped, non-zero = object); it replaces the
        interactions so far and stays the mask until prompts refine it. The client already holds it."""
        meta = meta_of(request)
        _flag(meta, "run_prediction", False)  # validated; volsam has no prompt-free refinement to run
        raw = await body(request)

        def run() -> Response:
            with leased(token) as (s, lease):
                shape = ready(s, lease)
                initial = decode(raw, max_elements=budget, shape=shape)
                s.set_initial_mask(initial)
                lease.sent = (initial != 0).astype(np.uint8)  # the client wrote it into its buffer itself
                lease.pending = False
                return answer(s, lease, run_prediction=False)

        return await run_in_threadpool(run)

    @api.post("/undo")
    def undo(token: str | None = Header(None, alias=LEASE_HEADER)) -> Response:
        """Undo the last interaction; answers the restored box (``ran_prediction`` false: nothing to undo)."""
        with leased(token) as (s, lease):
            ready(s, lease)
            try:
                s.undo()
            except ValueError:  # nothing to undo
                return _nothing()
            return answer(s, lease)

    def _nothing() -> Response:
        meta = {"ran_prediction": False, "bbox": None}
        return Response(b"", media_type="application/octet-stream", headers={META_HEADER: json.dumps(meta)})

    @api.post("/predict")
    def predict(token: str | None = Header(None, alias=LEASE_HEADER)) -> Response:
        """Send what interactions added with ``run_prediction`` false changed (volsam predicts at once)."""
        with leased(token) as (s, lease):
            ready(s, lease)
            return answer(s, lease) if lease.pending else _nothing()

    router = APIRouter()
    router.include_router(public)
    router.include_router(api)
    return router
