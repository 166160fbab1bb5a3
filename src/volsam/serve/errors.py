"""Error answers the framework would otherwise get wrong: FastAPI's 422 echoes each invalid ``input``, and
a body holding ``Infinity``/``NaN`` (Python's json reads them) made that echo unencodable, a 500."""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

__all__ = ["validation_error"]


def _finite(v: Any, depth: int = 0) -> Any:
    """``v`` with non-finite floats as strings ("inf", "nan"); values nested past 32 levels elided."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if depth > 32:
        return "..."
    if isinstance(v, dict):
        return {k: _finite(x, depth + 1) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x, depth + 1) for x in v]
    return v


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """HTTP 422 with pydantic's errors, as FastAPI answers, but always encodable."""
    assert isinstance(exc, RequestValidationError)
    errors = [_finite(e) for e in jsonable_encoder(exc.errors(), custom_encoder={float: lambda f: f})]
    return JSONResponse(status_code=422, content={"detail": errors})
