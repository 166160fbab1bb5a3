"""volsam: promptable 3D segmentation of medical volumes.

Public API: :func:`build_model`, :func:`list_models`, :func:`load_checkpoint`, :class:`Session`.
"""

from volsam.checkpoint import CheckpointError, save_checkpoint
from volsam.registry import DEFAULT_MODEL, build_model, list_models, load_checkpoint

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "__version__",
    "build_model",
    "list_models",
    "load_checkpoint",
    "save_checkpoint",
]
