"""Building blocks shared by the encoder, prompt encoder and decoder (one definition each)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a [B, C, X, Y, Z] tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class MLPBlock(nn.Module):
    """Transformer feed-forward: ``lin2(act(lin1(x)))``."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """Plain MLP with ReLU between layers (decoder heads)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class PositionEmbeddingRandom3D(nn.Module):
    """Random-Fourier positional encoding of 3D coordinates (SAM-Med3D).

    Features are ``[sin, cos, sin]`` of ``2*pi*((2c - 1) @ G)`` with ``G`` [3, F]: sin appears twice,
    which is what the released weights were trained with, giving 3F channels.
    """

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [..., 3] in [0, 1] -> [..., 3F]."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        s = torch.sin(coords)
        return torch.cat([s, torch.cos(coords), s], dim=-1)

    def forward(self, size: int) -> torch.Tensor:
        """Dense PE of a cubic grid of side ``size`` -> [3F, size, size, size].

        The first two coordinate channels are swapped relative to how points are encoded
        (inherited from 2D SAM; the released weights depend on it).
        """
        g = self.positional_encoding_gaussian_matrix
        idx = (torch.arange(size, device=g.device, dtype=g.dtype) + 0.5) / size
        a0 = idx.view(size, 1, 1).expand(size, size, size)
        a1 = idx.view(1, size, 1).expand(size, size, size)
        a2 = idx.view(1, 1, size).expand(size, size, size)
        pe = self._pe_encoding(torch.stack([a1, a0, a2], dim=-1))
        return pe.permute(3, 0, 1, 2)

    def forward_with_coords(self, coords: torch.Tensor, image_size: int) -> torch.Tensor:
        """coords [B, N, 3] in voxels of a cubic image of side ``image_size`` -> [B, N, 3F]."""
        return self._pe_encoding(coords.float() / image_size)


class PatchConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` with kernel == stride (each input voxel paints its own k^3 block) as one
    matmul and a 3D pixel shuffle; same parameters. [B, Cin, D, H, W] -> [B, Cout, kD, kH, kW]."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        k = self.kernel_size[0]
        if (
            output_size is not None
            or self.stride != self.kernel_size
            or self.padding != (0, 0, 0)
            or self.output_padding != (0, 0, 0)
            or len(set(self.kernel_size)) != 1
        ):
            return super().forward(x, output_size)
        b, c, d, h, w = x.shape
        o = self.out_channels
        y = x.permute(0, 2, 3, 4, 1) @ self.weight.reshape(c, o * k**3)  # [B, D, H, W, O*k^3]
        y = y.reshape(b, d, h, w, o, k, k, k).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, o, d * k, h * k, w * k)
        if self.bias is not None:
            y = y + self.bias.view(1, o, 1, 1, 1)
        return y


def upsample_mask(low_res: torch.Tensor, size: int) -> torch.Tensor:
    """Trilinear upsampling (align_corners=False) of one mask's logits [1, 1, g, g, g] to [size]^3, thresholded
    at 0 -> bool [size, size, size], computed only around the positive low-res cells.

    With align_corners=False an output voxel interpolates its two nearest cells per axis, so outside the box of
    positive cells grown by one cell every output is a mix of non-positive cells (<= 0), and inside it the
    cropped interpolation either equals the full one or (at the crop's clamped rim) mixes non-positive cells
    only: the thresholded result is identical.
    """
    s = size
    g = low_res.shape[-1]
    f = s // g
    out = torch.zeros(s, s, s, dtype=torch.bool, device=low_res.device)
    pos = (low_res[0, 0] > 0).nonzero()
    if pos.numel() == 0:
        return out
    lo = (pos.min(0).values - 1).clamp(min=0).tolist()
    hi = (pos.max(0).values + 2).clamp(max=g).tolist()
    crop = low_res[:, :, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    shape = [(b - a) * f for a, b in zip(lo, hi, strict=True)]
    up = F.interpolate(crop, size=shape, mode="trilinear", align_corners=False)[0, 0] > 0
    out[lo[0] * f : hi[0] * f, lo[1] * f : hi[1] * f, lo[2] * f : hi[2] * f] = up
    return out
