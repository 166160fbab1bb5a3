"""Frozen configuration dataclasses for the networks.

One dataclass per component; :class:`ModelConfig` composes them. Every registered variant in
:mod:`volsam.registry` is one of these, so a new variant is a new config, never a new module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

BlockStyle = Literal["sam", "fastsam"]
AttentionBackend = Literal["dense", "dilated"]


@dataclass(frozen=True)
class EncoderConfig:
    """3D ViT image encoder.

    Attributes:
        img_size: side of the cubic input volume, voxels.
        patch_size: side of a cubic patch, voxels; the token grid is ``img_size // patch_size`` per axis.
        embed_dim: token width C.
        depth: number of transformer blocks.
        num_heads: attention heads per block (head dim = embed_dim // num_heads).
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        out_chans: channels of the neck output (= prompt/decoder width).
        window_size: window side for non-global blocks; 0 makes every block global.
        global_attn_indexes: blocks with global attention when ``window_size > 0``.
        mlp_only_blocks: the first N blocks have no attention (FastSAM3D's student).
        block_style: ``"sam"`` (``x + mlp(norm2(x))``) or ``"fastsam"`` (``norm2`` on the residual stream).
        attention_backend: ``"dense"`` (exact, SDPA) or ``"dilated"`` (FastSAM3D's LongNet-style sparse
            attention in the global blocks; windowed blocks stay dense).
        dilated_branches: (segment, dilation) pairs of the dilated backend, in tokens of the flattened grid.
    """

    img_size: int = 128
    patch_size: int = 16
    in_chans: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 384
    qkv_bias: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    mlp_only_blocks: int = 0
    block_style: BlockStyle = "sam"
    layer_norm_eps: float = 1e-6
    attention_backend: AttentionBackend = "dense"
    dilated_branches: tuple[tuple[int, int], ...] = ((4, 1), (8, 2), (16, 4))

    def __post_init__(self) -> None:
        if self.attention_backend not in ("dense", "dilated"):
            raise ValueError(f"attention_backend must be 'dense' or 'dilated', got {self.attention_backend!r}")

    @property
    def grid_size(self) -> int:
        """Tokens per axis."""
        return self.img_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def is_global(self, index: int) -> bool:
        return self.window_size == 0 or index in self.global_attn_indexes

    def has_attention(self, index: int) -> bool:
        return index >= self.mlp_only_blocks


@dataclass(frozen=True)
class PromptEncoderConfig:
    """Prompt encoder: points and a low-res mask prompt -> sparse and dense embeddings."""

    embed_dim: int = 384
    image_embedding_size: int = 8
    input_image_size: int = 128
    mask_in_chans: int = 16
    click_prior_sigma: float = 0.0
    click_prior_amplitude: float = 8.0
    """``click_prior_sigma`` > 0 (window voxels) adds to the mask prompt a Gaussian of height
    ``click_prior_amplitude`` (logits) at each positive click and subtracts one at each negative click
    (:func:`volsam.modeling.prompt_encoder.click_prior`): a spatially aligned cue of where the user
    clicked, which a small model trained from scratch learns to use far sooner than the points' Fourier
    embedding. 0 (the released SAM-Med3D/FastSAM3D models) leaves the prompt untouched."""


@dataclass(frozen=True)
class MaskDecoderConfig:
    """Two-way transformer mask decoder."""

    transformer_dim: int = 384
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


@dataclass(frozen=True)
class ModelConfig:
    """A whole promptable model."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    prompt: PromptEncoderConfig = field(default_factory=PromptEncoderConfig)
    decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_encoder(self, **changes: object) -> ModelConfig:
        """A copy with some encoder fields changed (e.g. ``attention_backend="dilated"``)."""
        return replace(self, encoder=replace(self.encoder, **changes))


PROMPT_CHANNELS: tuple[str, ...] = (
    "image",
    "previous",
    "point_pos",
    "point_neg",
    "box_pos",
    "box_neg",
    "scribble_pos",
    "scribble_neg",
    "lasso_pos",
    "lasso_neg",
)
"""Input channels of an early-fusion model, in order (nnInteractive's layout, one channel per prompt type and
sign): the normalised image, the previous prediction as a probability (or an initial mask the user brings),
then each prompt type rendered on the window grid. Channels a prompt does not use are zero."""


@dataclass(frozen=True)
class FusionConfig:
    """Early-fusion interactive network (:class:`volsam.modeling.fusion.FusionSeg3D`): image and prompts enter
    as input channels of a residual-encoder U-Net that runs once per interaction.

    Attributes:
        img_size: side of the cubic inference window, voxels (any multiple of ``2**len(widths)`` works: the
            network is fully convolutional, so training may use smaller crops).
        channels: input channel names (:data:`PROMPT_CHANNELS`).
        widths: feature widths of the encoder stages; stage ``i`` has stride ``2**(i+1)``.
        blocks: residual blocks per encoder stage.
        point_sigma: std of the Gaussian a click is rendered as, window voxels.
        output_stride: logits come out at ``img_size / output_stride`` per axis (the "low-res" logits of the
            shared model interface) and are upsampled trilinearly.
    """

    img_size: int = 64
    channels: tuple[str, ...] = PROMPT_CHANNELS
    widths: tuple[int, ...] = (16, 32, 64, 128)
    blocks: tuple[int, ...] = (1, 2, 2, 2)
    point_sigma: float = 1.5
    output_stride: int = 2

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError(f"widths and blocks must have the same non-zero length, got {self.widths}, {self.blocks}")
        if self.channels[:4] != PROMPT_CHANNELS[:4]:
            raise ValueError(f"the first four channels must be {PROMPT_CHANNELS[:4]}, got {self.channels[:4]}")
        if self.output_stride != 2:
            raise ValueError(f"output_stride must be 2, got {self.output_stride}")
        if self.img_size % 2 ** len(self.widths):
            raise ValueError(f"img_size must be a multiple of {2 ** len(self.widths)}, got {self.img_size}")

    def to_dict(self) -> dict:
        return asdict(self)


def make_config(
    *,
    embed_dim: int,
    depth: int,
    num_heads: int,
    prompt_dim: int,
    window_size: int = 14,
    global_attn_indexes: tuple[int, ...] = (),
    mlp_only_blocks: int = 0,
    block_style: BlockStyle = "sam",
    img_size: int = 128,
    patch_size: int = 16,
    decoder_mlp_dim: int = 2048,
    click_prior_sigma: float = 0.0,
) -> ModelConfig:
    """Small builder shared by the registry: the encoder width varies, the rest follows SAM-Med3D."""
    grid = img_size // patch_size
    return ModelConfig(
        encoder=EncoderConfig(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            out_chans=prompt_dim,
            window_size=window_size,
            global_attn_indexes=global_attn_indexes,
            mlp_only_blocks=mlp_only_blocks,
            block_style=block_style,
        ),
        prompt=PromptEncoderConfig(
            embed_dim=prompt_dim,
            image_embedding_size=grid,
            input_image_size=img_size,
            click_prior_sigma=click_prior_sigma,
        ),
        decoder=MaskDecoderConfig(transformer_dim=prompt_dim, mlp_dim=decoder_mlp_dim),
    )
