"""scripts/setup.sh: waits for another apt's dpkg lock (apt's lock timeout) and says what holds it; its options
combine, and an unknown one is refused before anything is installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_setup(tmp_path: Path, *args: str, apt_get: str, pgrep: str = "exit 1") -> subprocess.CompletedProcess:
    """setup.sh with dpkg saying every package is missing and apt-get, pgrep and sudo replaced by shims."""
    shims = tmp_path / "bin"
    shims.mkdir()
    scripts = {"dpkg": "exit 1", "pgrep": pgrep, "apt-get": apt_get, "sudo": 'exec "$@"'}
    for name, body in scripts.items():
        (shims / name).write_text(f"#!/bin/sh\n{body}\n")
        (shims / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), *args], env=env, capture_output=True, text=True)


def test_setup_waits_for_the_dpkg_lock_and_names_its_holder(tmp_path):
    log = tmp_path / "apt-get.log"
    # another package manager is running; apt-get stops the script at its first call
    r = _run_setup(tmp_path, apt_get=f'echo "$@" >> {log}; exit 1', pgrep='echo "4242 unattended-upgr"')
    assert r.returncode != 0
    assert "DPkg::Lock::Timeout=" in log.read_text()
    assert "waiting up to" in r.stderr and "held by: 4242 unattended-upgr" in r.stderr


def test_setup_options_combine(tmp_path):
    log = tmp_path / "apt-get.log"
    # `update` succeeds, `install` logs what it was asked for and stops the script
    apt = f'echo "$@" >> {log}; case "$*" in *install*) exit 1 ;; esac'
    r = _run_setup(tmp_path, "--test", "--data", apt_get=apt)
    assert r.returncode != 0
    install = [line for line in log.read_text().splitlines() if "install" in line]
    assert len(install) == 1 and "mricron-data" in install[0] and "invesalius-examples" in install[0]
    assert "orthanc orthanc-dicomweb" in install[0]  # the datastore tests' PACS


def test_setup_refuses_an_unknown_option_before_installing(tmp_path):
    log = tmp_path / "apt-get.log"
    r = _run_setup(tmp_path, "--test", "--tests", apt_get=f'echo "$@" >> {log}; exit 1')
    assert r.returncode == 2
    assert r.stderr.strip() == "setup.sh: unknown option --tests; expected --test or --data"
    assert not log.exists()
