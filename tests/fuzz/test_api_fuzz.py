"""Schema-driven fuzzing of ``volsam serve`` (schemathesis over its own OpenAPI): whatever a client sends,
the answer is never a 5xx and never carries a traceback. Bounded: ``VOLSAM_FUZZ_EXAMPLES`` cases per
operation (default 25; CI's whole run stays within a few minutes)."""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.fakes import ThresholdModel  # noqa: E402
from volsam.serve import create_app  # noqa: E402
from volsam.session import Session  # noqa: E402

EXAMPLES = int(os.environ.get("VOLSAM_FUZZ_EXAMPLES", "25"))
_MODEL = ThresholdModel()
APP = create_app(session_factory=lambda: Session(_MODEL, "cpu"), max_sessions=4, max_voxels=2**21)
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
