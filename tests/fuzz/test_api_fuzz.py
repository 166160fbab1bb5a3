"""Schema-driven fuzzing of ``volsam serve`` (schemathesis over its own OpenAPI): whatever a client sends,
the answer is never a 5xx and never carries a traceback. Bounded: ``VOLSAM_FUZZ_EXAMPLES`` cases per
operation (default 25; CI's whole run stays within a few minutes). Beside the schema: hostile JSON bodies and ``X-Meta``
headers (huge integers, deep nesting, non-string dtypes) on the JSON endpoints of both APIs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

schemathesis = pytest.importorskip("schemathesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fakes import ThresholdModel  # noqa: E402
from volsam.serve import create_app, wire  # noqa: E402
from volsam.session import Session  # noqa: E402

EXAMPLES = int(os.environ.get("VOLSAM_FUZZ_EXAMPLES", "25"))
_MODEL = ThresholdModel()
APP = create_app(session_factory=lambda: Session(_MODEL, "cpu"), max_sessions=4, max_voxels=2**21, min_idle_s=0)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
_client = TestClient(APP)
_live: dict[str, str] = {}


def _session_id() -> str:
    """A live session (the demo volume) for the cases that should reach one; recreated after a DELETE."""
    sid = _live.get("id")
    if sid is None or _client.get(f"/sessions/{sid}").status_code != 200:
        r = _client.post("/sessions/demo")
        assert r.status_code == 201, r.text
        _live["id"] = sid = r.json()["id"]
    return sid


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_answers_never_5xx_nor_a_traceback(case):
    params = case.path_parameters or {}
    if "sid" in params and len(str(params["sid"])) % 2 == 0:  # half the cases address a real session
        params["sid"] = _session_id()
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, params, response.status_code, response.content[:300])
    assert b"Traceback" not in response.content


# Bodies the schema does not describe (the nnInteractive protocol's JSON) and values no schema-driven case
# reaches: 400-digit integers, nesting deeper than Python's recursion limit, non-string dtypes.
_HUGE = st.integers(min_value=10**300, max_value=10**400) | st.integers(max_value=-(10**300), min_value=-(10**400))
_SCALAR = st.none() | st.booleans() | st.floats() | st.text(max_size=8) | st.integers() | _HUGE
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_DEEP = st.integers(min_value=900, max_value=30000).map(lambda n: "[" * n + "]" * n)
_BODY = st.fixed_dictionaries(
    {},
    optional={
        "coordinates": _VALUE | st.lists(_SCALAR, min_size=3, max_size=3),
        "bbox_coords": _VALUE | st.lists(st.lists(_SCALAR, min_size=2, max_size=2), min_size=3, max_size=3),
        "dtype": _VALUE,
        "shape": _VALUE,
        "include_interaction": _VALUE,
        "run_prediction": _VALUE,
        "do_autozoom": _VALUE,
        "path": _VALUE,
        "point": _VALUE,
        "lo": _VALUE,
        "polygon": _VALUE,
        "axis": _VALUE,
        "index": _VALUE,
    },
).map(json.dumps)
_JSON_PATHS = (
    "/set_target_buffer",
    "/set_do_autozoom",
    "/add_point_interaction",
    "/add_bbox_interaction",
    "/sessions",
    "/sessions/{sid}/clicks",
    "/sessions/{sid}/box",
    "/sessions/{sid}/lasso",
)


def _lease_token() -> str:
    """A lease with an image and a target buffer, so hostile bodies reach the checks behind them."""
    token = _live.get("lease")
    if token is None or _client.post("/heartbeat", headers={"X-Lease-Token": token}).status_code != 200:
        token = _client.post("/claim").json()["lease_token"]
        h = {"X-Lease-Token": token, "Content-Type": "application/octet-stream"}
        image = np.zeros((1, 16, 16, 16), np.float32)
        assert _client.post("/set_image", content=wire.pack(image), headers=h).status_code == 200
        r = _client.post("/set_target_buffer", json={"shape": [16, 16, 16], "dtype": "uint8"}, headers=h)
        assert r.status_code == 200, r.text
        _live["lease"] = token
    return token


@given(path=st.sampled_from(_JSON_PATHS), body=_BODY | _DEEP, meta=st.none() | _BODY | _DEEP)
@settings(max_examples=EXAMPLES * 4, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_hostile_json_never_5xx(path, body, meta):
    headers = {"Content-Type": "application/json", "X-Lease-Token": _lease_token()}
    if meta is not None:
        headers["X-Meta"] = meta[:8000]  # a header line stays within what HTTP servers accept
    response = _client.post(path.replace("{sid}", _session_id()), content=body, headers=headers)
    assert response.status_code < 500, (path, body[:200], response.status_code, response.content[:300])
    assert b"Traceback" not in response.content
