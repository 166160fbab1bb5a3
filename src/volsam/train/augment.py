"""Augmentation of whole training batches in torch, on the training device.

Per-sample MONAI transforms cost ~0.4 s a window on a 2-core CPU (the elastic one seconds); the same kinds of
change done once per batch with ``affine_grid``/``grid_sample`` cost milliseconds, on a GPU as on a CPU:
a random rotation and scaling, a left-right flip, a smooth elastic displacement, then gamma, contrast,
brightness and noise on the image. Window axes are RAS-aligned (:mod:`volsam.transforms`), so axis 0 is
left-right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BatchAugmentConfig:
    """Ranges of :func:`augment_batch`.

    Attributes:
        spatial_prob: probability that a sample is rotated/scaled/deformed.
        rotate_deg: rotation about each axis drawn from U(-rotate_deg, rotate_deg), degrees.
        scale: isotropic scale drawn from U(*scale).
        flip_prob: probability of a left-right flip.
        elastic_prob: probability of an elastic displacement (on top of the affine part).
        elastic_voxels: std of the displacement at the control points, window voxels.
        elastic_grid: control points per axis (upsampled trilinearly).
        gamma_std: image rescaled to [0, 1] raised to exp(N(0, gamma_std)).
        contrast: multiplicative factor drawn from U(*contrast).
        brightness_std: additive shift drawn from N(0, brightness_std) (z-scored units).
        noise_max: Gaussian noise with std drawn from U(0, noise_max).
    """

    spatial_prob: float = 0.8
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.2)
    flip_prob: float = 0.5
    elastic_prob: float = 0.3
    elastic_voxels: float = 1.5
    elastic_grid: int = 5
    gamma_std: float = 0.2
    contrast: tuple[float, float] = (0.75, 1.25)
    brightness_std: float = 0.1
    noise_max: float = 0.1


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """[B, 3] radians -> [B, 3, 3] rotation matrices (x, then y, then z)."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1).view(-1, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1).view(-1, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).view(-1, 3, 3)
    return rz @ ry @ rx


def augment_batch(
    image: torch.Tensor,
    target: torch.Tensor,
    generator: torch.Generator,
    cfg: BatchAugmentConfig | None = None,
    noise_generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly augmented copies of a batch.

    Args:
        image: [B, 1, S, S, S] z-scored windows.
        target: [B, T, S, S, S] 0/1 targets.
        generator: CPU generator (seed it per step for reproducible runs).
        cfg: ranges (defaults when None).
        noise_generator: a generator on the batch's device for the voxel-wise noise (None: ``generator``,
            which draws it on the CPU and copies it over: 64 MB a step for 64 windows of 64^3 on a GPU).

    Returns:
        (image, target) of the same shapes; a sample whose first target would leave the window is returned
        unchanged.
    """
    cfg = cfg or BatchAugmentConfig()
    b, dev = image.shape[0], image.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(dev)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dev)

    spatial = rand(b) < cfg.spatial_prob
    angles = (rand(b, 3) * 2 - 1) * math.radians(cfg.rotate_deg)
    scale = cfg.scale[0] + rand(b, 1, 1) * (cfg.scale[1] - cfg.scale[0])
    m = _rotation(angles) / scale
    flip = rand(b) < cfg.flip_prob
    # affine_grid's last coordinate is the first tensor axis (x = W): axis 0 of the window is grid index 2.
    m[:, :, 2] = torch.where(flip[:, None], -m[:, :, 2], m[:, :, 2])
    eye = torch.eye(3, device=dev).expand(b, 3, 3)
    m = torch.where(spatial[:, None, None], m, eye)
    theta = torch.cat([m, torch.zeros(b, 3, 1, device=dev)], 2)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    elastic = (rand(b) < cfg.elastic_prob) & spatial
    if bool(elastic.any()):
        s = image.shape[-1]
        g = cfg.elastic_grid
        disp = randn(b, 3, g, g, g) * (cfg.elastic_voxels * 2 / s) * elastic[:, None, None, None, None]
        disp = F.interpolate(disp, size=image.shape[-3:], mode="trilinear", align_corners=True)
        grid = grid + disp.permute(0, 2, 3, 4, 1)
    img = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    tgt = (F.grid_sample(target, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()
    keep = tgt[:, 0].flatten(1).any(1)
    img = torch.where(keep[:, None, None, None, None], img, image)
    tgt = torch.where(keep[:, None, None, None, None], tgt, target)

    lo = img.flatten(1).amin(1).view(b, 1, 1, 1, 1)
    hi = img.flatten(1).amax(1).view(b, 1, 1, 1, 1)
    span = (hi - lo).clamp(min=1e-6)
    gamma = torch.exp(randn(b) * cfg.gamma_std).view(b, 1, 1, 1, 1)
    img = ((img - lo) / span).clamp(0, 1) ** gamma * span + lo
    contrast = cfg.contrast[0] + rand(b).view(b, 1, 1, 1, 1) * (cfg.contrast[1] - cfg.contrast[0])
    img = img * contrast + randn(b).view(b, 1, 1, 1, 1) * cfg.brightness_std
    if noise_generator is None:
        noise = randn(*img.shape)
    else:
        noise = torch.randn(img.shape, generator=noise_generator, device=dev)
    img = img + noise * (rand(b) * cfg.noise_max).view(b, 1, 1, 1, 1)
    return img.contiguous(), tgt.contiguous()


def thick_slices(
    image: torch.Tensor,
    spacing_mm: torch.Tensor,
    generator: torch.Generator,
    prob: float = 0.3,
    thickness_mm: tuple[float, float] = (3.0, 7.0),
) -> torch.Tensor:
    """Thick-slice copies of some windows: along one random axis, the image is averaged over slabs of a
    thickness drawn from U(*thickness_mm) (the box profile of a thick acquired slice: an anisotropic blur)
    and interpolated back linearly to the window grid, as thick-slice MR looks once resampled to the
    model's isotropic window. A window whose spacing is already at least 2/3 of the drawn thickness (fewer
    than 1.5 window voxels a slab) is left unchanged.

    Args:
        image: [B, 1, S, S, S] windows.
        spacing_mm: [B] window spacing of each sample, mm.
        generator: CPU generator.
        prob: probability per sample.
        thickness_mm: range of slab thickness, mm.

    Returns:
        [B, 1, S, S, S]; labels are not touched (the truth stays at the window's resolution).
    """
    b, s = image.shape[0], image.shape[-1]
    pick = torch.rand(b, generator=generator) < prob
    axes = torch.randint(0, 3, (b,), generator=generator)
    thick = thickness_mm[0] + torch.rand(b, generator=generator) * (thickness_mm[1] - thickness_mm[0])
    out = image.clone()
    for j in torch.nonzero(pick).flatten().tolist():
        factor = float(thick[j]) / float(spacing_mm[j])
        if factor < 1.5:
            continue
        n = max(1, round(s / factor))
        axis = int(axes[j])
        small = [s, s, s]
        small[axis] = n
        x = image[j : j + 1].float()
        coarse = F.interpolate(x, size=small, mode="area")  # slab means: the slice profile
        out[j : j + 1] = F.interpolate(coarse, size=(s, s, s), mode="trilinear", align_corners=False).to(image.dtype)
    return out
