"""nnInteractive's remote protocol on ``volsam serve``, so the plugins built on ``nninteractive-client``
(SlicerNNInteractive, napari-nninteractive) drive volsam unchanged. This module holds the protocol's
messages and checks; its routes are :mod:`volsam.serve.routes.nninteractive`.

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
model, size limits, memory budget, token, idle expiry, eviction and per-session lock. An expired or evicted
lease answers 410 (the client raises ``SessionExpiredError``); 503 with Retry-After when no session may
make room (``ServerAtCapacityError``); 400 for bad input (a scribble or lasso marking more than the
server's ``max_prompt_voxels``, a lasso off one slice), 413 for bodies over the upload limit or arrays over
the voxel limit (checked from the header, before decoding). A packed body is read only after its lease
token is found good, and the lease counts as in use (never evicted) while it arrives and decodes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from fastapi.responses import Response

from volsam.serve import wire
from volsam.serve.uploads import parse_json
from volsam.session import PROMPT_CHANNELS, Session

META_HEADER = "X-Meta"
LEASE_HEADER = "X-Lease-Token"
BUFFER_DTYPES = frozenset({"bool", "uint8", "uint16", "int16", "int32", "float32"})
MAX_SPACING_MM = 1e6
"""Largest voxel spacing accepted (mm): a kilometre per voxel is no image; bigger ones overflow geometry."""
MAX_COORDINATE = 2**31
"""Largest voxel coordinate (absolute) a point or box may name; anything past it is outside every image."""
PROTOCOL_VERSION = "2.6.0"
"""Reported as ``inference_session_version``: the nnInteractive session API (``nninteractive-client``
2.6.0) these endpoints follow and are tested against; plugins compare it as a version number."""


@dataclass
class LeaseState:
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


def one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def bad(detail: str) -> HTTPException:
    return HTTPException(400, detail)


def flag(meta: dict[str, Any], key: str, default: bool) -> bool:
    v = meta.get(key, default)
    if not isinstance(v, bool):
        raise bad(f"{key} must be true or false, got {shown(v)}")
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


def meta_of(request: Request) -> dict[str, Any]:
    """The request's ``X-Meta`` header as a JSON object ({} when absent); 400 when it is not one."""
    raw = request.headers.get(META_HEADER)
    if raw is None:
        return {}
    meta = parse_json(raw, f"{META_HEADER} to be a JSON object")
    if not isinstance(meta, dict):
        raise bad(f"{META_HEADER} must be a JSON object, got {type(meta).__name__}")
    return meta


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object ({} when empty); 400 when it is not one."""
    if not raw:
        return {}
    payload = parse_json(raw, "a JSON object body")
    if not isinstance(payload, dict):
        raise bad(f"expected a JSON object body, got {type(payload).__name__}")
    return payload


def spacing_of(meta: dict[str, Any]) -> list[float]:
    """``image_properties.spacing`` of ``set_image``'s metadata: 3 positive finite numbers (mm)."""
    props = meta.get("image_properties") or {}
    if not isinstance(props, dict):
        raise bad("image_properties must be a JSON object")
    spacing = props.get("spacing", [1.0, 1.0, 1.0])
    if (
        not isinstance(spacing, list | tuple)
        or len(spacing) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= MAX_SPACING_MM for v in spacing)
    ):
        raise bad(f"image_properties.spacing must be 3 positive numbers (mm, at most 1e6), got {shown(spacing)}")
    return [float(v) for v in spacing]


def _coordinate(v: Any) -> bool:
    """A number that is a voxel coordinate: finite, within ±2^31 (a huge JSON integer would overflow floats)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= MAX_COORDINATE


def shown(v: Any) -> str:
    """``v`` for an error message, at most 120 characters (a 400-digit integer is not worth echoing)."""
    try:
        text = repr(v)
    except RecursionError:
        return "a deeply nested value"
    return text if len(text) <= 120 else text[:117] + "..."


def point_of(payload: dict[str, Any]) -> tuple[float, float, float]:
    """``coordinates`` of a point interaction: voxel [x, y, z]."""
    point = payload.get("coordinates")
    if not isinstance(point, list) or len(point) != 3 or not all(_coordinate(v) for v in point):
        raise bad(f"coordinates must be 3 numbers [x, y, z] within ±2^31, got {shown(point)}")
    x, y, z = (float(v) for v in point)
    return x, y, z


def box_of(payload: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``bbox_coords`` [[x0, x1], [y0, y1], [z0, z1]] (half-open voxel ranges) as inclusive corners."""
    coords = payload.get("bbox_coords")
    ok = (
        isinstance(coords, list)
        and len(coords) == 3
        and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and _coordinate(v) for v in p)
            for p in coords
        )
        and all(p[1] > p[0] for p in coords)
    )
    if not ok:
        raise bad(
            f"bbox_coords must be 3 half-open integer ranges [[x0, x1], [y0, y1], [z0, z1]] within ±2^31, "
            f"got {shown(coords)}"
        )
    return tuple(float(p[0]) for p in coords), tuple(float(p[1] - 1) for p in coords)


def decode(raw: bytes, **kw: Any) -> np.ndarray:
    """:func:`volsam.serve.wire.unpack`, its errors as HTTP 413 (over a limit) or 400."""
    try:
        return wire.unpack(raw, **kw)
    except ValueError as e:
        msg = one_line(e)
        raise HTTPException(413 if "over the limit" in msg else 400, msg) from e


def marked_voxels(marks: np.ndarray, kind: str, limit: int) -> np.ndarray:
    """The voxels (N, 3) where ``marks`` (an image-shaped scribble or lasso) is non-zero; 400 when there is
    none, or more than ``limit``. Counted first (no allocation), so the voxel list, and all the work after
    it, is proportional to what the prompt marks: a full-volume mask is refused before it costs anything."""
    n = int(np.count_nonzero(marks))
    if n == 0:
        raise bad(f"the {kind} image holds no voxel")
    if n > limit:
        raise bad(f"a {kind} may mark at most {limit} voxels, this one marks {n}")
    return np.argwhere(marks)


def check_lasso(voxels: np.ndarray, limit: int) -> None:
    """400 unless a lasso's voxels (N, 3) lie on one slice, in a box of at most ``limit`` voxels (its
    clicks come from a distance transform over that box)."""
    extent = voxels.max(axis=0) - voxels.min(axis=0) + 1
    if (extent > 1).all():
        raise bad(f"a lasso must lie on one slice, this one spans {extent.tolist()} voxels")
    if int(np.prod(extent)) > limit:
        raise bad(f"a lasso's bounding box may hold at most {limit} voxels, this one holds {int(np.prod(extent))}")


def ready(s: Session, lease: LeaseState) -> tuple[int, int, int]:
    """The image shape, or 400 before ``set_image`` and ``set_target_buffer``."""
    if lease.image_shape is None or lease.sent is None:
        raise bad("call set_image and set_target_buffer before adding interactions")
    return s.volume.shape


def answer(s: Session, lease: LeaseState, run_prediction: bool = True) -> Response:
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


def nothing() -> Response:
    """An answer that ran no prediction."""
    meta = {"ran_prediction": False, "bbox": None}
    return Response(b"", media_type="application/octet-stream", headers={META_HEADER: json.dumps(meta)})


def capabilities_of(s: Session, licence: str) -> dict[str, Any]:
    """The ``/capabilities`` answer for the model of ``s``, whose weights are under ``licence``."""
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
