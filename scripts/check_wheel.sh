#!/usr/bin/env bash
# What a user of the wheel gets: build volsam's wheel from a clean clone of the committed tree, install it
# with its dependencies into a fresh virtual environment (no source tree, no editable install), then,
# from an empty folder, run `volsam demo` and fetch the viewer page and NiiVue from `volsam serve`.
#   bash scripts/check_wheel.sh     (about 1.5 min here; CI runs it after the tests; PYTHON=... picks the
#                                   interpreter whose pip and venv it uses, default .venv/bin/python)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"  # the set-up's interpreter (has pip); only pip and venv are used from it
[ -x "$py" ] || py=python3
work="$(mktemp -d)"
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
t0=$SECONDS
git clone -q --no-local "$repo" "$work/clone"
# Build isolation: pip fetches setuptools into a throw-away environment; setup.py installs NiiVue.
"$py" -m pip wheel -q --no-deps -w "$work/dist" "$work/clone"
wheel="$(ls "$work"/dist/volsam-*.whl)"
"$py" - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = [
    "volsam/serve/static/index.html", "volsam/serve/static/viewer.js", "volsam/serve/static/labels.js",
    "volsam/serve/static/vendor/niivue.umd.js", "volsam/data/colin27_crop.nii.gz",
]
missing = [n for n in need if n not in names]
assert not missing, f"wheel lacks {missing}"
assert not any(n.startswith(("tests/", "scripts/")) for n in names), "wheel carries non-package files"
print(f"check_wheel: {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, viewer included")
PY
echo "check_wheel: wheel built in $((SECONDS - t0)) s"
rm -rf "$work/clone"  # from here on there is no source tree
"$py" -m venv "$work/venv"
# The CPU build of torch lies on local disk; an unpinned torch would pull a multi-GB CUDA build.
"$work/venv/bin/pip" install -q "torch==2.13.0"
"$work/venv/bin/pip" install -q "${wheel}[serve]"
echo "check_wheel: fresh venv with the wheel and its dependencies in $((SECONDS - t0)) s"
mkdir "$work/run"
cd "$work/run"
"$work/venv/bin/python" -c "import volsam, sys; assert volsam.__file__.startswith(sys.prefix), volsam.__file__; print('check_wheel: volsam from', volsam.__file__)"
"$work/venv/bin/volsam" demo -o "$work/run/demo"
port="$("$work/venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$work/venv/bin/volsam" serve --port "$port" >"$work/serve.log" 2>&1 &
server=$!
"$work/venv/bin/python" - "$port" <<'PY' || { cat "$work/serve.log" >&2; exit 1; }
import sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(120):  # the server loads the model first
    try:
        page = urllib.request.urlopen(base + "/", timeout=5)
        break
    except OSError:
        time.sleep(0.5)
else:
    raise SystemExit("check_wheel: volsam serve did not answer within 60 s")
html = page.read().decode()
assert page.status == 200 and "niivue" in html.lower(), (page.status, html[:200])
js = urllib.request.urlopen(base + "/static/vendor/niivue.umd.js", timeout=10)
size = len(js.read())
assert js.status == 200 and size > 1_000_000, (js.status, size)
health = urllib.request.urlopen(base + "/health", timeout=10).read().decode()
print(f"check_wheel: GET / 200 ({len(html)} bytes), GET /static/vendor/niivue.umd.js 200 ({size} bytes), /health {health}")
PY
echo "check_wheel: passed in $((SECONDS - t0)) s"
