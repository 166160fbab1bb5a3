"""The composed promptable model: encoder, prompt encoder and mask decoder injected as parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from volsam.config import ModelConfig
from volsam.modeling.common import upsample_mask
from volsam.modeling.image_encoder import ImageEncoderViT3D
from volsam.modeling.mask_decoder import MaskDecoder3D
from volsam.modeling.prompt_encoder import PromptEncoder3D


class Sam3D(nn.Module):
    """SAM-style 3D model. Call conventions follow SAM-Med3D so code written for it ports directly.

    Window tensors are [B, 1, S, S, S] (S = 128 for the released models), points are (a, b, c) voxel
    coordinates of that window in tensor-axis order, masks are low-res logits [B, 1, S/4, S/4, S/4].
    """

    def __init__(
        self,
        image_encoder: ImageEncoderViT3D,
        prompt_encoder: PromptEncoder3D,
        mask_decoder: MaskDecoder3D,
        config: ModelConfig | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.config = config

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Sam3D:
        if cfg.encoder.out_chans != cfg.prompt.embed_dim or cfg.prompt.embed_dim != cfg.decoder.transformer_dim:
            raise ValueError(
                "encoder.out_chans, prompt.embed_dim and decoder.transformer_dim must be equal, got "
                f"{cfg.encoder.out_chans}, {cfg.prompt.embed_dim}, {cfg.decoder.transformer_dim}"
            )
        return cls(ImageEncoderViT3D(cfg.encoder), PromptEncoder3D(cfg.prompt), MaskDecoder3D(cfg.decoder), cfg)

    def set_attention_backend(self, backend: str) -> None:
        """Switch the encoder's global attention to ``"dense"`` or ``"dilated"`` in place, same weights;
        the model's config follows, so checkpoints and exports record the backend in use."""
        self.image_encoder.set_attention_backend(backend)
        if self.config is not None:
            self.config = self.config.with_encoder(attention_backend=backend)

    kind = "sam"

    @property
    def img_size(self) -> int:
        return self.image_encoder.cfg.img_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-res logits and of the mask prompt, S/4."""
        return self.prompt_encoder.mask_input_size

    def no_mask_prompt(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """What "no previous mask" is: zero logits [B, 1, S/4, S/4, S/4] (SAM-Med3D's first click)."""
        g = self.low_res_size
        return torch.zeros(batch, 1, g, g, g, device=device)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + decoder on a cached embedding [B, C, G, G, G].

        Returns low-res logits [B, 1 or 3, 4G, 4G, 4G] and IoU predictions [B, 1 or 3].
        """
        points = None if coords is None else (coords, labels)
        prior = None if coords is None else self.prompt_encoder.click_prior(coords, labels)
        if prior is not None:
            mask_input = prior if mask_input is None else mask_input + prior
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=mask_input)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def forward(
        self,
        image: torch.Tensor,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Trainable end-to-end pass: image [B, 1, S, S, S] -> (low-res logits, IoU)."""
        return self.decode(self.image_encoder(image), coords, labels, mask_input, multimask_output)

    def upsample_logits(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits [B, M, S/4, S/4, S/4] -> [B, M, S, S, S], trilinear (align_corners=False)."""
        s = self.img_size
        return F.interpolate(low_res, size=(s, s, s), mode="trilinear", align_corners=False)

    def upsample_mask(self, low_res: torch.Tensor) -> torch.Tensor:
        """``upsample_logits(low_res) > 0`` for one mask [1, 1, S/4, S/4, S/4] -> bool [S, S, S], computed
        only around the positive low-res cells (:func:`~volsam.modeling.common.upsample_mask`)."""
        return upsample_mask(low_res, self.img_size)
