"""scripts/setup.sh waits for another apt's dpkg lock (apt's lock timeout) and says what holds it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_setup_waits_for_the_dpkg_lock_and_names_its_holder(tmp_path):
    shims = tmp_path / "bin"
    shims.mkdir()
    log = tmp_path / "apt-get.log"
    scripts = {
        "dpkg": "exit 1",  # every wanted package is missing
        "pgrep": 'echo "4242 unattended-upgr"',  # another package manager is running
        "apt-get": f'echo "$@" >> {log}; exit 1',  # stop the script at the first apt call
        "sudo": 'exec "$@"',
    }
    for name, body in scripts.items():
        (shims / name).write_text(f"#!/bin/sh\n{body}\n")
        (shims / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert "DPkg::Lock::Timeout=" in log.read_text()
    assert "waiting up to" in r.stderr and "held by: 4242 unattended-upgr" in r.stderr
