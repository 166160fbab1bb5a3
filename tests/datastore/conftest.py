"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the datastore tests, and small real volumes.

The fixture starts Orthanc on a free HTTP port with its DICOM listener off, a temporary storage folder,
remote access refused (it answers only loopback) and HTTP basic authentication on with a generated user,
waits for it to answer, and stops it afterwards. It skips only where Orthanc or its DICOMweb plugin is
not installed (``apt-get install orthanc orthanc-dicomweb``; ``scripts/setup.sh --test`` does).
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from volsam.io import Volume, read_image

DATA = Path(__file__).resolve().parents[2] / "src" / "volsam" / "data"
# Debian installs the server as /usr/sbin/Orthanc, which a non-root PATH may lack.
ORTHANC = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).exists()), None)
# Where Debian's orthanc-dicomweb puts the plugin (`dpkg -L orthanc-dicomweb`): a symlink in Orthanc's
# plugin folder to the versioned library in /usr/lib/orthanc.
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def free_port() -> int:
    """A TCP port nothing listens on now (bound once by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dicomweb_plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        found = sorted(folder.glob("libOrthancDicomWeb.so*")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


@dataclass(frozen=True)
class OrthancServer:
    root: str  # http://127.0.0.1:PORT
    user: str
    password: str
    storage: Path
    log: Path

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; scripts/setup.sh --test)")
    plugin = _dicomweb_plugin()
    if plugin is None:
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    work = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    user, password = "volsam-test", secrets.token_urlsafe(12)
    config = {
        "Name": "volsam-test",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "HttpThreadsCount": 8,
        "StableAge": 1,
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    log = work / "orthanc.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([ORTHANC, str(work / "orthanc.json")], stdout=fh, stderr=subprocess.STDOUT, cwd=work)
    server = OrthancServer(f"http://127.0.0.1:{port}", user, password, work / "storage", log)
    try:
        _wait_until_up(server, proc)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_up(server: OrthancServer, proc: subprocess.Popen, limit_s: float = 60.0) -> None:
    token = base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
    request = urllib.request.Request(f"{server.root}/dicom-web/studies", headers={"Authorization": f"Basic {token}"})
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}: {server.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Orthanc did not answer within {limit_s:g} s: {server.log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def head_crop() -> Volume:
    """A real MR head, small: 64 x 64 x 24 slices (1 mm) of the bundled Colin27 crop, through the thalamus,
    as int16 on its own grid (the affine keeps the crop's world position)."""
    vol = read_image(DATA / "colin27_crop.nii.gz", dtype=None)
    lo = np.array([24, 28, 44])
    arr = np.asarray(vol.array)[lo[0] : lo[0] + 64, lo[1] : lo[1] + 64, lo[2] : lo[2] + 24].astype(np.int16)
    shift = np.eye(4)
    shift[:3, 3] = lo
    return Volume(arr, vol.affine @ shift)
