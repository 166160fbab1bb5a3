"""What hostile requests cost ``volsam serve``: time and peak RSS per request, each in a fresh process.

Scenarios (each runs in its own child process, so ``ru_maxrss`` is that request's peak):

- ``bomb``: a ~1 MB ``.nii.gz`` whose header declares 1024^3 uint8 voxels (1 GiB inflated), uploaded.
- ``tiny-header``: a 68-byte NRRD header declaring 1024^3 uint8 voxels, uploaded.
- ``padded-header``: an NRRD header padded past 64 KB with ``data file: /etc/hostname``, uploaded.
- ``huge-header``: a 200 MB NRRD whose header never ends (comment lines), opened by ``{"path"}``.
- ``objects``: one click, then N ``POST /objects`` on a 256^3 image (RSS after, ms per call).
- ``ext-bomb``: a ~3 MB ``.nii.gz`` whose header extensions inflate to ``--ext-gib`` GiB (issue 30 item 2),
  uploaded.
- ``ext-bomb-old``: the same file through the code path main had before the fix: its ``read_header``
  called ``nibabel.load(path, mmap=False).header`` first, which reads the extensions whole.
- ``scribble-mask`` / ``lasso-mask``: through the nnInteractive protocol, a 256^3 image, then an all-ones
  scribble (lasso) mask, ~200 bytes on the wire (issue 30 item 3).
- ``fake-lease``: 3 concurrent 400 MB bodies to ``/set_image`` with a made-up lease token, streamed over
  loopback to a real uvicorn (item 4).
- ``leases``: 8 leases, each sending a ~100-byte body that declares a 2^26-voxel float32 image (zeros), with
  the server's memory budget at 2 GiB where the server has one (item 4).
- ``eviction``: 8 sessions each active a moment ago, then 8 quick ``/claim`` from another client: how many
  of the active sessions survive, and what the claims get (item 5).

The server is the in-process ASGI app (``fastapi.testclient``), with the shipped model; the requests
are real HTTP requests to it. ``--max-voxels`` is the server's default (2^28).

    python -m benchmarks.bench_hardening [--only bomb,objects] [--objects 300] [--ext-gib 3]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

SCENARIOS = (
    "bomb",
    "tiny-header",
    "padded-header",
    "huge-header",
    "objects",
    "scribble-mask",
    "lasso-mask",
    "fake-lease",
    "leases",
    "eviction",
    "ext-bomb",
    "ext-bomb-old",
)
PROTOCOL = ("scribble-mask", "lasso-mask", "fake-lease", "leases", "eviction")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _file(name: str, tmp: Path) -> tuple[str, bytes]:
    import nibabel as nib
    import numpy as np

    if name == "bomb":
        img = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), np.eye(4))
        img.header.set_data_shape((1024, 1024, 1024))
        gz = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing; streamed, never 1 GiB in memory
        parts = [gz.compress(img.header.binaryblock + b"\0" * 4)]
        zeros = b"\0" * (1 << 20)
        parts += [gz.compress(zeros) for _ in range(1024)]
        return "bomb.nii.gz", b"".join([*parts, gz.flush()])
    if name == "tiny-header":
        return "tiny.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1024 1024 1024\nencoding: raw\n\n"
    if name == "padded-header":
        pad = b"".join(b"# %s\n" % (b"x" * 60) for _ in range(1200))
        fields = b"type: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
        return "padded.nrrd", b"NRRD0004\n" + pad + fields + b"data file: /etc/hostname\n\n"
    raise ValueError(name)


def _ext_bomb(gib: float) -> bytes:
    """A NIfTI-1 .nii.gz with vox_offset 0 (nibabel reads extensions to the end of the file) and ``gib`` GiB
    of extensions of at most 1 GiB each, filled with 0x01 (nibabel strips trailing NULs, so zeros would be
    dropped once read; these are kept), as gzip members of one MiB compressed once."""
    import gzip

    import nibabel as nib
    import numpy as np

    hdr = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)).header.copy()
    hdr["vox_offset"] = 0
    mib, total = gzip.compress(b"\1" * (1 << 20), compresslevel=9), int(gib * 1024)
    parts = [gzip.compress(hdr.binaryblock + b"\1\0\0\0")]
    while total > 0:
        n = min(total, 1024)
        parts += [gzip.compress(np.array([(n << 20) + 8, 0], "<i4").tobytes()), *[mib] * n]
        total -= n
    return b"".join([*parts, gzip.compress(bytes(8))])


def _ext_bomb_old(gib: float) -> dict:
    import nibabel as nib

    tmp = Path(tempfile.mkdtemp())
    path = tmp / "ext-bomb.nii.gz"
    path.write_bytes(_ext_bomb(gib))
    base, t0 = _peak_mb(), time.perf_counter()
    try:
        hdr = nib.load(path, mmap=False).header
        outcome = f"header parsed, {len(hdr.extensions)} extensions"
    except Exception as e:  # whatever nibabel raises is the outcome measured
        outcome = f"{type(e).__name__}: {e}"[:160]
    return {
        "scenario": "ext-bomb-old",
        "file_mb": round(path.stat().st_size / 1e6, 2),
        "inflates_gib": gib,
        "seconds": round(time.perf_counter() - t0, 3),
        "peak_before_mb": round(base, 1),
        "peak_mb": round(_peak_mb(), 1),
        "detail": outcome,
    }


def _app(**kw):
    """The server with the shipped model and only the options this version of create_app has (the
    benchmark also runs against older checkouts, for the before figures)."""
    import inspect

    from volsam.serve import create_app

    known = inspect.signature(create_app).parameters
    return create_app(None, device="cpu", **{k: v for k, v in kw.items() if k in known})


def _meta() -> dict[str, str]:
    return {"X-Meta": json.dumps({"image_properties": {"spacing": [1.0, 1.0, 1.0]}})}


def _protocol_child(name: str) -> dict:
    import threading

    import numpy as np
    from fastapi.testclient import TestClient

    from volsam.serve import wire

    octet = {"Content-Type": "application/octet-stream"}
    if name in ("scribble-mask", "lasso-mask"):
        with TestClient(_app()) as c:
            h = {"X-Lease-Token": c.post("/claim").json()["lease_token"], **octet}
            img = np.zeros((1, 256, 256, 256), np.float32)
            img[0, 100:150, 100:150, 100:150] = 100
            assert c.post("/set_image", content=wire.pack(img), headers={**h, **_meta()}).status_code == 200
            del img
            r = c.post("/set_target_buffer", json={"shape": [256] * 3, "dtype": "uint8"}, headers=h)
            assert r.status_code == 200, r.text
            body = wire.pack(np.ones((256, 256, 256), np.uint8))
            path = "/add_scribble_interaction" if name == "scribble-mask" else "/add_lasso_interaction"
            base, t0 = _peak_mb(), time.perf_counter()
            r = c.post(path, content=body, headers=h)
            seconds = time.perf_counter() - t0
            return {
                "scenario": name,
                "body_bytes": len(body),
                "status": r.status_code,
                "seconds": round(seconds, 3),
                "peak_before_mb": round(base, 1),
                "peak_mb": round(_peak_mb(), 1),
                "detail": (r.json().get("detail", "") if r.status_code != 200 else "")[:160],
            }
    if name == "fake-lease":
        import httpx

        from volsam.serve.background import background_server

        def body():
            chunk = b"\0" * (1 << 20)
            for _ in range(400):
                yield chunk

        results: list = []

        def send(url: str) -> None:
            try:
                with httpx.Client(base_url=url, timeout=120) as cl:
                    h = {"X-Lease-Token": "made-up", "Content-Length": str(400 << 20), **octet}
                    results.append(cl.post("/set_image", content=body(), headers=h).status_code)
            except httpx.HTTPError as e:  # the server may close the connection before the body is sent
                results.append(type(e).__name__)

        with background_server(_app()) as url:
            base, t0 = _peak_mb(), time.perf_counter()
            threads = [threading.Thread(target=send, args=(url,)) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - t0
        return {
            "scenario": name,
            "status": results,
            "seconds": round(seconds, 3),
            "peak_before_mb": round(base, 1),
            "peak_mb": round(_peak_mb(), 1),
        }
    if name == "leases":
        with TestClient(_app(max_memory=2 << 30)) as c:
            body = wire.pack(np.zeros((1, 512, 512, 256), np.float32))
            base, t0 = _peak_mb(), time.perf_counter()
            codes: list = []
            for _ in range(8):
                r = c.post("/claim")
                if r.status_code != 200:
                    codes.append(r.status_code)
                    continue
                h = {"X-Lease-Token": r.json()["lease_token"], **octet, **_meta()}
                codes.append(c.post("/set_image", content=body, headers=h).status_code)
            seconds = time.perf_counter() - t0
            return {
                "scenario": name,
                "body_bytes": len(body),
                "status": codes,
                "seconds": round(seconds, 3),
                "rss_after_mb": round(_rss_mb(), 1),
                "peak_before_mb": round(base, 1),
                "peak_mb": round(_peak_mb(), 1),
            }
    if name == "eviction":
        with TestClient(_app()) as c:
            img = np.zeros((1, 64, 64, 64), np.float32)
            users = []
            for _ in range(8):
                h = {"X-Lease-Token": c.post("/claim").json()["lease_token"], **octet}
                assert c.post("/set_image", content=wire.pack(img), headers={**h, **_meta()}).status_code == 200
                users.append(h)
            for h in users:  # every user active a moment ago
                assert c.post("/heartbeat", headers=h).status_code == 200
                assert c.post("/reset_interactions", headers=h).status_code == 200
            claims = [c.post("/claim") for _ in range(8)]
            alive = sum(c.post("/reset_interactions", headers=h).status_code == 200 for h in users)
            return {
                "scenario": name,
                "claims": [r.status_code for r in claims],
                "retry_after": sorted({r.headers.get("Retry-After") for r in claims} - {None}),
                "active_sessions_surviving": f"{alive}/8",
            }
    raise ValueError(name)


def _child(name: str, objects: int, ext_gib: float = 3.0) -> dict:
    if name == "ext-bomb-old":
        return _ext_bomb_old(ext_gib)
    from fastapi.testclient import TestClient

    from volsam.serve import create_app

    if name in PROTOCOL:
        return _protocol_child(name)
    tmp = Path(tempfile.mkdtemp())
    app = create_app(None, data_root=tmp, device="cpu")
    with TestClient(app) as c:
        if name == "objects":
            import nibabel as nib
            import numpy as np

            rng = np.random.default_rng(0)
            img = rng.normal(0, 1, (256, 256, 256)).astype(np.float32)
            img[100:150, 100:150, 100:150] += 5
            nib.save(nib.Nifti1Image(img, np.eye(4)), tmp / "big.nii.gz")
            sid = c.post("/sessions", json={"path": "big.nii.gz"}).json()["id"]
            c.post(f"/sessions/{sid}/clicks", json={"point": [125, 125, 125]})
            before = _rss_mb()
            codes: dict[int, int] = {}
            t0 = time.perf_counter()
            for _ in range(objects):
                code = c.post(f"/sessions/{sid}/objects").status_code
                codes[code] = codes.get(code, 0) + 1
            ms = (time.perf_counter() - t0) * 1e3 / objects
            assert c.get(f"/sessions/{sid}/labels", params={"format": "nrrd"}).status_code == 200
            return {
                "scenario": name,
                "calls": objects,
                "status": codes,
                "rss_before_mb": round(before, 1),
                "rss_after_mb": round(_rss_mb(), 1),
                "peak_mb": round(_peak_mb(), 1),
                "ms_per_call": round(ms, 2),
            }
        if name == "huge-header":
            with (tmp / "huge.nrrd").open("wb") as f:
                f.write(b"NRRD0004\n")
                line = b"# " + b"x" * 1000 + b"\n"
                for _ in range(200 * 1024):
                    f.write(line)
            base, t0 = _peak_mb(), time.perf_counter()
            r = c.post("/sessions", json={"path": "huge.nrrd"})
        else:
            filename, data = ("ext-bomb.nii.gz", _ext_bomb(ext_gib)) if name == "ext-bomb" else _file(name, tmp)
            base, t0 = _peak_mb(), time.perf_counter()
            r = c.post("/sessions", files={"file": (filename, io.BytesIO(data), "application/octet-stream")})
        seconds = time.perf_counter() - t0
        return {
            "scenario": name,
            "status": r.status_code,
            "seconds": round(seconds, 3),
            "peak_before_mb": round(base, 1),
            "peak_mb": round(_peak_mb(), 1),
            "detail": r.json().get("detail", "")[:160],
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    ap.add_argument("--objects", type=int, default=300, help="POST /objects calls of the objects scenario")
    ap.add_argument("--ext-gib", type=float, default=3.0, help="GiB the ext-bomb's header extensions inflate to")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.objects, args.ext_gib)))
        return 0
    for name in args.only.split(","):
        out = subprocess.run(
            [
                *(sys.executable, "-m", "benchmarks.bench_hardening", "--child", name),
                *("--objects", str(args.objects), "--ext-gib", str(args.ext_gib)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        print(out.stdout.strip() or f'{{"scenario": "{name}", "error": {json.dumps(out.stderr[-400:])}}}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
