#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine: system packages, a virtual environment, the viewer's files.
#   bash scripts/setup.sh          what `volsam` needs (mricron-data)
#   bash scripts/setup.sh --test   also what the test suite needs (Debian's chromium for the viewer test;
#                                  orthanc + orthanc-dicomweb: the PACS the datastore tests start on loopback)
#   bash scripts/setup.sh --data   also the open training data (invesalius-examples head CT, nilearn's MNI152)
#   options combine: bash scripts/setup.sh --test --data
set -euo pipefail
cd "$(dirname "$0")/.."
want=(mricron-data)
extra="[test]"
# Options combine (`--test --data`); each one only adds packages.
for opt in "$@"; do
    case "$opt" in
        # Orthanc: the tests start their own instance on a free port (tests/datastore/conftest.py).
        --test) command -v chromium >/dev/null 2>&1 || want+=(chromium); want+=(orthanc orthanc-dicomweb) ;;
        --data) want+=(invesalius-examples); extra="[test,data]" ;;
        *) echo "setup.sh: unknown option ${opt}; expected --test or --data" >&2; exit 2 ;;
    esac
done
missing=()
for p in "${want[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    # Another apt/dpkg (unattended-upgrades on a fresh machine, say) may hold the dpkg lock: wait for it
    # (apt's own lock timeout, in seconds) instead of failing at once, and say what is being waited for.
    lock_wait=900
    holders=$(pgrep -a -x 'apt|apt-get|aptitude|dpkg|unattended-upgr|packagekitd' 2>/dev/null | tr '\n' ';' || true)
    if [ -n "$holders" ]; then
        echo "setup.sh: waiting up to ${lock_wait} s for the apt/dpkg lock, held by: ${holders%;}" >&2
    fi
    apt_lock=(-o "DPkg::Lock::Timeout=${lock_wait}")
    $SUDO apt-get "${apt_lock[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${apt_lock[@]}" install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch lies on local disk; an unpinned torch would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".${extra}"
# NiiVue (the npm registry's pinned tarball, sha512 checked) into the package's static files, so
# `volsam serve` needs no CDN; the editable install above already ran it (setup.py), this is a no-op then.
bash scripts/build_viewer.sh
