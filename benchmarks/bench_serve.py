"""Load test of ``volsam serve`` on loopback: N concurrent sessions x M clicks each.

A real uvicorn server in this process's background thread, N client threads with their own httpx
clients. Each client opens its own session on the bundled demo volume, shifted by a per-client number of
voxels (so no two sessions hold the same image), then sends M clicks (mostly positive, every fourth
negative) at voxels drawn from its own seeded generator, and records the round-trip time of each click
(HTTP + waiting for the session + segmentation). Reports p50/p95/max over all further clicks (the first
click of a session includes its encoder pass and is reported apart).

Isolation check: afterwards each session's click count must equal what its client sent, and replaying a
client's clicks alone in a fresh in-process ``Session`` must give the same label map (Dice 1 up to a
voxel or two where a logit within rounding of 0 flips with thread scheduling).

The server and the replays share one model instance (``--model``: default the shipped model), so any
difference is the server's doing.

    python -m benchmarks.bench_serve [--model NAME_OR_CHECKPOINT] [--sessions 8] [--clicks 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="name, checkpoint or ONNX export folder (default: shipped)")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the server")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import httpx
    import nibabel as nib
    import torch

    from volsam.demo import DEMO_IMAGE
    from volsam.eval.metrics import dice
    from volsam.models import resolve_model
    from volsam.serve import create_app
    from volsam.serve.background import background_server
    from volsam.session import Session

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = nib.load(DEMO_IMAGE)
    image = np.asarray(base.dataobj, dtype=np.float32)
    brain = np.argwhere(image > np.percentile(image, 60))
    images, uploads = [], []
    for s in range(args.sessions):
        shifted = np.roll(image, shift=2 * s, axis=0)
        images.append(shifted)
        uploads.append(gzip.compress(nib.Nifti1Image(shifted, base.affine).to_bytes(), compresslevel=1))

    model = resolve_model(args.model, "cpu", random_weights=True)  # one instance for the server and the replays
    app = create_app(model, max_sessions=args.sessions, device="cpu")
    stack = contextlib.ExitStack()
    url = stack.enter_context(background_server(app))

    def client(s: int) -> dict:
        rng = np.random.default_rng([7, s])
        sent, first, further = [], [], []
        with httpx.Client(base_url=url, timeout=600) as c:
            r = c.post("/sessions", files={"file": (f"case{s}.nii.gz", uploads[s], "application/octet-stream")})
            r.raise_for_status()
            sid = r.json()["id"]
            for k in range(args.clicks):
                point = [int(v) for v in brain[rng.integers(len(brain))]]
                positive = k % 4 != 3
                t0 = time.perf_counter()
                r = c.post(f"/sessions/{sid}/clicks", json={"point": point, "positive": positive})
                r.raise_for_status()
                (first if k == 0 else further).append((time.perf_counter() - t0) * 1e3)
                sent.append((point, positive))
            state = c.get(f"/sessions/{sid}").json()
            ov = c.get(f"/sessions/{sid}/overlay")
            labels = np.frombuffer(gzip.decompress(ov.content), dtype=ov.headers["X-Dtype"])
            labels = labels.reshape([int(v) for v in ov.headers["X-Shape"].split(",")])
        return {"sid": sid, "sent": sent, "first": first, "further": further, "state": state, "labels": labels}

    # Load the model once before timing (the first session would otherwise pay for it).
    with httpx.Client(base_url=url, timeout=600) as c:
        c.delete(f"/sessions/{c.post('/sessions/demo').json()['id']}")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.sessions) as pool:
        results = list(pool.map(client, range(args.sessions)))
    wall = time.perf_counter() - t0
    stack.close()

    first = [v for r in results for v in r["first"]]
    further = [v for r in results for v in r["further"]]
    isolation = []
    for s, r in enumerate(results):
        replay = Session(model, "cpu")
        replay.set_image(images[s], base.affine)
        for point, positive in r["sent"]:
            replay.add_click(point, positive=positive)
        a, b = replay.label_map > 0, r["labels"] > 0
        isolation.append(
            {
                "clicks_ok": r["state"]["clicks"] == len(r["sent"]),
                "dice_vs_replay": 1.0 if not (a.any() or b.any()) else dice(a, b),
                "voxels_differing": int((a != b).sum()),
            }
        )
    out = {
        "model": args.model or "shipped default",
        "sessions": args.sessions,
        "clicks_per_session": args.clicks,
        "torch_threads": args.threads,
        "wall_s": round(wall, 2),
        "first_click_ms": {"p50": _percentile(first, 50), "p95": _percentile(first, 95)},
        "further_click_ms": {
            "p50": _percentile(further, 50),
            "p95": _percentile(further, 95),
            "max": max(further),
            "mean": statistics.fmean(further),
        },
        "clicks_per_s": round(len(first + further) / wall, 2),
        "isolation": {
            "all_click_counts_match": all(i["clicks_ok"] for i in isolation),
            "min_dice_vs_replay": min(i["dice_vs_replay"] for i in isolation),
            "max_voxels_differing": max(i["voxels_differing"] for i in isolation),
        },
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    ok = out["isolation"]["all_click_counts_match"] and out["isolation"]["min_dice_vs_replay"] > 0.99
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
