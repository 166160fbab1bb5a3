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
        dilated_branches: (segment, dilation) pairs: replace global attention by
            :func:`dilated_attention` (FastSAM3D's sparse scheme); None for dense attention.
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
        dilated_branches: tuple[tuple[int, int], ...] | None = None,
    ) -> None:
        super().__init__()
        if dilated_branches is not None:
            if window_size:
                raise ValueError("dilated attention replaces global attention: window_size must be 0")
            for seg, dil in dilated_branches:
                if seg < 1 or dil < 1 or seg % dil:
                    raise ValueError(f"each (segment, dilation) needs segment % dilation == 0, got {(seg, dil)}")
        self.dilated_branches = dilated_branches
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
        if not self.use_rel_pos and pad == 0 and self.dilated_branches is None:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            if self.qkv.bias is not None:
                bq, bk, bv = self.qkv.bias.view(3, 1, nh, 1, hd).unbind(0)
            else:
                bq = bk = bv = x.new_zeros(1, nh, 1, hd)
            terms = self._rel_terms(q, bq, g, span) if self.use_rel_pos else None
            if self.dilated_branches is not None and not pad:
                # Each branch gathers its own few bias entries from the per-axis terms: the [N, N] bias
                # of dense attention (537 MB per block at 256^3 input) is never formed.
                out = dilated_attention(q, k, v, None, self.dilated_branches, self.scale, rel=terms, grid=g)
                out = out.transpose(1, 2).reshape(b, g, g, g, c)
                return self.proj(out)
            mask = _real_key_bias(*terms, g) if terms is not None else q.new_zeros(b, nh, n, n)
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


def _gathered_rel_bias(
    rel: tuple[torch.Tensor, torch.Tensor, torch.Tensor], idx: torch.Tensor, heads: torch.Tensor, grid: int | None
) -> torch.Tensor:
    """Entries ``[q, k]`` of :func:`_real_key_bias` for the flat positions ``idx`` [nh, S, m] (queries and
    keys of each segment): [B, nh, S, m, m]."""
    if grid is None:
        raise ValueError("dilated_attention with rel terms needs the grid size")
    rel_d, rel_h, rel_w = rel
    b, nh, g = rel_d.shape[0], rel_d.shape[1], grid
    rd = rel_d.reshape(b, nh, g**3, -1)  # [B, nh, N(q), kw]
    rh = rel_h.reshape(b, nh, g * g, rel_h.shape[-2], rel_h.shape[-1])  # [B, nh, q(d,h), kd, kw]
    rw = rel_w.reshape(b, nh, g * g, rel_w.shape[-2], rel_w.shape[-1])  # [B, nh, q(d,h), kh, kw]
    h = heads[:, None, None, None]
    qi, ki = idx[..., :, None], idx[..., None, :]
    q_dh = qi // g
    kd, kh, kw = ki // (g * g), (ki // g) % g, ki % g
    return rd[:, h, qi, kw] + rh[:, h, q_dh, kd, kw] + rw[:, h, q_dh, kh, kw]


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


def dilated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    branches: tuple[tuple[int, int], ...],
    scale: float,
    *,
    rel: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    grid: int | None = None,
) -> torch.Tensor:
    """LongNet-style dilated attention (the "3D sparse attention" of FastSAM3D) over a flat sequence.

    Branch (w, r): the sequence is cut into segments of w tokens; in each segment every r-th token,
    starting at offset ``head % r``, attends to the others selected in that segment. Every token
    receives, from each branch that selects it, an output and the log of its softmax normaliser; the
    outputs are mixed with weights proportional to those normalisers (LongNet's rule), which equals a
    softmax over the union of the branches' keys when they do not overlap. Outputs return to their own
    positions. A branch with w = N, r = 1 is dense attention.

    Args:
        q, k: [B, nh, N, hd]; v: [B, nh, N, hv]. N must be divisible by every segment length.
        bias: additive attention bias [B, nh, N, N] (relative positions) or None.
        branches: (segment, dilation) pairs.
        scale: logit scale.
        rel: instead of ``bias``, the per-axis relative-position terms of :meth:`RelPosAttention._rel_terms`
            of a ``grid``^3 token grid (N = grid^3, tokens in (d, h, w) order); each branch gathers only the
            bias entries of its own (query, key) pairs.
        grid: tokens per axis, with ``rel``.

    Returns:
        [B, nh, N, hv].
    """
    b, nh, n, _ = q.shape
    heads = torch.arange(nh, device=q.device)
    outs, lses, positions = [], [], []
    for w, r in branches:
        if n % w:
            raise ValueError(f"sequence length {n} must be divisible by segment length {w}")
        # Selected positions per head: [nh, n/w, w/r].
        idx = (
            torch.arange(0, n, w, device=q.device)[None, :, None]
            + torch.arange(0, w, r, device=q.device)[None, None, :]
            + (heads % r)[:, None, None]
        )
        hsel = heads[:, None, None]
        qs, ks, vs = q[:, hsel, idx], k[:, hsel, idx], v[:, hsel, idx]  # [B, nh, S, m, hd]
        logits = (qs @ ks.transpose(-1, -2)) * scale  # [B, nh, S, m, m]
        if bias is not None:
            logits = logits + bias[:, heads[:, None, None, None], idx[..., :, None], idx[..., None, :]]
        elif rel is not None:
            logits = logits + _gathered_rel_bias(rel, idx, heads, grid)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # [B, nh, S, m, 1]
        outs.append(torch.exp(logits - lse) @ vs)
        lses.append(lse)
        positions.append(idx)
    # Mix: weights exp(lse) normalised over the branches that select each token, in a stable way.
    lse_all = torch.full((b, nh, n, 1), float("-inf"), dtype=q.dtype, device=q.device)
    for lse, idx in zip(lses, positions, strict=True):
        flat = idx.reshape(1, nh, -1, 1).expand(b, nh, -1, 1)
        lse_all = torch.logaddexp(lse_all, _scatter_lse(lse.reshape(b, nh, -1, 1), flat, n))
    dv = v.shape[-1]
    out = v.new_zeros(b, nh, n, dv)
    for o, lse, idx in zip(outs, lses, positions, strict=True):
        flat = idx.reshape(1, nh, -1, 1).expand(b, nh, -1, 1)
        wgt = torch.exp(lse.reshape(b, nh, -1, 1) - lse_all.gather(2, flat))
        out = out.scatter_add(2, flat.expand(b, nh, -1, dv), wgt * o.reshape(b, nh, -1, dv))
    return out


def _scatter_lse(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Place per-selected-token log values [B, nh, M, 1] at their positions in [B, nh, n, 1] (-inf
    elsewhere); within one branch each position is selected at most once."""
    full = torch.full((*values.shape[:2], n, 1), float("-inf"), dtype=values.dtype, device=values.device)
    return full.scatter(2, index, values)


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
