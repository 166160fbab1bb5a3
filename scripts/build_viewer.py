"""Install the pinned NiiVue release into the package (src/volsam/serve/static/vendor/).

    python scripts/build_viewer.py [--tarball niivue-0.69.0.tgz]

NiiVue's self-contained browser build (``dist/niivue.umd.js``) is taken from the npm registry's tarball of
``@niivue/niivue`` at :data:`VERSION`, whose sha512 must equal the registry's published integrity
(:data:`INTEGRITY`), so ``volsam serve`` needs no CDN at run time. Standard library only: ``setup.py``
runs it when a wheel or an sdist is built without the viewer, ``scripts/setup.sh`` (through
``build_viewer.sh``) after installing. Idempotent. Offline: give the tarball (``--tarball`` or
``$VOLSAM_NIIVUE_TGZ``); it is checked the same way.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "0.69.0"
INTEGRITY = "sha512-YMjQvJgD1W2b7DuoxkwlC4VxbrgIePRJ5qyQzXKxi2v2MBVg285P/CIQyg46oDDGDIcaNlbd+MhtO/edMbXJkA=="
URL = f"https://registry.npmjs.org/@niivue/niivue/-/niivue-{VERSION}.tgz"
DEST = Path(__file__).resolve().parents[1] / "src" / "volsam" / "serve" / "static" / "vendor"


def installed(dest: Path = DEST) -> bool:
    """True when ``dest`` holds NiiVue at :data:`VERSION`."""
    try:
        meta = json.loads((dest / "VERSION.json").read_text())
    except (OSError, ValueError):
        return False
    return (dest / "niivue.umd.js").is_file() and meta.get("version") == VERSION


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def install(dest: Path = DEST, tarball: Path | None = None) -> bool:
    """Install NiiVue into ``dest`` unless it is there already; returns whether it was installed now.

    Raises ``RuntimeError`` when the tarball cannot be had or its sha512 is not :data:`INTEGRITY`.
    """
    if installed(dest):
        return False
    tarball = tarball or (Path(os.environ["VOLSAM_NIIVUE_TGZ"]) if os.environ.get("VOLSAM_NIIVUE_TGZ") else None)
    try:
        if tarball is not None:
            data = Path(tarball).read_bytes()
        else:
            with urllib.request.urlopen(URL, timeout=120) as r:
                data = r.read()
    except OSError as e:
        if tarball is not None:
            raise RuntimeError(f"build_viewer: cannot read {tarball} ({e})") from None
        raise RuntimeError(
            f"build_viewer: cannot fetch {URL} ({e}); offline, set VOLSAM_NIIVUE_TGZ to a copy of that tarball"
        ) from None
    got = _integrity(data)
    if got != INTEGRITY:
        raise RuntimeError(f"build_viewer: integrity mismatch for @niivue/niivue@{VERSION} (got {got})")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        umd = tar.extractfile("package/dist/niivue.umd.js").read()
        meta = json.load(tar.extractfile("package/package.json"))
    keep = {k: meta.get(k) for k in ("name", "version", "license", "homepage")}
    keep["file"] = "dist/niivue.umd.js"
    # Write beside the destination, then swap it in whole: an interrupted run leaves no half viewer.
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "niivue.umd.js").write_bytes(umd)
    (tmp / "VERSION.json").write_text(json.dumps(keep, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tarball", type=Path, default=None, help=f"local copy of niivue-{VERSION}.tgz (offline)")
    p.add_argument("--dest", type=Path, default=DEST, help="where to install (default: the package's static/vendor)")
    args = p.parse_args(argv)
    try:
        if install(args.dest, args.tarball):
            print(f"build_viewer: installed @niivue/niivue@{VERSION} into {args.dest}")
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
