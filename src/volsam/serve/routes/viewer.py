"""The NiiVue viewer at ``/`` and its files at ``/static`` (see ``scripts/build_viewer.sh``), served without
the token: they hold no data; the page sends the token the user types with every API call."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent.parent / "static"

router = APIRouter(include_in_schema=False)


def viewer_built() -> bool:
    return (STATIC_DIR / "vendor" / "niivue.umd.js").is_file()


@router.get("/")
def viewer() -> Response:
    if not viewer_built():
        return Response(
            "volsam's viewer is not built in this installation: run scripts/build_viewer.sh "
            "(needs npm). The REST API is at /docs.",
            status_code=503,
            media_type="text/plain",
        )
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def mount_static(app: FastAPI) -> None:
    """Serve ``static/`` at ``/static`` when the viewer is built (a mount, which a router cannot carry)."""
    if viewer_built():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
