"""DICOMweb datastore on this CPU: STOW-RS of a CT series, and "open series -> first mask" from a PACS.

The series is Debian ``invesalius-examples``'s head CT (``Cranium.inv3``: 256 x 256 x 108 slices, 0.96 x 0.96
x 1.5 mm, HU), resampled along z to ``--slices`` slices (linear, rounded to integer HU; 0 keeps the 108)
and written as a DICOM CT series (one file per slice). Against Orthanc (Debian's ``orthanc`` +
``orthanc-dicomweb``, started here on a free loopback port with a temporary storage folder, unless
``--url`` names a running server), it times, as medians over ``--repeats`` runs after one warm-up run
(each run on a fresh copy with new UIDs, and an empty cache, so nothing is served from a cache):

- ``stow``: :meth:`DicomwebDatastore.add_image` of the series folder (read the files, check the grid,
  STOW-RS in batches of 64);
- ``open -> first mask``: :meth:`DicomwebDatastore.get_image` (QIDO-RS for the study, WADO-RS of every
  instance into the cache, the geometry check, the series read) + ``Session.set_image`` + the first
  ``add_click`` of the shipped default model (loaded once beforehand, as a server does);
- ``save``: :meth:`DicomwebDatastore.save_label` of that mask (local NIfTI + DICOM-SEG + STOW-RS).

With ``--failures`` it instead prints the message of each failure case (PACS down, PACS silent, wrong
password, a push that fails after the local save, a missing slice, uneven spacing, two sessions saving one
image) on a 24-slice crop of the same CT, with the time each took to fail.

    python -m benchmarks.bench_datastore [--slices 200] [--repeats 3] [--url URL --user U --password P]
    python -m benchmarks.bench_datastore --failures
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np

PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*", "/usr/lib/orthanc/libOrthancDicomWeb.so*")


@contextmanager
def local_orthanc(work: Path):
    """Debian's Orthanc with the DICOMweb plugin on a free loopback port; yields (url, user, password)."""
    import glob

    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    plugins = [p for g in PLUGIN_GLOBS for p in sorted(glob.glob(g))]
    if not Path(binary).exists() or not plugins:
        raise SystemExit("needs Debian's orthanc and orthanc-dicomweb (apt-get install orthanc orthanc-dicomweb)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user, password = "bench", secrets.token_urlsafe(12)
    config = {"Name": "volsam-bench", "StorageDirectory": str(work / "db"), "IndexDirectory": str(work / "db"),
              "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": True, "RegisteredUsers": {user: password}, "Plugins": [plugins[0]],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    work.mkdir(parents=True, exist_ok=True)
    (work / "orthanc.json").write_text(json.dumps(config))
    log = open(work / "orthanc.log", "wb")
    proc = subprocess.Popen([binary, str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/dicom-web"
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        for _ in range(300):
            try:
                req = urllib.request.Request(f"{url}/studies", headers={"Authorization": f"Basic {auth}"})
                with urllib.request.urlopen(req, timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit(f"Orthanc did not start: {(work / 'orthanc.log').read_text()[-1000:]}")
        yield url, user, password
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@contextmanager
def given_server(url: str, user: str | None, password: str | None):
    yield url, user, password


def head_ct(slices: int):
    """The InVesalius head CT as a Volume, resampled along z to ``slices`` slices (0: unchanged)."""
    from volsam.io import Volume
    from volsam.train.open_data import INVESALIUS_EXAMPLE, read_inv3

    ct = read_inv3(INVESALIUS_EXAMPLE)
    arr, affine = np.asarray(ct.array), ct.affine.copy()
    if slices and slices != arr.shape[2]:
        z = np.linspace(0, arr.shape[2] - 1, slices)
        k0 = np.floor(z).astype(int).clip(max=arr.shape[2] - 2)
        w = (z - k0)[None, None, :]
        arr = (1 - w) * arr[:, :, k0] + w * arr[:, :, k0 + 1]
        affine[:3, 2] *= (ct.shape[2] - 1) / (slices - 1)
    return Volume(np.round(arr).astype(np.int16), affine)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=200, help="resample the 108-slice CT to this many (0: keep)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--url", help="a running DICOMweb server (default: start Debian's Orthanc here)")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--failures", action="store_true", help="print each failure case's message instead")
    args = ap.parse_args()
    if args.failures:
        failures()
        return

    import torch

    from volsam import Session
    from volsam.datastore.dicomweb import DicomwebDatastore
    from volsam.datastore.series import write_dicom_series

    if args.threads:
        torch.set_num_threads(args.threads)
    vol = head_ct(args.slices)
    click = tuple(int(s) // 2 for s in vol.shape)  # the middle of the head: brain
    runs = args.repeats + 1
    with tempfile.TemporaryDirectory(prefix="volsam-bench-ds-") as tmp:
        work = Path(tmp)
        folders = []
        for n in range(runs):  # fresh UIDs each run: nothing is already stored or cached
            write_dicom_series(vol, work / f"series{n}", modality="CT", series_description=f"bench {n}")
            folders.append(work / f"series{n}")
        series_mb = sum(f.stat().st_size for f in folders[0].iterdir()) / 2**20
        session = Session()  # the shipped default model, loaded once (as `volsam serve` does)

        server = given_server(args.url, args.user, args.password) if args.url else local_orthanc(work)
        with server as (url, user, password):
            rows = []
            for n, folder in enumerate(folders):
                store = DicomwebDatastore(url, user=user, password=password, cache_dir=work / f"cache{n}")
                t0 = time.perf_counter()
                entry = store.add_image(folder)
                t1 = time.perf_counter()
                image = store.get_image(entry.id)
                t2 = time.perf_counter()
                session.set_image(image)
                mask = session.add_click(click)
                t3 = time.perf_counter()
                store.save_label(entry.id, session.label_map, reference=image)
                t4 = time.perf_counter()
                rows.append({"stow": t1 - t0, "retrieve": t2 - t1, "first_click": t3 - t2, "open_to_mask": t3 - t1,
                             "save": t4 - t3, "voxels": int(mask.sum()),
                             "windows": session.timings.windows_encoded,
                             "encode_s": session.timings.encode_ms / 1e3, "decode_s": session.timings.decode_ms / 1e3})
    timed = rows[1:]  # the first run is the warm-up
    med = {k: statistics.median(r[k] for r in timed) for k in ("stow", "retrieve", "first_click", "open_to_mask",
                                                                 "save")}
    print(f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"series: InVesalius head CT {vol.shape[0]}x{vol.shape[1]}x{vol.shape[2]} slices "
          f"({', '.join(f'{s:.3f}' for s in vol.spacing)} mm), {series_mb:.1f} MiB as {vol.shape[2]} DICOM files; "
          f"server {'given' if args.url else 'Orthanc (Debian) on loopback'}; torch threads {torch.get_num_threads()}")
    print(f"median of {len(timed)} runs after 1 warm-up (s): " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
    print("runs:", json.dumps([{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows]))


def failures() -> None:
    """Each failure case, its exception type, message and time to fail."""
    import pydicom

    from volsam.datastore import LocalDatastore
    from volsam.datastore.dicomweb import DicomwebDatastore
    from volsam.datastore.series import write_dicom_series
    from volsam.io import Volume

    ct = head_ct(0)
    small = Volume(np.asarray(ct.array)[64:192, 64:192, 40:64], ct.affine)

    def show(name, fn) -> None:
        t0 = time.perf_counter()
        try:
            fn()
            print(f"{name}: no error (!)")
        except Exception as e:  # printing what each case raises is the point
            print(f"{name} [{type(e).__name__}, {time.perf_counter() - t0:.2f} s]: {e}")

    with tempfile.TemporaryDirectory(prefix="volsam-bench-fail-") as tmp:
        work = Path(tmp)
        files = write_dicom_series(small, work / "ct", modality="CT")
        uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}/dicom-web"
        down = DicomwebDatastore(dead, user="alice", password="s3cret-pw", cache_dir=work / "c1")
        show("PACS down (closed port, basic auth given)", down.list_images)
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            silent = DicomwebDatastore(f"http://127.0.0.1:{srv.getsockname()[1]}/dicom-web", token="s3cret-token",
                                       timeout=2, retries=0, cache_dir=work / "c2")
            show("PACS silent (accepts, never answers; timeout 2 s)", silent.list_images)
        with local_orthanc(work / "orthanc") as (url, user, password):
            show("wrong password", DicomwebDatastore(url, user=user, password="wrong-pw", cache_dir=work / "c3")
                 .list_images)
            live = DicomwebDatastore(url, user=user, password=password, cache_dir=work / "c4")
            live.add_image(work / "ct")
            vol = live.get_image(uid)
            lm = np.zeros(vol.shape, np.uint8)
            lm[40:80, 40:80, 5:15] = 1
            gone = DicomwebDatastore(dead, user=user, password=password, cache_dir=work / "c4", retries=0)
            show("push after the local save, PACS down", lambda: gone.save_label(uid, lm, reference=vol))
            print(f"  kept locally: {live.labels.latest(uid)['file']} (pushed={live.labels.latest(uid)['pushed']}); "
                  f"push_pending -> {[s.version for s in live.push_pending()]}")
            gap = work / "gap"
            gap.mkdir()
            for n, f in enumerate(files):
                if n != 7:
                    shutil.copy(f, gap / f.name)
            ds = pydicom.dcmread(files[0])
            ds.SeriesInstanceUID = gap_uid = pydicom.uid.generate_uid()
            for f in sorted(gap.iterdir()):
                d = pydicom.dcmread(f)
                d.SeriesInstanceUID, d.SOPInstanceUID = gap_uid, pydicom.uid.generate_uid()
                d.file_meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
                d.save_as(f, enforce_file_format=True)
            live.client.store_instances([pydicom.dcmread(f) for f in sorted(gap.iterdir())])
            show("series with a missing slice (from the PACS)", lambda: live.get_image(gap_uid))
        uneven = work / "local" / "uneven"
        uneven_files = write_dicom_series(small, uneven, modality="CT")
        for f in uneven_files[12:]:
            d = pydicom.dcmread(f)
            d.ImagePositionPatient = [d.ImagePositionPatient[0], d.ImagePositionPatient[1],
                                      float(d.ImagePositionPatient[2]) + 0.5]
            d.save_as(f, enforce_file_format=True)
        show("series with uneven spacing (local folder)", lambda: LocalDatastore(work / "local").get_image("uneven"))
        store = LocalDatastore(work / "local")
        shutil.copytree(work / "ct", work / "local" / "head")
        ref = store.get_image("head")
        store.save_label("head", lm, reference=ref, base_version=None)
        show("second session saves the same image", lambda: store.save_label("head", lm, reference=ref))


if __name__ == "__main__":
    main()
