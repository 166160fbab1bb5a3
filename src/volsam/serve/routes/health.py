"""``GET /health``: liveness and session counts (behind the token, unlike the protocol's ``/healthz``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from volsam.serve.state import State, check_token

router = APIRouter(dependencies=[Depends(check_token)])


@router.get("/health")
def health(srv: State) -> dict[str, Any]:
    """Liveness and the number of live sessions."""
    return {"status": "ok", "sessions": len(srv.store), "max_sessions": srv.store.max_sessions}
