"""Per-interaction latency through nnInteractive's remote protocol vs the in-process Session.

One image (default 256 x 256 x 200 voxels of 1 mm: a noisy background with bright ellipsoids), one model
instance (``--model``, default the shipped model) shared by an in-process :class:`volsam.session.Session`
and a ``volsam serve`` app on loopback driven by the real ``nninteractive-client``
(``nnInteractiveRemoteInferenceSession``). Each round replays the same clicks on both, alternating
which goes first (so background load hits both alike): reset, one untimed first click (its window's
encoder pass is cached afterwards), then ``--clicks`` timed clicks (positive, every third negative) near
the same structure. In-process, a click is ``Session.add_click`` (returns the mask); through the
protocol it is ``add_point_interaction`` until the client has written the changed box into its target
buffer (HTTP, JSON, diff, blosc2 both ways). Reports the median of all timed clicks per path (after
``--warmup`` untimed rounds) and their ratio, and checks the client's buffer equals the in-process mask.

    python -m benchmarks.bench_nninteractive [--model NAME_OR_CHECKPOINT] [--shape 256 256 200]
        [--rounds 5] [--clicks 8] [--warmup 1] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def _scene(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Background noise with a few bright ellipsoids; returns the image and their centres (voxels)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 10, shape).astype(np.float32)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    centres = []
    for k in range(4):
        c = np.asarray(shape) * (0.3 + 0.4 * rng.random(3))
        r = 10 + 6 * rng.random(3) + 3 * k
        inside = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r, strict=True)) <= 1
        img[inside] += 300 + 50 * k
        centres.append(c)
    return img, centres


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="name, checkpoint or ONNX export folder (default: shipped)")
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 200])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds")
    ap.add_argument("--clicks", type=int, default=8, help="timed clicks per round (after one untimed)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import torch
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

    from volsam.models import resolve_model
    from volsam.serve import create_app
    from volsam.serve.background import background_server
    from volsam.session import Session

    torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    image, centres = _scene(shape)
    rng = np.random.default_rng(1)
    target = centres[-1]
    clicks = [np.clip(np.round(target + rng.normal(0, 3, 3)), 0, np.asarray(shape) - 1) for _ in range(args.clicks + 1)]
    signs = [k % 3 != 2 for k in range(args.clicks + 1)]

    model = resolve_model(args.model, "cpu")
    local = Session(model, "cpu")
    local.set_image(image, np.eye(4))
    app = create_app(model, device="cpu")
    times: dict[str, list[float]] = {"in_process": [], "protocol": []}
    agree = True
    with background_server(app) as url, nnInteractiveRemoteInferenceSession(url) as remote:
        remote.set_image(image[None], {"spacing": [1.0, 1.0, 1.0]})
        buf = np.zeros(shape, dtype=np.uint8)
        remote.set_target_buffer(buf)

        def run_local(timed: bool) -> np.ndarray:
            local.reset()
            mask = local.add_click(tuple(clicks[0]), positive=signs[0])
            for p, s in zip(clicks[1:], signs[1:], strict=True):
                t0 = time.perf_counter()
                mask = local.add_click(tuple(p), positive=s)
                if timed:
                    times["in_process"].append((time.perf_counter() - t0) * 1e3)
            return mask

        def run_remote(timed: bool) -> np.ndarray:
            remote.reset_interactions()
            remote.add_point_interaction([int(v) for v in clicks[0]], include_interaction=signs[0])
            for p, s in zip(clicks[1:], signs[1:], strict=True):
                t0 = time.perf_counter()
                remote.add_point_interaction([int(v) for v in p], include_interaction=s)
                if timed:
                    times["protocol"].append((time.perf_counter() - t0) * 1e3)
            return buf.copy()

        for r in range(args.warmup + args.rounds):
            timed = r >= args.warmup
            order = (run_local, run_remote) if r % 2 == 0 else (run_remote, run_local)
            masks = {f.__name__: f(timed) for f in order}
            agree = agree and bool(np.array_equal(masks["run_local"], masks["run_remote"]))

    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "model": args.model or "shipped default",
        "shape": list(shape),
        "torch_threads": args.threads,
        "timed_clicks_per_path": len(times["protocol"]),
        "median_ms": {k: round(v, 2) for k, v in med.items()},
        "p90_ms": {k: round(float(np.percentile(v, 90)), 2) for k, v in times.items()},
        "ratio_protocol_over_in_process": round(med["protocol"] / med["in_process"], 3),
        "final_masks_equal": agree,
        "mask_voxels": int(buf.sum()),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
