"""Straightforward re-statement of the official encoder computation, kept as the reference that
volsam's fast attention is checked against: windows are really zero-padded to 14^3 and attend over all
2744 positions, and the relative-position bias is added through the 7-D broadcast of the official code.

Also the fixture README's weights rule, to make full-size weights without downloading anything, and a
digest of a state_dict to check that the rule remakes the fixtures' weights bit for bit.
"""

from __future__ import annotations

import hashlib
import math
import zlib

import torch
import torch.nn.functional as F

from volsam.config import EncoderConfig
from volsam.modeling.attention import get_rel_pos


def fixture_weights(keys: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Weights drawn by the rule in ../shared/fixtures/parity/README.md (quoted in tests/fixtures/parity/README.md)."""
    tables = (
        "positional_encoding_gaussian_matrix",
        "point_embeddings.",
        "not_a_point_embed",
        "no_mask_embed",
        "iou_token",
        "mask_tokens",
    )
    norms = ("neck.1.", "neck.3.", "mask_downscaling.1.", "mask_downscaling.4.", "output_upscaling.1.")
    out = {}
    for key, shape in keys:
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        r = torch.randn(shape, generator=g, dtype=torch.float64)
        leaf = key.split(".")[-2] if key.count(".") else key
        if any(t in key for t in tables):
            t = r
        elif (leaf.startswith("norm") or any(n in key for n in norms)) and key.endswith(".weight"):
            t = 1 + 0.1 * r
        elif "rel_pos_" in key:
            t = 0.3 * r
        elif key.endswith("pos_embed") or len(shape) == 1:
            t = 0.1 * r
        else:
            t = r / math.sqrt(math.prod(shape[1:]))
        out[key] = t.float()
    return out


def state_dict_sha256(sd: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every key in order, its dtype, shape and bytes: equal digests, bit-identical weights."""
    h = hashlib.sha256()
    for key, value in sd.items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _attention(sd: dict, p: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Official global attention on a cubic grid x [B, S, S, S, C]."""
    b, d, h, w, _ = x.shape
    qkv = F.linear(x, sd[p + "qkv.weight"], sd[p + "qkv.bias"]).reshape(b, d * h * w, 3, heads, -1)
    qkv = qkv.permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, d * h * w, -1).unbind(0)
    hd = q.shape[-1]
    attn = (q * hd**-0.5) @ k.transpose(-2, -1)
    rd = get_rel_pos(d, d, sd[p + "rel_pos_d"])
    rh = get_rel_pos(h, h, sd[p + "rel_pos_h"])
    rw = get_rel_pos(w, w, sd[p + "rel_pos_w"])
    r_q = q.reshape(b * heads, d, h, w, hd)
    rel_d = torch.einsum("bdhwc,dkc->bdhwk", r_q, rd)
    rel_h = torch.einsum("bdhwc,hkc->bdhwk", r_q, rh)
    rel_w = torch.einsum("bdhwc,wkc->bdhwk", r_q, rw)
    attn = (
        attn.view(b * heads, d, h, w, d, h, w)
        + rel_d[:, :, :, :, None, None]
        + rel_h[:, :, :, None, :, None]
        + rel_w[:, :, :, None, None, :]
    ).view(b * heads, d * h * w, d * h * w)
    out = attn.softmax(-1) @ v
    out = out.view(b, heads, d, h, w, -1).permute(0, 2, 3, 4, 1, 5).reshape(b, d, h, w, -1)
    return F.linear(out, sd[p + "proj.weight"], sd[p + "proj.bias"])


def _ln(x: torch.Tensor, sd: dict, p: str, eps: float = 1e-6) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[p + "weight"], sd[p + "bias"], eps)


def _ln3d(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + 1e-6)
    return sd[p + "weight"][:, None, None, None] * x + sd[p + "bias"][:, None, None, None]


def reference_encoder(sd: dict[str, torch.Tensor], cfg: EncoderConfig, x: torch.Tensor) -> torch.Tensor:
    """Official image-encoder forward from a state_dict: [B, 1, 128^3] -> [B, C, 8, 8, 8]."""
    e = "image_encoder."
    x = F.conv3d(x, sd[e + "patch_embed.proj.weight"], sd[e + "patch_embed.proj.bias"], stride=cfg.patch_size)
    x = x.permute(0, 2, 3, 4, 1) + sd[e + "pos_embed"]
    for i in range(cfg.depth):
        p = f"{e}blocks.{i}."
        if cfg.has_attention(i):
            shortcut = x
            y = _ln(x, sd, p + "norm1.")
            g = y.shape[1]
            if not cfg.is_global(i):
                s = cfg.window_size
                pad = (-g) % s
                y = F.pad(y, (0, 0, 0, pad, 0, pad, 0, pad))  # one window for the released sizes
                assert y.shape[1] == s, "reference covers the single-window case"
            y = _attention(sd, p + "attn.", y, cfg.num_heads)[:, :g, :g, :g]
            x = shortcut + y
        if cfg.block_style == "fastsam":
            x = _ln(x, sd, p + "norm2.")
            h = x
        else:
            h = _ln(x, sd, p + "norm2.")
        h = F.linear(
            F.gelu(F.linear(h, sd[p + "mlp.lin1.weight"], sd[p + "mlp.lin1.bias"])),
            sd[p + "mlp.lin2.weight"],
            sd[p + "mlp.lin2.bias"],
        )
        x = x + h
    x = x.permute(0, 4, 1, 2, 3)
    x = _ln3d(F.conv3d(x, sd[e + "neck.0.weight"]), sd, e + "neck.1.")
    return _ln3d(F.conv3d(x, sd[e + "neck.2.weight"], padding=1), sd, e + "neck.3.")
