"""Prompt encoder: clicks and a low-res mask prompt -> sparse and dense embeddings."""

from __future__ import annotations

import torch
from torch import nn

from volsam.config import PromptEncoderConfig
from volsam.modeling.common import LayerNorm3d, PositionEmbeddingRandom3D


class PromptEncoder3D(nn.Module):
    """SAM-Med3D's prompt encoder.

    Points are (a, b, c) voxel coordinates of the model's input window, in its tensor-axis order.
    Labels: 1 positive, 0 negative, -1 padding. The released weights have two point embeddings and no
    box embedding, so boxes must be given as clicks (see :mod:`volsam.prompts`).
    """

    def __init__(self, cfg: PromptEncoderConfig) -> None:
        super().__init__()
        if cfg.embed_dim % 3:
            raise ValueError(f"prompt embed_dim must be divisible by 3, got {cfg.embed_dim}")
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.image_embedding_size = cfg.image_embedding_size
        self.input_image_size = cfg.input_image_size
        self.pe_layer = PositionEmbeddingRandom3D(cfg.embed_dim // 3)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, cfg.embed_dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, cfg.embed_dim)
        self.mask_input_size = 4 * cfg.image_embedding_size
        c = cfg.mask_in_chans
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, c // 4, kernel_size=2, stride=2),
            LayerNorm3d(c // 4),
            nn.GELU(),
            nn.Conv3d(c // 4, c, kernel_size=2, stride=2),
            LayerNorm3d(c),
            nn.GELU(),
            nn.Conv3d(c, cfg.embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, cfg.embed_dim)

    def click_prior(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """The configured Gaussian click map [B, 1, 4G, 4G, 4G] (see :func:`click_prior`), None when off."""
        c = self.cfg
        if c.click_prior_sigma <= 0:
            return None
        return click_prior(
            coords, labels, self.mask_input_size, c.input_image_size, c.click_prior_sigma, c.click_prior_amplitude
        )

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid, [1, C, G, G, G]."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        coords = coords + 0.5  # voxel centres
        if pad:  # SAM appends a padding point when no box is given
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 3)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        pe = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        lab = labels.unsqueeze(-1)
        pe = torch.where(lab == -1, torch.zeros_like(pe), pe)
        return (
            pe
            + (lab == -1) * self.not_a_point_embed.weight
            + (lab == 0) * self.point_embeddings[0].weight
            + (lab == 1) * self.point_embeddings[1].weight
        )

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Args:
            points: coords [B, N, 3] (float voxels of the input window) and labels [B, N] (1/0/-1).
            boxes: unsupported by the released weights; must be None.
            masks: previous low-res logits [B, 1, 4G, 4G, 4G] or None.

        Returns:
            sparse [B, N+1, C] and dense [B, C, G, G, G] embeddings.
        """
        if boxes is not None:
            raise ValueError(
                "boxes=None expected: SAM-Med3D weights have no box embedding; convert a box to clicks "
                "with volsam.prompts.box_to_clicks"
            )
        bs = 1
        if points is not None:
            coords, labels = points
            if coords.ndim != 3 or coords.shape[-1] != 3 or labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"points must be coords [B, N, 3] and labels [B, N], got {tuple(coords.shape)} "
                    f"and {tuple(labels.shape)}"
                )
            bs = coords.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        w = self.no_mask_embed.weight
        sparse = w.new_empty(bs, 0, self.embed_dim)
        if points is not None:
            sparse = torch.cat([sparse, self._embed_points(coords.to(w.dtype), labels, pad=True)], dim=1)
        g = self.image_embedding_size
        if masks is not None:
            m = self.mask_input_size
            if masks.ndim != 5 or masks.shape[1:] != (1, m, m, m):
                raise ValueError(f"masks must be [B, 1, {m}, {m}, {m}] low-res logits, got {tuple(masks.shape)}")
            dense = self.mask_downscaling(masks)
        else:
            dense = w.reshape(1, -1, 1, 1, 1).expand(bs, -1, g, g, g)
        return sparse, dense


def click_prior(
    coords: torch.Tensor, labels: torch.Tensor, grid: int, image_size: int, sigma: float, amplitude: float
) -> torch.Tensor:
    """Gaussian click map on the low-res mask grid.

    Args:
        coords: [B, N, 3] click positions in window voxels (the decoder's point convention).
        labels: [B, N]: 1 positive, 0 negative, -1 padding (ignored).
        grid: cells per axis of the mask prompt (``image_size / 4``).
        image_size: window side, voxels.
        sigma: Gaussian width, window voxels.
        amplitude: height, logits.

    Returns:
        [B, 1, grid, grid, grid]: sum over clicks of +/- amplitude * exp(-d^2 / (2 sigma^2)), d the distance
        (voxels) from the click to each cell centre.
    """
    cell = image_size / grid
    centres = (torch.arange(grid, device=coords.device, dtype=coords.dtype) + 0.5) * cell - 0.5  # [G]
    sign = (labels == 1).to(coords.dtype) - (labels == 0).to(coords.dtype)  # [B, N]
    # Separable: exp(-(dx^2 + dy^2 + dz^2) / 2s^2) = product of per-axis factors.
    f = torch.exp(-((coords[..., None] - centres) ** 2) / (2 * sigma**2))  # [B, N, 3, G]
    maps = torch.einsum("bn,bni,bnj,bnk->bijk", sign * amplitude, f[:, :, 0], f[:, :, 1], f[:, :, 2])
    return maps[:, None]
