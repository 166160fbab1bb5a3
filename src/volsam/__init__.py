"""volsam: promptable 3D segmentation of medical volumes.

Public API: :func:`build_model`, :func:`list_models`, :func:`load_checkpoint`, :class:`Session`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from volsam.checkpoint import CheckpointError, save_checkpoint
from volsam.registry import DEFAULT_MODEL, build_model, list_models, load_checkpoint

if TYPE_CHECKING:
    from volsam.session import Session

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "Session",
    "__version__",
    "build_model",
    "list_models",
    "load_checkpoint",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    # Session on first use: it pulls in the image readers (SimpleITK, nibabel), ~1 s that `volsam --help`
    # and model-only users need not pay.
    if name == "Session":
        from volsam.session import Session

        return Session
    raise AttributeError(f"module 'volsam' has no attribute {name!r}")
