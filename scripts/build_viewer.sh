#!/usr/bin/env bash
# Fetch the pinned NiiVue release from npm and install its self-contained browser build into the
# package (src/volsam/serve/static/vendor/), so `volsam serve` needs no CDN at run time.
# Needs npm (Debian: apt-get install npm). Idempotent; verifies npm's sha512 integrity of the tarball.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="0.69.0"
INTEGRITY="sha512-YMjQvJgD1W2b7DuoxkwlC4VxbrgIePRJ5qyQzXKxi2v2MBVg285P/CIQyg46oDDGDIcaNlbd+MhtO/edMbXJkA=="
DEST="src/volsam/serve/static/vendor"
if [ -f "$DEST/niivue.umd.js" ] && grep -qs "\"$VERSION\"" "$DEST/VERSION.json"; then
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@niivue/niivue@$VERSION" >/dev/null)
tarball="$tmp/niivue-niivue-$VERSION.tgz"
got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$got" != "$INTEGRITY" ]; then
    echo "build_viewer: integrity mismatch for @niivue/niivue@$VERSION (got $got)" >&2
    exit 1
fi
tar -xzf "$tarball" -C "$tmp" package/dist/niivue.umd.js package/package.json
mkdir -p "$DEST.tmp"
cp "$tmp/package/dist/niivue.umd.js" "$DEST.tmp/niivue.umd.js"
python3 - "$tmp/package/package.json" "$DEST.tmp/VERSION.json" <<'PY'
import json, sys
meta = json.load(open(sys.argv[1]))
keep = {k: meta.get(k) for k in ("name", "version", "license", "homepage")}
keep["file"] = "dist/niivue.umd.js"
json.dump(keep, open(sys.argv[2], "w"), indent=1)
PY
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "build_viewer: installed @niivue/niivue@$VERSION into $DEST"
