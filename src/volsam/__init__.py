"""volsam: promptable 3D segmentation of medical volumes.

Public API: :func:`build_model`, :func:`list_models`, :func:`load_checkpoint`, :class:`Session`.
"""

from volsam.checkpoint import CheckpointError, save_checkpoint
from volsam.registry import DEFAULT_MODEL, build_model, list_models, load_checkpoint

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


def __getattr__(name: str) -> object:
    # Session is imported on first use: it pulls in the image readers (nibabel, SimpleITK), which
    # `import volsam` for building or loading a model does not need.
    if name == "Session":
        from volsam.session import Session

        return Session
    raise AttributeError(f"module 'volsam' has no attribute {name!r}")
