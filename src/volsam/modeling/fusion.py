"""Early-fusion interactive segmentation (nnInteractive's design): the image and every prompt enter as input
channels of a residual-encoder U-Net at the window's full resolution, and the network runs once per
interaction, so a click acts exactly where it lands.

It offers the same interface as :class:`~volsam.modeling.sam3d.Sam3D` (see
:class:`volsam.modeling.PromptableModel`): ``image_encoder`` (here the identity: early fusion has no
image-only part to cache), ``decode(embedding, coords, labels, mask_input)`` returning low-res logits at
half the window's resolution, ``upsample_logits``/``upsample_mask``, ``no_mask_prompt``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from volsam.config import FusionConfig
from volsam.modeling.common import upsample_mask


class ResidualBlock3d(nn.Module):
    """Two 3x3x3 convolutions with instance norm and leaky ReLU, plus a (projected) skip: [B, Cin, X, Y, Z] ->
    [B, Cout, X/stride, Y/stride, Z/stride]."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = nn.InstanceNorm3d(out_ch, affine=True)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = nn.InstanceNorm3d(out_ch, affine=True)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.skip = nn.Sequential(
                nn.Conv3d(in_ch, out_ch, 1, stride, bias=False), nn.InstanceNorm3d(out_ch, affine=True)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        return F.leaky_relu(self.norm2(self.conv2(y)) + self.skip(x), 0.01)


class ResEncUNet3D(nn.Module):
    """Residual-encoder U-Net: [B, Cin, S, S, S] -> logits [B, 1, S/2, S/2, S/2].

    Stage ``i`` of the encoder has stride ``2**(i+1)`` (the first block of each stage downsamples); the decoder
    goes back up with transposed convolutions and skip connections to stride 2, where a 1x1 head gives logits.
    """

    def __init__(self, in_ch: int, widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
        super().__init__()
        stages, c = [], in_ch
        for w, n in zip(widths, blocks, strict=True):
            stages.append(nn.Sequential(ResidualBlock3d(c, w, 2), *[ResidualBlock3d(w, w) for _ in range(n - 1)]))
            c = w
        self.encoder = nn.ModuleList(stages)
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(widths[i], widths[i - 1], 2, 2, bias=False) for i in range(len(widths) - 1, 0, -1)
        )
        self.decoder = nn.ModuleList(
            ResidualBlock3d(2 * widths[i - 1], widths[i - 1]) for i in range(len(widths) - 1, 0, -1)
        )
        self.head = nn.Conv3d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        for k, (up, dec) in enumerate(zip(self.up, self.decoder, strict=True)):
            x = dec(torch.cat([up(x), skips[-2 - k]], 1))
        return self.head(x)


def render_points(coords: torch.Tensor, labels: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Clicks as Gaussian blobs (peak 1, std ``sigma`` voxels), the maximum over clicks of each sign.

    Args:
        coords: [B, N, 3] window voxel coordinates in tensor-axis order.
        labels: [B, N] 1 positive, 0 negative, -1 padding (ignored).
        size: window side S.

    Returns:
        [B, 2, S, S, S]: positive clicks, negative clicks.
    """
    b, n = labels.shape
    out = coords.new_zeros(b, 2, size, size, size)
    if n == 0:
        return out
    grid = torch.arange(size, device=coords.device, dtype=coords.dtype)
    g = torch.exp(-((grid[None, None, None, :] - coords[..., None]) ** 2) / (2 * sigma**2))  # [B, N, 3, S]
    blobs = g[:, :, 0, :, None, None] * g[:, :, 1, None, :, None] * g[:, :, 2, None, None, :]  # [B, N, S, S, S]
    for ch, lab in ((0, 1), (1, 0)):
        keep = (labels == lab).to(blobs.dtype)[..., None, None, None]
        out[:, ch] = (blobs * keep).amax(1)
    return out


class WindowImage(nn.Module):
    """The "image encoder" of an early-fusion model: the normalised window itself, [B, 1, S, S, S]."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image


class FusionSeg3D(nn.Module):
    """Early-fusion promptable model. Windows are [B, 1, S, S, S]; points are window voxel coordinates in
    tensor-axis order (as :class:`~volsam.modeling.sam3d.Sam3D`); logits come out at S/2 per axis."""

    kind = "fusion"
    supported_prompts = frozenset({"point+", "point-", "box+", "scribble+", "scribble-", "lasso+", "lasso-", "initial"})
    """What :class:`volsam.session.Session` may give it (see its docstring for how each prompt arrives)."""

    def __init__(self, net: ResEncUNet3D, config: FusionConfig) -> None:
        super().__init__()
        self.image_encoder = WindowImage()
        self.net = net
        self.config = config

    @classmethod
    def from_config(cls, cfg: FusionConfig) -> FusionSeg3D:
        return cls(ResEncUNet3D(len(cfg.channels), cfg.widths, cfg.blocks), cfg)

    @property
    def img_size(self) -> int:
        return self.config.img_size

    @property
    def low_res_size(self) -> int:
        return self.config.img_size // self.config.output_stride

    def no_mask_prompt(self, batch: int, device: torch.device | str) -> None:
        """What "no previous mask" is: nothing (the previous-prediction channel is zero)."""
        return None

    def set_attention_backend(self, backend: str) -> None:
        raise ValueError(f"an early-fusion model has no attention to switch to {backend!r}")

    def prompt_channels(
        self,
        image: torch.Tensor,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        mask_input: torch.Tensor | None = None,
        dense_prompts: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The network input [B, C, S, S, S] (channels :attr:`FusionConfig.channels`).

        Args:
            image: [B, 1, S, S, S] normalised window.
            coords, labels: clicks as in :func:`render_points` (None: no clicks).
            mask_input: previous logits [B, 1, S/2, S/2, S/2] (or an initial mask as logits); None: no mask.
            dense_prompts: other prompts by channel name (e.g. ``"box_pos"``), each [B, 1, S, S, S] in [0, 1].
        """
        b, s = image.shape[0], image.shape[-1]
        chans = dict.fromkeys(self.config.channels)
        chans["image"] = image
        if mask_input is not None:
            chans["previous"] = torch.sigmoid(F.interpolate(mask_input, size=image.shape[-3:], mode="trilinear"))
        if coords is not None and labels is not None:
            pts = render_points(coords.to(image.dtype), labels, s, self.config.point_sigma)
            chans["point_pos"], chans["point_neg"] = pts[:, :1], pts[:, 1:]
        for name, value in (dense_prompts or {}).items():
            if name not in chans or name in ("image", "previous"):
                valid = ", ".join(self.config.channels[2:])
                raise ValueError(f"unknown prompt channel {name!r}; expected one of {valid}")
            chans[name] = value.to(image.dtype)
        zero = image.new_zeros(b, 1, s, s, s)
        return torch.cat([zero if v is None else v for v in chans.values()], 1)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
        dense_prompts: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One interaction: window [B, 1, S, S, S] (what ``image_encoder`` returned) and prompts -> low-res
        logits [B, 1, S/2, S/2, S/2] and a NaN IoU placeholder [B, 1] (this model predicts no IoU)."""
        if multimask_output:
            raise ValueError("an early-fusion model predicts one mask; multimask_output must be False")
        x = self.prompt_channels(image_embeddings, coords, labels, mask_input, dense_prompts)
        low = self.net(x)
        return low, low.new_full((low.shape[0], 1), float("nan"))

    def forward(
        self,
        image: torch.Tensor,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.image_encoder(image), coords, labels, mask_input, multimask_output)

    def upsample_logits(self, low_res: torch.Tensor) -> torch.Tensor:
        """[B, M, S/2, S/2, S/2] -> [B, M, S, S, S], trilinear (align_corners=False); any window side S."""
        size = [self.config.output_stride * n for n in low_res.shape[-3:]]
        return F.interpolate(low_res, size=size, mode="trilinear", align_corners=False)

    def upsample_mask(self, low_res: torch.Tensor) -> torch.Tensor:
        """``upsample_logits(low_res) > 0`` for one mask -> bool [S, S, S] (see :func:`upsample_mask`)."""
        return upsample_mask(low_res, self.config.output_stride * low_res.shape[-1])
