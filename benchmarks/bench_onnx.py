"""PyTorch vs onnxruntime (CPU) speed of the encoder and the prompt encoder + decoder, random weights.

Times are medians after warm-up, fp32, both runtimes with torch's intra-op thread count; the decoder
gets two clicks and a previous mask.

    python -m benchmarks.bench_onnx [--variants fastsam3d volsam_tiny] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks.timing import median_ms


def bench(name: str, repeats: int) -> dict[str, float | str]:
    """Median ms of encoder and decoder for PyTorch and onnxruntime, plus the largest output difference."""
    from volsam import build_model
    from volsam.export import OnnxModel, export_onnx

    torch.manual_seed(0)
    model = build_model(name)
    x = torch.randn(1, 1, 128, 128, 128)
    coords = torch.tensor([[[64.0, 60.0, 70.0], [50.0, 64.0, 64.0]]])
    labels = torch.tensor([[1, 0]])
    prev = torch.randn(1, 1, 32, 32, 32)
    row: dict[str, float | str] = {"variant": name}
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        export_onnx(model, d, name=name)
        row["export_s"] = time.perf_counter() - t0
        ort_model = OnnxModel(d, threads=torch.get_num_threads())
        with torch.inference_mode():
            emb = model.image_encoder(x)
            row["torch_encoder_ms"] = median_ms(lambda: model.image_encoder(x), repeats, warmup=1)
            row["torch_decoder_ms"] = median_ms(lambda: model.decode(emb, coords, labels, prev), repeats * 4, warmup=1)
            low = model.decode(emb, coords, labels, prev)[0]
        ort_emb = ort_model.image_encoder(x)
        row["ort_encoder_ms"] = median_ms(lambda: ort_model.image_encoder(x), repeats, warmup=1)
        row["ort_decoder_ms"] = median_ms(lambda: ort_model.decode(emb, coords, labels, prev), repeats * 4, warmup=1)
        row["max_abs_diff"] = max(
            (ort_emb - emb).abs().max().item(),
            (ort_model.decode(emb, coords, labels, prev)[0] - low).abs().max().item(),
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["fastsam3d", "volsam_tiny"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print("| variant | export s | encoder torch ms | encoder ORT ms | decoder torch ms | decoder ORT ms | max diff |")
    print("|---|---|---|---|---|---|---|")
    for name in args.variants:
        r = bench(name, args.repeats)
        print(
            f"| {r['variant']} | {r['export_s']:.1f} | {r['torch_encoder_ms']:.0f} | {r['ort_encoder_ms']:.0f} | "
            f"{r['torch_decoder_ms']:.1f} | {r['ort_decoder_ms']:.1f} | {r['max_abs_diff']:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
