"""HTTP server for interactive segmentation (``volsam serve``); see :func:`volsam.serve.app.create_app`."""

from __future__ import annotations

from volsam.serve.app import create_app

__all__ = ["create_app"]
