"""Augmentation of single training windows, image and label together: MONAI flips, affine and intensity
transforms and a light elastic deformation (:class:`AugmentConfig`), as :class:`volsam.train.data.TrainDataset`
applies them to every sample. :mod:`volsam.train.augment` does the same kinds of change per batch on the
training device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["AugmentConfig"]


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation probabilities and ranges (MONAI transforms).

    Attributes:
        flip_prob: probability of a flip, per axis.
        affine_prob: probability of a random rotation (+-``rotate_deg`` per axis) and scaling (1 +- ``scale``).
        elastic_prob: probability of an elastic deformation: random displacements (std drawn from
            ``elastic_magnitude``, voxels) on an ``elastic_grid``^3 control grid, upsampled trilinearly and
            applied with ``grid_sample`` (about 0.2 s per 128^3 sample on one core; MONAI's dense
            ``Rand3DElasticd`` costs 3-8 s there, so it is not used). Off by default.
        elastic_magnitude: range of the displacement std, voxels.
        elastic_grid: control points per axis.
        intensity_prob: probability of each intensity transform (scale, shift, gamma, noise).
        intensity_scale: multiply by 1 + U(-s, s).
        intensity_shift: add U(-s, s) (units of the z-normalised image).
        gamma: gamma range of ``RandAdjustContrastd``.
        noise_std: maximum std of the added Gaussian noise.
    """

    flip_prob: float = 0.5
    affine_prob: float = 0.3
    rotate_deg: float = 15.0
    scale: float = 0.15
    elastic_prob: float = 0.0
    elastic_magnitude: tuple[float, float] = (2.0, 5.0)
    elastic_grid: int = 5
    intensity_prob: float = 0.3
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_std: float = 0.05


def _spatial_transforms(cfg: AugmentConfig) -> Any:
    from monai.transforms import Compose, RandAffined, RandFlipd

    keys = ["image", "label"]
    rot = float(np.deg2rad(cfg.rotate_deg))
    ts: list[Any] = [RandFlipd(keys, prob=cfg.flip_prob, spatial_axis=ax) for ax in range(3)]
    if cfg.affine_prob > 0:
        ts.append(
            RandAffined(
                keys,
                prob=cfg.affine_prob,
                rotate_range=(rot, rot, rot),
                scale_range=(cfg.scale, cfg.scale, cfg.scale),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    return Compose(ts)


def _elastic(
    image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random deformation of [1, S, S, S] image (trilinear) and label (nearest), zero padding."""
    import torch.nn.functional as F

    s = image.shape[-1]
    g = max(2, cfg.elastic_grid)
    std = rng.uniform(*cfg.elastic_magnitude)
    disp = torch.from_numpy(rng.normal(0.0, std, (1, 3, g, g, g)).astype(np.float32))
    with torch.no_grad():
        disp = F.interpolate(disp, size=(s, s, s), mode="trilinear", align_corners=True)[0] * (2.0 / (s - 1))
        base = torch.linspace(-1.0, 1.0, s)
        d, h, w = torch.meshgrid(base, base, base, indexing="ij")
        grid = torch.stack([w + disp[2], h + disp[1], d + disp[0]], dim=-1)[None]  # grid_sample wants (x, y, z)
        img = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        lab = F.grid_sample(label[None], grid, mode="nearest", padding_mode="zeros", align_corners=True)[0]
    return img, lab


def _intensity_transforms(cfg: AugmentConfig) -> Any:
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    p = cfg.intensity_prob
    return Compose(
        [
            RandScaleIntensityd("image", factors=cfg.intensity_scale, prob=p),
            RandShiftIntensityd("image", offsets=cfg.intensity_shift, prob=p),
            RandAdjustContrastd("image", gamma=cfg.gamma, prob=p, retain_stats=True),
            RandGaussianNoised("image", std=cfg.noise_std, prob=p),
        ]
    )


def _plain(x: Any) -> torch.Tensor:
    """MONAI MetaTensor (or array) -> plain contiguous float32 tensor."""
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    return torch.as_tensor(x, dtype=torch.float32).contiguous()
