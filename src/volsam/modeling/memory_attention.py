"""kNN-memory attention for one encoder block (Memorizing Transformers, Wu et al. 2022).

:class:`MemoryAttention` wraps an existing :class:`~volsam.modeling.attention.RelPosAttention` (kept
unchanged as ``.inner``) and adds, per head h, a read-out from an external memory of (key, value) pairs:

* each query q (taken from the inner module's own ``qkv``) retrieves its ``top_k`` keys from the memory by
  inner-product search: exact in torch (``q @ K_mem^T`` then ``topk``) for small memories, faiss for large
  ones (``search=``; :func:`faiss_index`), the logits of the retrieved keys always recomputed in torch so
  gradients reach the queries whichever search found them;
* it attends over them, ``mem = softmax(scale * q . k_i) @ v_i`` over the k retrieved keys;
* the head's output before the output projection becomes ``g_h * mem + (1 - g_h) * local`` with a learned
  gate ``g_h = sigmoid(gate_logit_h)``.

Design of the mixing: the inner module is *called*, not re-implemented, so its local attention (relative
positions, padded-window trick, dilated attention) stays exactly the code the checkpoints were validated
with. During that call a forward hook on ``inner.qkv`` captures the queries and a forward pre-hook on
``inner.proj`` replaces the projection's input (the per-head local outputs, channels ordered head-major
``h * head_dim + d``) by the mixed one. Mixing therefore happens per head *before* the projection, as in
the paper.

Closed gate: a head whose ``gate_logit <= CLOSED_LOGIT`` (-30) has gate exactly 0 (its local output is
passed through untouched by ``torch.where``); when every head is closed no hook is installed at all and
the output is bit-identical to the inner module's. Gates start closed, so attaching a memory changes
nothing until the gate is opened or trained (a closed gate has no gradient: start training from e.g. -4).

:func:`attach_memory` swaps ``model.image_encoder.blocks[block].attn`` for the wrapper and
:func:`detach_memory` restores the original module, so checkpoints keep loading into the plain model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from volsam.modeling.attention import RelPosAttention

CLOSED_LOGIT = -30.0
"""Gate logits at or below this value mean "gate exactly 0" (the memory is ignored for that head)."""

SEARCHES = ("auto", "torch", "faiss", "faiss-hnsw")
"""Top-k search of :class:`MemoryAttention`: exact torch, faiss exact (``IndexFlatIP``), faiss HNSW
(approximate), or ``auto`` (faiss HNSW on CPU from :data:`FAISS_MIN_TOKENS` memorised tokens when faiss is
installed, else exact torch)."""

FAISS_MIN_TOKENS = 65536
"""From this many memorised tokens ``search="auto"`` uses faiss HNSW on CPU. Below it exact torch search is
faster than both faiss indexes on the development CPU; above it the [N, M] score matrix and its top-k grow
linearly while HNSW does not (``python -m benchmarks.bench_memory --search-sizes`` measures both)."""


def faiss_index(keys: torch.Tensor, kind: str = "flat") -> Any:
    """One head's faiss inner-product index over keys [M, hd] (float32 copy on CPU).

    ``kind="flat"`` is exact (same top-k as torch up to ties); ``"hnsw"`` is approximate (32 links per node,
    ``efSearch`` 128) and sub-linear in M.
    """
    try:
        import faiss
    except ImportError:
        raise ValueError("faiss search needs the faiss-cpu package: pip install 'volsam[memory]'") from None
    k = np.ascontiguousarray(keys.detach().float().cpu().numpy())
    if kind == "flat":
        index = faiss.IndexFlatIP(k.shape[1])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(k.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    else:
        raise ValueError(f"faiss index kind must be 'flat' or 'hnsw', got {kind!r}")
    index.add(k)
    return index


class MemoryAttention(nn.Module):
    """A :class:`RelPosAttention` plus a top-k read-out from a fixed (key, value) memory.

    Args:
        inner: the wrapped attention module (its parameters are used as they are).
        keys: memory keys [H, M, hd] (H = ``inner.num_heads``, hd = ``inner.head_dim``).
        values: memory values [H, M, hd].
        top_k: keys retrieved per query and head (clipped to M).
        gate_init: initial gate logit of every head; the default :data:`CLOSED_LOGIT` is a closed gate.
        query_chunk: queries searched at once (bounds the [B, H, chunk, M] score matrix).
        search: one of :data:`SEARCHES`.
    """

    def __init__(
        self,
        inner: RelPosAttention,
        keys: torch.Tensor,
        values: torch.Tensor,
        *,
        top_k: int = 32,
        gate_init: float = CLOSED_LOGIT,
        query_chunk: int = 4096,
        search: str = "auto",
    ) -> None:
        super().__init__()
        nh, hd = inner.num_heads, inner.head_dim
        if keys.ndim != 3 or keys.shape[0] != nh or keys.shape[2] != hd or keys.shape != values.shape:
            raise ValueError(
                f"memory keys and values must both be [H={nh}, M, hd={hd}], got {tuple(keys.shape)} and "
                f"{tuple(values.shape)}"
            )
        if keys.shape[1] < 1:
            raise ValueError("the memory is empty")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
        self.search = search
        self._faiss: tuple[str, list[Any]] | None = None  # (kind, per-head indexes), built on first use
        self.inner = inner
        self.top_k = int(top_k)
        self.query_chunk = int(query_chunk)
        p = inner.qkv.weight
        self.register_buffer("mem_keys", keys.detach().to(device=p.device, dtype=p.dtype), persistent=False)
        self.register_buffer("mem_values", values.detach().to(device=p.device, dtype=p.dtype), persistent=False)
        self.gate_logit = nn.Parameter(torch.full((nh,), float(gate_init), device=p.device, dtype=p.dtype))

    @property
    def num_heads(self) -> int:
        return self.inner.num_heads

    @property
    def head_dim(self) -> int:
        return self.inner.head_dim

    @property
    def scale(self) -> float:
        return self.inner.scale

    def gate(self) -> torch.Tensor:
        """Per-head gate [H]: ``sigmoid(gate_logit)``, exactly 0 where ``gate_logit <= CLOSED_LOGIT``."""
        g = torch.sigmoid(self.gate_logit)
        return torch.where(self.gate_logit <= CLOSED_LOGIT, torch.zeros_like(g), g)

    def is_closed(self) -> bool:
        """Whether every head's gate is exactly 0 (the module then equals ``inner``)."""
        return bool((self.gate_logit <= CLOSED_LOGIT).all())

    def search_kind(self, device: torch.device) -> str:
        """The search :meth:`retrieve` uses for queries on ``device``: "torch", "flat" or "hnsw"."""
        if self.search == "torch":
            return "torch"
        if self.search == "faiss":
            return "flat"
        if self.search == "faiss-hnsw":
            return "hnsw"
        if device.type != "cpu" or self.mem_keys.shape[1] < FAISS_MIN_TOKENS:
            return "torch"
        try:
            import faiss  # noqa: F401
        except ImportError:
            return "torch"
        return "hnsw"

    def _faiss_topk(self, q: torch.Tensor, k: int, kind: str) -> torch.Tensor:
        """Indices [B, H, N, k] of the top-k memory keys of q [B, H, N, hd], from per-head faiss indexes."""
        if self._faiss is None or self._faiss[0] != kind:
            self._faiss = (kind, [faiss_index(self.mem_keys[h], kind) for h in range(self.num_heads)])
        b, nh, n, hd = q.shape
        qs = q.detach().float().cpu()
        out = torch.empty(b, nh, n, k, dtype=torch.long)
        for h, index in enumerate(self._faiss[1]):
            _, ids = index.search(np.ascontiguousarray(qs[:, h].reshape(b * n, hd).numpy()), k)
            # HNSW may find fewer than k neighbours (-1): repeat the best one rather than index key -1.
            ids = np.where(ids < 0, ids[:, :1], ids)
            out[:, h] = torch.from_numpy(ids).view(b, n, k)
        return out.to(q.device)

    def retrieve(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k search: q [B, H, N, hd] -> (scaled logits [B, H, N, k], memory indices [B, H, N, k]).

        Logits are ``scale * q . k_mem``, sorted descending (exactly so for torch and faiss flat search).
        """
        k = min(self.top_k, self.mem_keys.shape[1])
        kind = self.search_kind(q.device)
        if kind != "torch":
            idx = self._faiss_topk(q, k, kind)
            heads = torch.arange(q.shape[1], device=q.device).view(1, -1, 1, 1)
            keys = self.mem_keys[heads, idx]  # [B, H, N, k, hd]
            logits = torch.einsum("bhnd,bhnkd->bhnk", q, keys) * self.scale
            logits, order = logits.sort(dim=-1, descending=True)
            return logits, idx.gather(-1, order)
        logits, idx = [], []
        for q_c in q.split(self.query_chunk, dim=2):
            scores = torch.einsum("bhnd,hmd->bhnm", q_c, self.mem_keys)
            s, i = scores.topk(k, dim=-1)
            logits.append(s * self.scale)
            idx.append(i)
        return torch.cat(logits, dim=2), torch.cat(idx, dim=2)

    def read(self, q: torch.Tensor) -> torch.Tensor:
        """Memory read-out: q [B, H, N, hd] -> softmax over the k retrieved logits applied to their values,
        [B, H, N, hd]."""
        logits, idx = self.retrieve(q)
        h = idx.shape[1]
        heads = torch.arange(h, device=q.device).view(1, h, 1, 1)
        vals = self.mem_values[heads, idx]  # [B, H, N, k, hd]
        w = torch.softmax(logits, dim=-1)
        return torch.einsum("bhnk,bhnkd->bhnd", w, vals)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, G, G, G, C] (already normalised) -> [B, G, G, G, C]."""
        if self.is_closed():
            return self.inner(x)
        captured: dict[str, torch.Tensor] = {}
        nh, hd = self.num_heads, self.head_dim

        def grab_qkv(_mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            captured["qkv"] = out

        def mix(_mod: nn.Module, inp: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            local = inp[0]  # [B', G, G, G, C], channels head-major
            qkv = captured.pop("qkv")
            b = local.shape[0]
            n = local[0, ..., 0].numel()
            q = qkv.reshape(b, n, 3, nh, hd)[:, :, 0].transpose(1, 2)  # [B', H, N, hd]
            mem = self.read(q).transpose(1, 2)  # [B', N, H, hd]
            loc = local.reshape(b, n, nh, hd)
            g = self.gate().view(1, 1, nh, 1)
            mixed = torch.where(g == 0, loc, g * mem + (1 - g) * loc)
            return (mixed.reshape(local.shape),)

        h1 = self.inner.qkv.register_forward_hook(grab_qkv)
        h2 = self.inner.proj.register_forward_pre_hook(mix)
        try:
            return self.inner(x)
        finally:
            h1.remove()
            h2.remove()


@dataclass
class MemoryHandle:
    """What :func:`attach_memory` returns: the wrapper, where it sits, and the module it replaced."""

    module: MemoryAttention
    block: int
    original: RelPosAttention

    def detach(self, model: nn.Module) -> None:
        """Same as :func:`detach_memory`."""
        detach_memory(model)


def attach_memory(
    model: nn.Module,
    memory: Any,
    block: int,
    *,
    top_k: int | None = None,
    gate_init: float | None = None,
    search: str = "auto",
) -> MemoryHandle:
    """Wrap ``model.image_encoder.blocks[block].attn`` in a :class:`MemoryAttention` (in place).

    Args:
        model: a :class:`~volsam.modeling.Sam3D` (or anything with ``image_encoder.blocks``).
        memory: a :class:`volsam.memory.Memory` (checked against the model and block by its ``check``,
            :func:`volsam.memory.check_memory`) or a ``(keys, values)`` pair of [H, M, hd] tensors.
        block: encoder block index; it must have attention.
        top_k: keys retrieved per query and head (None: the memory's own, else 32).
        gate_init: per-head gate logit for every head; None takes a Memory's trained ``gate_logits``
            when it has them, else closed (output unchanged).
        search: top-k search, one of :data:`SEARCHES`.

    Returns:
        a :class:`MemoryHandle`; :func:`detach_memory` undoes the swap.
    """
    if hasattr(memory, "weights_sha256"):
        # The memory checks itself (volsam.memory.check_memory): modeling/ imports nothing above it.
        memory.check(model, block)
        keys, values = memory.keys, memory.values
        trained = memory.gate_logits if gate_init is None else None
        top_k = memory.top_k if top_k is None else top_k
    else:
        keys, values = memory
        trained = None
    blocks = model.image_encoder.blocks
    if not 0 <= block < len(blocks):
        raise ValueError(f"block {block} out of range: the encoder has {len(blocks)} blocks")
    attn = blocks[block].attn
    if isinstance(attn, MemoryAttention):
        raise ValueError(f"block {block} already has a memory attached; detach_memory(model) first")
    if not isinstance(attn, RelPosAttention):
        raise ValueError(f"block {block} has no attention (MLP-only block); choose a block with attention")
    k = 32 if top_k is None else top_k
    wrapper = MemoryAttention(
        attn, keys, values, top_k=k, gate_init=CLOSED_LOGIT if gate_init is None else gate_init, search=search
    )
    if trained is not None:
        with torch.no_grad():
            wrapper.gate_logit.copy_(trained.to(wrapper.gate_logit))
    wrapper.train(attn.training)
    blocks[block].attn = wrapper
    return MemoryHandle(wrapper, block, attn)


def detach_memory(model: nn.Module) -> list[int]:
    """Restore every wrapped block's original attention module; returns the block indices restored."""
    restored = []
    for i, blk in enumerate(model.image_encoder.blocks):
        if isinstance(getattr(blk, "attn", None), MemoryAttention):
            blk.attn = blk.attn.inner
            restored.append(i)
    return restored
