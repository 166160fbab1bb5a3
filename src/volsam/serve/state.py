"""What the server's routes share (:class:`ServerState`, kept in ``app.state.server``) and the FastAPI
dependencies that hand it to them (:data:`State`, :func:`check_token`): routes take their state as
parameters, never from an enclosing scope, so each one can be read and tested on its own."""

from __future__ import annotations

import hmac
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from volsam.serve.store import SessionStore
from volsam.session import Session

__all__ = ["ModelLoader", "ServerState", "State", "check_token", "server_state", "token_from"]

TOKEN_ENV = "VOLSAM_TOKEN"
DEFAULT_MAX_PROMPT_VOXELS = 1 << 20
"""Most voxels a scribble or lasso may mark (and a lasso's bounding box on its slice may hold): 1 Mi, a
whole 1024 x 1024 slice; what a prompt costs grows with it, so it is refused beyond, before the work."""


def token_from(token: str | None, token_file: str | Path | None, environ: Any = None) -> str | None:
    """The server's bearer token: ``token_file``'s text (surrounding whitespace dropped), else ``token``,
    else the environment's ``VOLSAM_TOKEN``; None when none is set. ValueError (one line) for both
    ``token`` and ``token_file``, or an empty file; OSError for an unreadable one."""
    import os

    if token_file is not None:
        if token is not None:
            raise ValueError("give --token or --token-file, not both")
        path = Path(token_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as e:
            raise ValueError(f"token file {path} is not UTF-8 text") from e
        if not text or "\n" in text:
            raise ValueError(
                f"token file {path} must hold the token on one line, got {'nothing' if not text else 'several lines'}"
            )
        return text
    env = os.environ if environ is None else environ
    return token or env.get(TOKEN_ENV) or None


class ModelLoader:
    """Builds the empty sessions of a server: ``session_factory()`` when given (tests), else a Session on
    ``model``, loaded once (with the first session) and shared by all sessions."""

    def __init__(self, model: Any = None, device: str | None = None, session_factory: Any = None) -> None:
        self.model, self.device, self.session_factory = model, device, session_factory
        self._lock = threading.Lock()
        # The model is shared, not a session: a session kept as a prototype would hold its image, masks
        # and embeddings for the server's lifetime, after its DELETE.
        self._shared: dict[str, Any] = {}

    def __call__(self) -> Session:
        if self.session_factory is not None:
            return self.session_factory()
        with self._lock:
            if "model" not in self._shared:
                first = Session(self.model, self.device)
                self._shared["model"], self._shared["device"] = first.model, first.device
                return first
        onnx = isinstance(self.model, str | Path) and (Path(self.model) / "export.json").is_file()
        return Session(self.model if onnx else self._shared["model"], self._shared["device"])


@dataclass
class ServerState:
    """One server's sessions, model, limits and token (see :func:`volsam.serve.app.create_app`)."""

    store: SessionStore
    new_session: ModelLoader
    data_root: Path | None
    upload_bytes: int  # largest upload or packed-array body
    max_voxels: int | None  # largest image a session may hold; None: no limit
    max_prompt_voxels: int = DEFAULT_MAX_PROMPT_VOXELS  # most voxels a scribble or lasso may mark
    token: str | None = None
    licence: str = "!!MISSING!!"  # of the served weights, for the nnInteractive protocol's /capabilities
    # nnInteractive protocol state beside each lease's Session (volsam.serve.nninteractive._Lease).
    leases: weakref.WeakKeyDictionary[Session, Any] = field(default_factory=weakref.WeakKeyDictionary)
    capabilities: dict[str, Any] = field(default_factory=dict)  # of the model, filled on first ask
    # volsam serve --datastore (volsam.datastore.Datastore; None: no datastore routes) and, beside each
    # session opened from it, its image and label version (volsam.serve.routes.datastore.Binding).
    datastore: Any = None
    datastore_bindings: weakref.WeakKeyDictionary[Session, Any] = field(default_factory=weakref.WeakKeyDictionary)

    @property
    def upload_mb(self) -> float:
        return self.upload_bytes / 2**20


def server_state(request: Request) -> ServerState:
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]
"""A route parameter annotated ``State`` receives the app's :class:`ServerState`."""

_bearer = HTTPBearer(auto_error=False, description="set when the server runs with --token / VOLSAM_TOKEN")


def check_token(
    request: Request,
    cred: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
) -> None:
    """HTTP 401 unless the request carries the server's bearer token (none set: every request passes)."""
    token = server_state(request).token
    if token is None:
        return
    given = cred.credentials if cred is not None and cred.scheme.lower() == "bearer" else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
