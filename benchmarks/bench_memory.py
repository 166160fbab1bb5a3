"""Cost of a Memorizing-SAM memory: encoder ms with and without it, and its size.

Times the image encoder on one 128^3 window (median after warm-up, fp32, ``inference_mode``) for the
plain model and with the memory attached to its block (its trained gates; gates forced open when it has
none, so the retrieval is always paid for), and reports the memory's token count, top-k, tensor bytes and
file size.

With ``--search-sizes`` it also times the top-k search alone on synthetic memories of those token counts
(8 heads x 32, 512 queries = one 128^3 window of a patch-16 model, top-32): exact torch, exact faiss
(``IndexFlatIP``) and approximate faiss HNSW (with its recall of the exact top-k and its build time).

    python -m benchmarks.bench_memory --model CHECKPOINT --memory MEMORY [--threads 2]
    python -m benchmarks.bench_memory --search-sizes 16384 65536 262144 1048576
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="registered name or checkpoint the memory was built for")
    ap.add_argument("--memory", default=None)
    ap.add_argument("--search-sizes", type=int, nargs="*", default=[], help="synthetic memory sizes to search")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)

    import torch

    from benchmarks.timing import median_ms
    from volsam.memory import load_memory, use_memory
    from volsam.modeling.memory_attention import detach_memory
    from volsam.models import resolve_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for m in args.search_sizes:
        print(json.dumps(search_costs(m, args.repeats)), flush=True)
    if args.model is None or args.memory is None:
        if not args.search_sizes:
            ap.error("give --model and --memory, or --search-sizes")
        return 0
    model = resolve_model(args.model, "cpu", random_weights=True)  # a bare name: random weights, timing only
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


def search_costs(tokens: int, repeats: int, heads: int = 8, head_dim: int = 32, queries: int = 512) -> dict:
    """Median ms of one top-32 retrieval over a random memory of ``tokens`` keys, per search kind."""
    import time

    import torch

    from benchmarks.timing import median_ms
    from volsam.modeling.attention import RelPosAttention
    from volsam.modeling.memory_attention import MemoryAttention

    gen = torch.Generator().manual_seed(tokens)
    keys = torch.randn(heads, tokens, head_dim, generator=gen)
    q = torch.randn(1, heads, queries, head_dim, generator=gen)
    inner = RelPosAttention(heads * head_dim, heads, use_rel_pos=False)
    row: dict = {"tokens": tokens, "memory_mb": round(2 * keys.numel() * 4 / 2**20, 1)}
    exact_idx = None
    for search in ("torch", "faiss", "faiss-hnsw"):
        wrapper = MemoryAttention(inner, keys, keys, top_k=32, search=search)
        t0 = time.perf_counter()
        with torch.inference_mode():
            _, idx = wrapper.retrieve(q)  # builds the faiss index on first use
        row[f"{search}_first_ms"] = round(1000 * (time.perf_counter() - t0), 1)

        def run(w: MemoryAttention = wrapper) -> None:
            with torch.inference_mode():
                w.retrieve(q)

        row[f"{search}_ms"] = round(median_ms(run, repeats, 1), 2)
        if exact_idx is None:
            exact_idx = idx
        elif search == "faiss-hnsw":
            hits = (idx.unsqueeze(-1) == exact_idx.unsqueeze(-2)).any(-1).float().mean()
            row["hnsw_recall_at_32"] = round(float(hits), 3)
    return row


if __name__ == "__main__":
    raise SystemExit(main())
