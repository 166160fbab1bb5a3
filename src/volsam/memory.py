"""Key/value memories for Memorizing SAM (``../shared/reference/NOTES.md`` section 4).

A :class:`Memory` holds, for one encoder block, the attention keys and values [H, M, hd] that a model
computes on labelled reference volumes: for each target of a dataset, a 128^3 window at 1.5 mm centred on
the target's centre of mass is encoded up to that block, and the keys/values of the tokens whose 16^3
patch touches the target (dilated by ``margin_voxels``) are kept. At inference
:func:`volsam.modeling.memory_attention.attach_memory` lets each query retrieve its nearest keys (exact
torch search for small memories, faiss for large ones).

A memory records the SHA-256 of the weights that wrote it (:func:`weights_sha256`) and its block;
:func:`check_memory` refuses to pair it with another model or block.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volsam.atomic import atomic_path

MEMORY_VERSION = 1
TOKEN_MODES = ("labelled", "all")


@dataclass
class Memory:
    """Attention keys and values of one encoder block.

    Attributes:
        keys: [H, M, hd] float tensor (H heads, M memorised tokens, hd head width).
        values: [H, M, hd] float tensor.
        block: encoder block index the keys/values belong to.
        model_name: registered name or checkpoint of the model that wrote them (informative).
        weights_sha256: :func:`weights_sha256` of that model.
        version: file-format version (:data:`MEMORY_VERSION`).
        meta: JSON-serialisable extras (data source, token mode, counts).
        gate_logits: [H] per-head gate logits trained by ``volsam train --memory`` (None: untrained, the
            gate stays closed and the memory changes nothing).
        top_k: keys retrieved per query and head.
    """

    keys: torch.Tensor
    values: torch.Tensor
    block: int
    model_name: str
    weights_sha256: str
    version: int = MEMORY_VERSION
    meta: dict[str, Any] = field(default_factory=dict)
    gate_logits: torch.Tensor | None = None
    top_k: int = 32

    def __post_init__(self) -> None:
        if self.gate_logits is not None and tuple(self.gate_logits.shape) != (self.keys.shape[0],):
            raise ValueError(
                f"gate_logits must be [H={self.keys.shape[0]}], got {tuple(self.gate_logits.shape)}"
            )
        if self.keys.ndim != 3 or self.keys.shape != self.values.shape:
            raise ValueError(
                f"memory keys and values must both be [H, M, hd], got {tuple(self.keys.shape)} and "
                f"{tuple(self.values.shape)}"
            )

    @property
    def size(self) -> int:
        """Number of memorised tokens M."""
        return int(self.keys.shape[1])

    def check(self, model: nn.Module, block: int) -> None:
        """:func:`check_memory` of this memory (what :func:`~volsam.modeling.memory_attention.attach_memory`
        calls, so the modeling layer needs no import of this module)."""
        check_memory(self, model, block)


def _encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict as it is without any attached memory wrapper."""
    from volsam.modeling.memory_attention import MemoryAttention

    wrapped = {
        f"image_encoder.blocks.{i}.attn."
        for i, b in enumerate(model.image_encoder.blocks)
        if isinstance(getattr(b, "attn", None), MemoryAttention)
    }
    out = {}
    for k, v in model.state_dict().items():
        prefix = next((p for p in wrapped if k.startswith(p)), None)
        if prefix is not None:
            rest = k[len(prefix) :]
            if not rest.startswith("inner."):
                continue  # the wrapper's own gate
            k = prefix + rest[len("inner.") :]
        out[k] = v
    return out


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the sorted state_dict keys, each tensor's dtype, shape and bytes (memory wrappers
    attached with :func:`~volsam.modeling.memory_attention.attach_memory` are ignored)."""
    h = hashlib.sha256()
    for k, v in sorted(_encoder_state(model).items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _block_attention(model: nn.Module, block: int) -> nn.Module:
    from volsam.modeling.memory_attention import MemoryAttention

    blocks = model.image_encoder.blocks
    if not 0 <= block < len(blocks):
        raise ValueError(f"block {block} out of range: the encoder has {len(blocks)} blocks")
    attn = blocks[block].attn
    if attn is None:
        raise ValueError(f"block {block} has no attention (MLP-only block); choose a block with attention")
    return attn.inner if isinstance(attn, MemoryAttention) else attn


def check_memory(memory: Memory, model: nn.Module, block: int) -> None:
    """Raise ``ValueError`` unless ``memory`` was written by these very weights at this block."""
    if memory.version != MEMORY_VERSION:
        raise ValueError(f"memory format version {memory.version} is not supported (expected {MEMORY_VERSION})")
    if memory.block != block:
        raise ValueError(
            f"memory was built at encoder block {memory.block}, not block {block}: keys of different blocks "
            f"live in different spaces; rebuild it with --block {block}"
        )
    attn = _block_attention(model, block)
    want = (attn.num_heads, attn.head_dim)
    got = (memory.keys.shape[0], memory.keys.shape[2])
    if want != got:
        raise ValueError(f"memory has (heads, head_dim) = {got} but block {block} of the model has {want}")
    digest = weights_sha256(model)
    if digest != memory.weights_sha256:
        raise ValueError(
            f"memory was built by another model ({memory.model_name!r}, weights sha256 "
            f"{memory.weights_sha256[:12]}...) than the one given (weights sha256 {digest[:12]}...); "
            "rebuild it with `volsam memory build` for these weights"
        )


def save_memory(memory: Memory, path: str | Path) -> Path:
    """Write ``memory`` as a safetensors file (tensors ``keys``, ``values``; the rest in its metadata),
    atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": "volsam.memory",
        "version": str(memory.version),
        "block": str(memory.block),
        "model_name": memory.model_name,
        "weights_sha256": memory.weights_sha256,
        "meta": json.dumps(memory.meta),
        "top_k": str(memory.top_k),
    }
    tensors = {"keys": memory.keys.detach().cpu().contiguous(), "values": memory.values.detach().cpu().contiguous()}
    if memory.gate_logits is not None:
        tensors["gate_logits"] = memory.gate_logits.detach().float().cpu().contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def load_memory(path: str | Path) -> Memory:
    """Read a file written by :func:`save_memory`; ``ValueError`` when it is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"memory file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != "volsam.memory":
                raise ValueError(f"{path} is not a volsam memory file")
            keys, values = f.get_tensor("keys"), f.get_tensor("values")
            gates = f.get_tensor("gate_logits") if "gate_logits" in f.keys() else None
    except ValueError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a readable memory file: {e}") from None
    return Memory(
        keys=keys,
        values=values,
        block=int(header["block"]),
        model_name=header.get("model_name", ""),
        weights_sha256=header["weights_sha256"],
        version=int(header["version"]),
        meta=json.loads(header.get("meta", "{}")),
        gate_logits=gates,
        top_k=int(header.get("top_k", 32)),
    )


def token_mask(window_mask: np.ndarray, patch_size: int, margin_voxels: int = 1) -> np.ndarray:
    """Tokens whose patch touches the mask: window mask (S, S, S) bool -> (S/p, S/p, S/p) bool.

    The mask is first dilated by ``margin_voxels`` (26-connected steps).
    """
    from scipy import ndimage

    m = np.asarray(window_mask, dtype=bool)
    if margin_voxels > 0:
        m = ndimage.binary_dilation(m, structure=np.ones((3, 3, 3), dtype=bool), iterations=margin_voxels)
    s = m.shape[0]
    g = s // patch_size
    return m.reshape(g, patch_size, g, patch_size, g, patch_size).any(axis=(1, 3, 5))


@torch.no_grad()
def block_qkv(model: nn.Module, image: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of encoder block ``block`` for one normalised window.

    Runs ``image_encoder.tokens``, blocks ``[:block]``, then that block's ``norm1`` and its attention's
    ``qkv``. image [1, 1, S, S, S] -> q, k, v each [H, N, hd] with N = (S/16)^3 tokens in C order of the
    token grid (the order of the model's own attention).
    """
    enc = model.image_encoder
    attn = _block_attention(model, block)
    x = enc.tokens(image)
    for blk in enc.blocks[:block]:
        x = blk(x)
    xn = enc.blocks[block].norm1(x)
    n = xn[0, ..., 0].numel()
    qkv = attn.qkv(xn).reshape(n, 3, attn.num_heads, attn.head_dim).permute(1, 2, 0, 3)  # 3, H, N, hd
    return qkv[0], qkv[1], qkv[2]


def use_memory(
    model: nn.Module, memory: str | Path | Memory, *, gate_init: float | None = None, search: str = "auto"
) -> Memory:
    """Load ``memory`` (a path or a :class:`Memory`) and attach it, in place, to its block of ``model``.

    ``search`` picks the top-k search (:data:`volsam.modeling.memory_attention.SEARCHES`; ``auto``: exact
    torch for small memories, faiss for large ones on CPU).

    The memory's trained gates are used (``gate_init`` overrides them, e.g. to start gate training). A
    memory built by another model (weights hash) or for a missing block is refused with ``ValueError``;
    one whose gates were never trained gets a warning, since its closed gate changes nothing.
    """
    import warnings

    from volsam.modeling.memory_attention import attach_memory

    mem = memory if isinstance(memory, Memory) else load_memory(memory)
    if not isinstance(model, nn.Module) or not hasattr(model, "image_encoder"):
        raise ValueError(f"a memory needs a PyTorch Sam3D model, got {type(model).__name__}")
    if mem.gate_logits is None and gate_init is None:
        warnings.warn(
            f"memory {memory if not isinstance(memory, Memory) else ''} has no trained gate, so it changes "
            "nothing; train one with `volsam train --memory`",
            UserWarning,
            stacklevel=2,
        )
    attach_memory(model, mem, mem.block, gate_init=gate_init, search=search)
    return mem


def build_memory(
    model: nn.Module,
    data: str | Path,
    block: int,
    *,
    tokens: str = "labelled",
    margin_voxels: int = 1,
    max_tokens: int | None = None,
    seed: int = 0,
    model_name: str = "",
    spacing: float = 1.5,
    fp16: bool = False,
) -> Memory:
    """Memorise the keys/values of block ``block`` over the labelled targets of a dataset.

    Args:
        model: the model whose keys/values are memorised (evaluation mode is used).
        data: anything :func:`volsam.eval.datasets.load_dataset` reads (nnU-Net folder, CSV, ...).
        block: encoder block with attention.
        tokens: ``"labelled"`` keeps the tokens whose patch touches the target (dilated by
            ``margin_voxels``); ``"all"`` keeps every token of each target's window.
        margin_voxels: dilation of the target mask (window voxels) before choosing tokens.
        max_tokens: keep at most this many tokens overall (uniform random subset, ``seed``).
        seed: seed of that subset.
        model_name: recorded in the memory (informative).
        spacing: window spacing in mm (SAM-Med3D: 1.5).
        fp16: store keys and values in float16 (half the file and RAM; they are cast back to the model's
            dtype when attached).

    Returns:
        a :class:`Memory` with keys and values [H, M, hd] (float32, or float16 with ``fp16``; CPU).
    """
    from volsam.eval.datasets import (
        _read_array,  # the label reader load_target_mask itself uses
        load_dataset,
        load_target_mask,
        resolve_targets,
        validate_case,
    )
    from volsam.io import read_image
    from volsam.transforms import extract_window, normalize_window, window_for_point

    if tokens not in TOKEN_MODES:
        raise ValueError(f"tokens must be one of {TOKEN_MODES}, got {tokens!r}")
    attn = _block_attention(model, block)
    cfg = model.image_encoder.cfg
    was_training = model.training
    model.eval()
    device = attn.qkv.weight.device
    ks: list[torch.Tensor] = []
    vs: list[torch.Tensor] = []
    skipped: list[str] = []
    n_targets = 0
    try:
        for case in load_dataset(data):
            why = validate_case(case)
            if why is not None:
                skipped.append(f"{case.name}: {why}")
                continue
            vol = read_image(case.image)
            label = _read_array(case.label)
            for target in resolve_targets(case, label):
                mask = load_target_mask(case, target, label)
                if not mask.any():
                    continue
                com = np.argwhere(mask).mean(axis=0)
                win = window_for_point(vol.affine, com, size=cfg.img_size, spacing=spacing)
                img = normalize_window(extract_window(vol.array, vol.affine, win, order=1))
                x = torch.from_numpy(img)[None, None].to(device=device, dtype=attn.qkv.weight.dtype)
                _, k, v = block_qkv(model, x, block)
                if tokens == "labelled":
                    wm = extract_window(mask.astype(np.uint8), vol.affine, win, order=0) > 0
                    sel = torch.from_numpy(token_mask(wm, cfg.patch_size, margin_voxels).reshape(-1)).to(device)
                    k, v = k[:, sel], v[:, sel]
                ks.append(k.float().cpu())
                vs.append(v.float().cpu())
                n_targets += 1
    finally:
        model.train(was_training)
    if not ks or sum(k.shape[1] for k in ks) == 0:
        raise ValueError(
            f"no labelled target found in {data}" + (f" (skipped: {'; '.join(skipped)})" if skipped else "")
        )
    keys, values = torch.cat(ks, dim=1), torch.cat(vs, dim=1)
    if max_tokens is not None and keys.shape[1] > max_tokens:
        gen = torch.Generator().manual_seed(seed)
        keep = torch.randperm(keys.shape[1], generator=gen)[:max_tokens].sort().values
        keys, values = keys[:, keep], values[:, keep]
    meta = {
        "data": str(data),
        "tokens": tokens,
        "margin_voxels": margin_voxels,
        "targets": n_targets,
        "spacing_mm": spacing,
        "skipped": skipped,
        "dtype": "float16" if fp16 else "float32",
    }
    if fp16:
        keys, values = keys.half(), values.half()
    return Memory(keys.contiguous(), values.contiguous(), block, model_name, weights_sha256(model), meta=meta)
