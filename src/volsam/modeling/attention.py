"""Attention layers.

The encoder's attention reproduces SAM-Med3D's decomposed relative positions *including* the quirk the
released weights were trained with (``../shared/reference/NOTES.md`` section 2): for a query at grid
position (d, h, w) and a key at (kd, kh, kw) the added bias is::

    q[d, h, w]  . Rd[d,  kw]      (the d-table indexed by the key's *w*)
  + q[d, h, kd] . Rh[h,  kw]      (the query taken at w = kd)
  + q[d, h, kh] . Rw[kh, kw]      (the query taken at w = kh)

with ``R*[i, j] = table[i - j + S - 1]`` for a grid of side S. This is what broadcasting
``rel_d[..., None, None, :] + rel_h[..., None, :, None, :] + rel_w[..., None, None, :, :]`` does to a
7-D ``attn[b, d, h, w, kd, kh, kw]`` view on a cubic grid.

Windowed blocks pad the 8^3 token grid with zeros to one 14^3 window. Padded tokens are identical
(their q, k, v are the qkv bias), so instead of 2744 keys we use the 512 real keys plus one key per
query that stands for the whole padded set: its value is ``b_v`` and its logit is
``scale * q . b_k + log(sum over padded keys of exp(bias))``, where the sum factorises over the key
axes. Padded query rows are never computed since the block crops them away. The result is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position table [L, C] -> per-pair embeddings [q_size, k_size, C].

    The table is linearly resized when its length differs from ``2 * max(q_size, k_size) - 1``
    (inputs larger than the training size).
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear"
        )
        rel_pos = rel_pos.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


class RelPosAttention(nn.Module):
    """Multi-head self-attention over a cubic token grid with SAM-Med3D's relative positions.

    Args:
        dim: token width C.
        num_heads: heads; head dim = C // num_heads.
        rel_pos_size: length of each relative-position table (2 * S - 1 for attention span S).
        window_size: 0 for global attention over the whole grid; otherwise the side of the zero-padded
            windows the grid is split into (SAM-Med3D pads the 8^3 grid to one 14^3 window).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        rel_pos_size: int = 15,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = window_size
        self.use_rel_pos = use_rel_pos
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if use_rel_pos:
            self.rel_pos_d = nn.Parameter(torch.zeros(rel_pos_size, self.head_dim))
            self.rel_pos_h = nn.Parameter(torch.zeros(rel_pos_size, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(rel_pos_size, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, G, G, G, C] (already normalised) -> [B, G, G, G, C]."""
        b, g = x.shape[0], x.shape[1]
        s = self.window_size
        if s == 0 or g <= s:
            return self._attend_grid(x, span=max(s, g))
        # Several windows (inputs larger than the training size): pad, partition, attend, crop.
        n = -(-g // s)
        pad = n * s - g
        xp = F.pad(x, (0, 0, 0, pad, 0, pad, 0, pad))
        xw = xp.view(b, n, s, n, s, n, s, -1).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b * n**3, s, s, s, -1)
        yw = self._attend_grid(xw, span=s)
        y = yw.view(b, n, n, n, s, s, s, -1).permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, n * s, n * s, n * s, -1)
        return y[:, :g, :g, :g].contiguous()

    def _attend_grid(self, x: torch.Tensor, span: int) -> torch.Tensor:
        """Attention of a G^3 grid as if zero-padded to span^3 (span >= G), padded queries dropped."""
        b, g, c = x.shape[0], x.shape[1], x.shape[-1]
        nh, hd = self.num_heads, self.head_dim
        n = g**3
        qkv = self.qkv(x).reshape(b, n, 3, nh, hd).permute(2, 0, 3, 1, 4)  # 3, B, nh, N, hd
        q, k, v = qkv.unbind(0)
        pad = span - g
        if not self.use_rel_pos and pad == 0:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            if self.qkv.bias is not None:
                bq, bk, bv = self.qkv.bias.view(3, 1, nh, 1, hd).unbind(0)
            else:
                bq = bk = bv = x.new_zeros(1, nh, 1, hd)
            if self.use_rel_pos:
                terms = self._rel_terms(q, bq, g, span)
                mask = _real_key_bias(*terms, g)
            else:
                terms = None
                mask = q.new_zeros(b, nh, n, n)
            if pad:
                # One extra key stands for every padded key: value b_v, logit scale*q.b_k + log_sum.
                if terms is not None:
                    log_sum = _padded_log_sum(*terms, g)
                else:
                    log_sum = q.new_full((b, nh, n, 1), math.log(span**3 - n))
                mask = torch.cat([mask, log_sum], dim=-1)
                k = torch.cat([k, bk.expand(b, nh, 1, hd)], dim=2)
                v = torch.cat([v, bv.expand(b, nh, 1, hd)], dim=2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, g, g, g, c)
        return self.proj(out)

    def _rel_terms(
        self, q: torch.Tensor, bq: torch.Tensor, g: int, span: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-axis relative terms of the real queries.

        Returns rel_d [B,nh,G,G,G(w),S(kw)], rel_h [B,nh,G,G,S(kd),S(kw)], rel_w [B,nh,G,G,S(kh),S(kw)].
        """
        b, nh, _, hd = q.shape
        rd = get_rel_pos(span, span, self.rel_pos_d)[:g]  # [G, S, hd]
        rh = get_rel_pos(span, span, self.rel_pos_h)[:g]
        rw = get_rel_pos(span, span, self.rel_pos_w)  # [S, S, hd]: indexed by the key's h
        q5 = q.reshape(b, nh, g, g, g, hd)
        if span > g:  # the quirk reads the query at w = kd, kh, which reaches into padded (= bias) queries
            q5s = torch.cat([q5, bq.view(1, nh, 1, 1, 1, hd).expand(b, nh, g, g, span - g, hd)], dim=4)
        else:
            q5s = q5
        rel_d = torch.einsum("bndhwc,dkc->bndhwk", q5, rd)
        rel_h = torch.einsum("bndhkc,hjc->bndhkj", q5s, rh)
        rel_w = torch.einsum("bndhkc,kjc->bndhkj", q5s, rw)
        return rel_d, rel_h, rel_w


def _real_key_bias(rel_d: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, g: int) -> torch.Tensor:
    """Bias between real queries and real keys, [B, nh, G^3, G^3]."""
    b, nh = rel_d.shape[:2]
    m = (
        rel_d[:, :, :, :, :, None, None, :g]
        + rel_h[:, :, :, :, None, :g, None, :g]
        + rel_w[:, :, :, :, None, None, :g, :g]
    )
    return m.reshape(b, nh, g**3, g**3)


def _padded_log_sum(rel_d: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, g: int) -> torch.Tensor:
    """log of the sum over padded keys of exp(bias), per real query: [B, nh, G^3, 1].

    The bias of key (kd, kh, kw) is A(kw) + B(kd, kw) + C(kh, kw), so the sum factorises per kw into
    (sum over kd) x (sum over kh); for kw in the real range a key is padded when kd or kh is padded,
    split into two disjoint positive parts to stay in log space.
    """
    b, nh = rel_d.shape[:2]
    lb_all = torch.logsumexp(rel_h, dim=4)  # over kd: [B,nh,G,G,S(kw)]
    lb_real = torch.logsumexp(rel_h[:, :, :, :, :g], dim=4)
    lb_pad = torch.logsumexp(rel_h[:, :, :, :, g:], dim=4)
    lc_all = torch.logsumexp(rel_w, dim=4)  # over kh
    lc_pad = torch.logsumexp(rel_w[:, :, :, :, g:], dim=4)
    e_real = torch.logaddexp(lb_pad + lc_all, lb_real + lc_pad)[..., :g]
    e_pad = (lb_all + lc_all)[..., g:]
    e = torch.cat([e_real, e_pad], dim=-1)  # [B,nh,G,G,S(kw)]
    return torch.logsumexp(rel_d + e[:, :, :, :, None, :], dim=-1).reshape(b, nh, g**3, 1)


class DecoderAttention(nn.Module):
    """Attention with optional downscaling of the internal width (two-way transformer)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"internal dim {self.internal_dim} must be divisible by num_heads={num_heads}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, Nq, C], k and v [B, Nk, C] -> [B, Nq, C]."""
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        )
        b, _, nq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, self.internal_dim))
