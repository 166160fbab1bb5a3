"""The server's routes, one module per concern, each an :class:`fastapi.APIRouter` whose routes take
their state through dependencies (:mod:`volsam.serve.state`); :func:`volsam.serve.app.create_app`
includes them."""
