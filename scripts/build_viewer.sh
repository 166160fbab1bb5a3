#!/usr/bin/env bash
# Fetch the pinned NiiVue release from the npm registry (sha512 integrity checked) and install its
# self-contained browser build into the package (src/volsam/serve/static/vendor/), so `volsam serve`
# needs no CDN at run time. Idempotent. The work is done by build_viewer.py (standard library only;
# setup.py runs the same code when a wheel or an sdist is built without the viewer).
set -euo pipefail
exec python3 "$(dirname "$0")/build_viewer.py" "$@"
