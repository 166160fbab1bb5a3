"""3D ViT image encoder (SAM-Med3D's ``vit_b_ori`` and FastSAM3D's student)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from volsam.config import EncoderConfig
from volsam.modeling.attention import RelPosAttention
from volsam.modeling.common import LayerNorm3d, MLPBlock


class PatchEmbed3D(nn.Module):
    """Non-overlapping cubic patches -> tokens: [B, 1, D, H, W] -> [B, D/p, H/p, W/p, C]."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class Block(nn.Module):
    """One transformer block on a token grid [B, G, G, G, C].

    ``style="sam"``: ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``.
    ``style="fastsam"``: ``x = x + attn(norm1(x)); x = norm2(x); x = x + mlp(x)`` (FastSAM3D normalises
    the residual stream itself). ``attn=None`` gives FastSAM3D's MLP-only blocks.
    """

    def __init__(self, dim: int, attn: RelPosAttention | None, mlp_dim: int, style: str, eps: float) -> None:
        super().__init__()
        if style not in ("sam", "fastsam"):
            raise ValueError(f"block style must be 'sam' or 'fastsam', got {style!r}")
        self.style = style
        if attn is not None:
            self.norm1 = nn.LayerNorm(dim, eps=eps)
            self.attn = attn
        else:
            self.attn = None
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLPBlock(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            x = x + self.attn(self.norm1(x))
        if self.style == "fastsam":
            x = self.norm2(x)
            return x + self.mlp(x)
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT3D(nn.Module):
    """[B, 1, S, S, S] volume (S = ``img_size``, z-normalised) -> [B, out_chans, S/16, S/16, S/16]."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        g = cfg.grid_size
        self.patch_embed = PatchEmbed3D(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, g, cfg.embed_dim))
        self.blocks = nn.ModuleList()
        for i in range(cfg.depth):
            attn = None
            if cfg.has_attention(i):
                window = 0 if cfg.is_global(i) else cfg.window_size
                attn = RelPosAttention(
                    cfg.embed_dim,
                    cfg.num_heads,
                    qkv_bias=cfg.qkv_bias,
                    use_rel_pos=cfg.use_rel_pos,
                    rel_pos_size=2 * (window or g) - 1,
                    window_size=window,
                    dilated_branches=cfg.dilated_branches
                    if cfg.attention_backend == "dilated" and window == 0
                    else None,
                )
            mlp_dim = int(cfg.embed_dim * cfg.mlp_ratio)
            self.blocks.append(Block(cfg.embed_dim, attn, mlp_dim, cfg.block_style, cfg.layer_norm_eps))
        self.neck = nn.Sequential(
            nn.Conv3d(cfg.embed_dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm3d(cfg.out_chans),
            nn.Conv3d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(cfg.out_chans),
        )

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the expected shape unless x is [B, 1, S, S, S] floating point."""
        c = self.cfg
        expected = f"[B, {c.in_chans}, {c.img_size}, {c.img_size}, {c.img_size}] floating point"
        if not isinstance(x, torch.Tensor) or x.ndim != 5 or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            dtype = getattr(x, "dtype", None)
            raise ValueError(f"image must be a {expected} tensor, got {got} {dtype}")
        _, ch, d, h, w = x.shape
        if ch != c.in_chans or not (d == h == w) or d % c.patch_size:
            raise ValueError(
                f"image must be {expected} (a cube whose side is a multiple of {c.patch_size}), got {tuple(x.shape)}"
            )

    def set_attention_backend(self, backend: str) -> None:
        """Switch the global-attention blocks to ``"dense"`` or ``"dilated"`` attention, in place.

        Same parameters and state_dict; the result equals building the model with that backend
        (``build_model(name, ckpt, attention_backend=...)``). Windowed blocks are left as they are.
        """
        from dataclasses import replace

        cfg = replace(self.cfg, attention_backend=backend)  # validates the name
        for i, blk in enumerate(self.blocks):
            if blk.attn is not None and cfg.is_global(i):
                inner = getattr(blk.attn, "inner", blk.attn)  # a memory wrapper keeps the block's attention
                inner.dilated_branches = cfg.dilated_branches if backend == "dilated" else None
        self.cfg = cfg

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding plus position embedding: [B, 1, S, S, S] -> [B, G, G, G, C]."""
        self.check_input(x)
        x = self.patch_embed(x)
        pos = self.pos_embed
        if x.shape[1] != pos.shape[1]:  # larger inputs: interpolate the learned position grid
            pos = F.interpolate(pos.permute(0, 4, 1, 2, 3), size=x.shape[1:4], mode="trilinear")
            pos = pos.permute(0, 2, 3, 4, 1)
        return x + pos

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Neck output and each block's output [B, G, G, G, C] (for feature distillation)."""
        x = self.tokens(x)
        feats = []
        for blk in self.blocks:
            x = blk(x)
            feats.append(x)
        return self.neck(x.permute(0, 4, 1, 2, 3)), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))
