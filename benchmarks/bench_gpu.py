"""GPU path: encoder and click latency per precision / compilation, attention backends, bf16 parity.

Times with CUDA events (median of ``--repeats`` after ``--warmup`` runs, batch 1, one 128^3 window):

- encoder: fp32 eager, bf16 autocast eager (SDPA picks its flash kernel), bf16 + ``torch.compile``
  (``max-autotune-no-cudagraphs``), bf16 + ``torch.compile(mode="reduce-overhead")`` (CUDA graphs);
- one click = prompt encoder + mask decoder + trilinear upsample of the low-res logits to the window, with
  one click and the previous logits as mask prompt (fixed shapes, as one step of a session), eager and
  CUDA-graphed;
- attention backends (dense / dilated) at 128^3 and 256^3 input: ms and peak allocated memory;
- parity: the mini models with the fixtures' weights, bf16 autocast against the fixtures' fp32 outputs
  (max abs difference of the embedding and of every decoder output).

    python -m benchmarks.bench_gpu [--models fastsam3d sam_med3d volsam_tiny] [--fixtures DIR] [--compile]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.timing import cuda_median_ms


def _bf16():
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16)


def _latency(name: str, args: argparse.Namespace, dev, row) -> None:
    """Encoder and click rows of one registered model (random weights)."""
    import torch
    import torch.nn.functional as F

    from volsam.registry import build_model

    torch.manual_seed(0)
    model = build_model(name).to(dev).eval()
    x = torch.randn(1, 1, 128, 128, 128, device=dev)
    enc = model.image_encoder

    def encode() -> torch.Tensor:
        return enc(x)

    with torch.inference_mode():
        row(model=name, part="encoder", mode="fp32 eager", ms=cuda_median_ms(encode, args.repeats, args.warmup))
        with _bf16():
            row(model=name, part="encoder", mode="bf16 eager", ms=cuda_median_ms(encode, args.repeats, args.warmup))
            emb = enc(x)
    # One session step: 1 click + previous logits, then the upsample to the window.
    g = model.prompt_encoder.mask_input_size
    coords = torch.tensor([[[64.0, 60.0, 70.0]]], device=dev)
    labels = torch.ones(1, 1, dtype=torch.long, device=dev)
    prev = torch.randn(1, 1, g, g, g, device=dev)

    def click() -> torch.Tensor:
        low, _ = model.decode(emb, coords, labels, prev)
        return F.interpolate(low.float(), size=(128, 128, 128), mode="trilinear", align_corners=False)

    with torch.inference_mode():
        row(model=name, part="click", mode="fp32 eager", ms=cuda_median_ms(click, args.repeats, args.warmup))
        with _bf16():
            row(model=name, part="click", mode="bf16 eager", ms=cuda_median_ms(click, args.repeats, args.warmup))
    if not args.compile:
        return
    for mode in ("max-autotune-no-cudagraphs", "reduce-overhead"):
        torch._dynamo.reset()
        cenc = torch.compile(enc, mode=mode)
        cclick = torch.compile(click, mode=mode)
        with torch.inference_mode(), _bf16():
            t0 = time.perf_counter()
            cenc(x)
            cclick()
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            e_ms = cuda_median_ms(lambda c=cenc: c(x), args.repeats, args.warmup)
            c_ms = cuda_median_ms(lambda c=cclick: c().clone(), args.repeats, args.warmup)
        row(model=name, part="encoder", mode=f"bf16 compile {mode}", ms=e_ms, compile_s=round(compile_s, 1))
        row(model=name, part="click", mode=f"bf16 compile {mode}", ms=c_ms)


def parity_diffs(fixtures: Path, name: str, dev, dtype) -> dict[str, float]:
    """Max abs difference of the embedding and each decoder output of a mini model with the fixture's
    weights, run on ``dev`` under autocast ``dtype`` (None: fp32), against the fixture's fp32 outputs."""
    import contextlib

    import torch

    from volsam.registry import build_model

    fx = torch.load(fixtures / f"{name}.pt", weights_only=True)
    model = build_model(name)
    model.load_state_dict(fx["state_dict"], strict=True)
    model = model.to(dev).eval()
    img = torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(fx["image_seed"]))
    amp = torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    diffs = {}
    with torch.inference_mode(), amp:
        emb = model.image_encoder(img.to(dev))
        diffs["image_embedding"] = (emb.float().cpu() - fx["outputs"]["image_embedding"]).abs().max().item()
        for case, inp in fx["inputs"].items():
            mask = inp["mask"].to(dev) if inp.get("mask") is not None else None
            points = (inp["coords"].to(dev), inp["labels"].to(dev))
            sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=mask)
            logits, iou = model.mask_decoder(
                image_embeddings=emb,
                image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            for key, got in (("low_res_logits", logits), ("iou", iou)):
                want = fx["outputs"][f"{case}/{key}"]
                diffs[f"{case}/{key}"] = (got.float().cpu() - want).abs().max().item()
    return diffs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["fastsam3d", "sam_med3d", "volsam_tiny"])
    ap.add_argument("--fixtures", default=None, help="parity fixtures folder (sam_med3d_mini.pt, ...)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile modes (slow to compile)")
    ap.add_argument("--no-backends", action="store_true", help="skip the dense/dilated rows")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cpu-parity", action="store_true", help="only the parity rows, fp32 on CPU (checks the script)")
    args = ap.parse_args(argv)

    import torch

    from volsam.registry import build_model

    if args.cpu_parity:  # checks this script's parity code on a machine without a GPU (fp32, so ~1e-6)
        if not args.fixtures:
            raise SystemExit("--cpu-parity needs --fixtures DIR")
        for name in ("sam_med3d_mini", "fastsam3d_mini"):
            diffs = parity_diffs(Path(args.fixtures), name, torch.device("cpu"), None)
            print(json.dumps({"model": name, "part": "parity fp32 cpu vs fixture", "max_abs": max(diffs.values())}))
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA GPU")
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows stay fp32
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}

    def row(**kw) -> None:
        out["rows"].append(kw)
        print(json.dumps(kw), flush=True)

    for name in args.models:
        _latency(name, args, dev, row)
        torch.cuda.empty_cache()

    for name in [m for m in ("fastsam3d", "volsam_tiny") if m in args.models and not args.no_backends]:
        for size in (128, 256):
            for backend in ("dense", "dilated"):
                torch.manual_seed(0)
                model = build_model(name, attention_backend=backend).to(dev).eval()
                x = torch.randn(1, 1, size, size, size, device=dev)
                with torch.inference_mode(), _bf16():
                    model.image_encoder(x)
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    ms = cuda_median_ms(lambda m=model, x=x: m.image_encoder(x), 20, 3)
                    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                row(model=name, part="backend", backend=backend, size=size, mode="bf16 eager", ms=ms, peak_mb=peak)
                del model
                torch.cuda.empty_cache()

    if args.fixtures:
        for name in ("sam_med3d_mini", "fastsam3d_mini"):
            diffs = parity_diffs(Path(args.fixtures), name, dev, torch.bfloat16)
            row(model=name, part="parity bf16 vs fixture fp32", max_abs=max(diffs.values()), diffs=diffs)

    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
