"""Test doubles with known behaviour, so geometry and session logic are checked independently of weights."""

from __future__ import annotations

import torch
from torch import nn

from volsam.modeling import Sam3D
from volsam.registry import build_model


class _IdentityEncoder(nn.Module):
    """'Embedding' = the normalised window itself, [B, 1, 128^3]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class ThresholdModel(Sam3D):
    """Segments voxels more than one standard deviation above the window mean (bright objects on a dark
    background) at full window resolution, ignoring clicks; records every decode call."""

    def __init__(self) -> None:
        base = build_model("fastsam3d_mini")
        super().__init__(_IdentityEncoder(), base.prompt_encoder, base.mask_decoder, base.config)
        self.calls: list[dict] = []

    def decode(self, image_embeddings, coords, labels, mask_input=None, multimask_output=False):
        self.calls.append({"coords": coords.clone(), "labels": labels.clone(), "mask_input": mask_input.clone()})
        logits = 10.0 * (image_embeddings - 1.0)
        return logits, torch.ones(logits.shape[0], 1)

    def upsample_logits(self, low_res: torch.Tensor) -> torch.Tensor:
        return low_res  # already full resolution

    def upsample_mask(self, low_res: torch.Tensor) -> torch.Tensor:
        return low_res[0, 0] > 0

    @property
    def img_size(self) -> int:
        return 128
