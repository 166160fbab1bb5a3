"""Cost of a Memorizing-SAM memory: encoder ms with and without it, and its size.

Times the image encoder on one 128^3 window (median after warm-up, fp32, ``inference_mode``) for the
plain model and with the memory attached to its block (its trained gates; gates forced open when it has
none, so the retrieval is always paid for), and reports the memory's token count, top-k, tensor bytes and
file size.

    python -m benchmarks.bench_memory --model CHECKPOINT --memory MEMORY [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="registered name or checkpoint the memory was built for")
    ap.add_argument("--memory", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)

    import torch

    from benchmarks.timing import median_ms
    from volsam.memory import load_memory, use_memory
    from volsam.modeling.memory_attention import detach_memory
    from volsam.session import resolve_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = resolve_model(args.model, "cpu")
    mem = load_memory(args.memory)
    x = torch.randn(1, 1, model.img_size, model.img_size, model.img_size)

    def encode() -> None:
        with torch.inference_mode():
            model.image_encoder(x)

    plain = median_ms(encode, args.repeats, 2)
    use_memory(model, mem, gate_init=None if mem.gate_logits is not None else 0.0)
    with_mem = median_ms(encode, args.repeats, 2)
    detach_memory(model)
    plain_again = median_ms(encode, args.repeats, 2)
    out = {
        "model": args.model,
        "memory": args.memory,
        "block": mem.block,
        "tokens": mem.size,
        "heads": int(mem.keys.shape[0]),
        "top_k": mem.top_k,
        "tensor_mb": round((mem.keys.numel() + mem.values.numel()) * mem.keys.element_size() / 2**20, 2),
        "file_mb": round(Path(args.memory).stat().st_size / 2**20, 2),
        "encoder_ms_plain": round(min(plain, plain_again), 1),
        "encoder_ms_with_memory": round(with_mem, 1),
        "extra_ms": round(with_mem - min(plain, plain_again), 1),
        "threads": args.threads,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
