"""Mask decoder: two-way transformer, upscaling and hypernetwork heads, IoU head."""

from __future__ import annotations

import torch
from torch import nn

from volsam.config import MaskDecoderConfig
from volsam.modeling.attention import DecoderAttention
from volsam.modeling.common import MLP, LayerNorm3d, MLPBlock, PatchConvTranspose3d


class TwoWayAttentionBlock(nn.Module):
    """Tokens attend to themselves and to the image; the image attends back to the tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = DecoderAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = DecoderAttention(dim, num_heads, downsample)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = DecoderAttention(dim, num_heads, downsample)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int, downsample: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, downsample, skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = DecoderAttention(dim, num_heads, downsample)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding, image_pe [B, C, G, G, G]; point_embedding [B, T, C].

        Returns tokens [B, T, C] and image features [B, G^3, C].
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class MaskDecoder3D(nn.Module):
    """Predicts low-res mask logits [B, M, 4G, 4G, 4G] and IoU scores [B, M]."""

    def __init__(self, cfg: MaskDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.transformer_dim
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(cfg.depth, d, cfg.num_heads, cfg.mlp_dim, cfg.attention_downsample_rate)
        self.iou_token = nn.Embedding(1, d)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        self.output_upscaling = nn.Sequential(
            PatchConvTranspose3d(d, d // 4, kernel_size=2, stride=2),
            LayerNorm3d(d // 4),
            nn.GELU(),
            PatchConvTranspose3d(d // 4, d // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(d, d, d // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(d, cfg.iou_head_hidden_dim, self.num_mask_tokens, cfg.iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns low-res logits [B, 1 or 3, 4G, 4G, 4G] and IoU predictions [B, 1 or 3].

        ``image_embeddings`` and ``image_pe`` are repeated when they have batch 1 and the prompts more.
        """
        masks, iou = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou[:, sl]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask tokens: logits [B, M+1, 4G, 4G, 4G], IoU [B, M+1]."""
        b = sparse_prompt_embeddings.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings
        if src.shape[0] != b:
            src = torch.repeat_interleave(src, b, dim=0)
        src = src + dense_prompt_embeddings
        pos = image_pe if image_pe.shape[0] == b else torch.repeat_interleave(image_pe, b, dim=0)
        _, c, x, y, z = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]
        hyper = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # [B, M, C/8]
        masks = self._upscale_and_project(src.transpose(1, 2).reshape(b, c, x, y, z), hyper)
        return masks, self.iou_prediction_head(iou_token_out)

    def _upscale_and_project(self, src: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """``hyper @ output_upscaling(src)`` without materialising the last upscaled map in voxel order.

        The last transposed convolution paints a k^3 block per input voxel and is followed only by an
        elementwise GELU and a contraction over channels, so the contraction runs per block and just the
        M mask channels are shuffled into place. src [B, C, G, G, G], hyper [B, M, C/8] -> [B, M, 4G, 4G, 4G].
        """
        up1 = self.output_upscaling[2](self.output_upscaling[1](self.output_upscaling[0](src)))
        conv = self.output_upscaling[3]
        b, c, d, h, w = up1.shape
        k = conv.kernel_size[0]
        o = conv.out_channels
        y = up1.permute(0, 2, 3, 4, 1) @ conv.weight.reshape(c, o * k**3)  # [B, D, H, W, O*k^3]
        y = y.reshape(b, d, h, w, o, k**3) + conv.bias.view(1, 1, 1, 1, o, 1)
        y = self.output_upscaling[4](y)
        m = torch.einsum("bdhwok,bmo->bmdhwk", y, hyper)
        m = m.reshape(b, -1, d, h, w, k, k, k).permute(0, 1, 2, 5, 3, 6, 4, 7)
        return m.reshape(b, -1, d * k, h * k, w * k)
