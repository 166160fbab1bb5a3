"""SynthSeg-style synthetic images from label maps alone (Billot et al., 2023).

Each label of a window's label map gets a random mean intensity and standard deviation (a Gaussian
mixture), then the image is corrupted the way real scans are: an optional simulated thick-slice
acquisition (blur + downsampling + upsampling along one axis), a random anisotropic blur, a smooth
multiplicative bias field, a random gamma and additive noise. Contrast is therefore never the same twice
and a model trained on it learns shapes, not intensities.

One implementation, :func:`synth_images`, batched in torch: the GPU loader
(:class:`volsam.train.device_data.PackedVolumes`) calls it per batch on the device, the host loader through
:class:`SynthGenerator` per window (:class:`volsam.train.data.TrainDataset` with ``p_synth``, the
probability that a sample's image is replaced by a synthetic one generated from the same window's label
map, so real and synthetic images mix; :class:`volsam.train.data.SynthDataset`: label files only, every
image synthetic). This module knows nothing of datasets, so the dependency runs one way (data -> synth).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SynthConfig", "SynthGenerator", "synth_images"]


@dataclass(frozen=True)
class SynthConfig:
    """Ranges of the random generative model (intensities are in [0, 1] before the final gamma).

    Attributes:
        std_max: per-label standard deviation drawn from U(0, std_max).
        low_res_prob: probability of simulating a thick-slice acquisition along one random axis.
        max_thickness: the slice thickness is U(1.5, max_thickness) voxels.
        blur_max: per-axis Gaussian blur sigma drawn from U(0, blur_max) voxels.
        bias_std: log-bias field values drawn from N(0, bias_std) on a ``bias_grid``^3 control grid.
        bias_grid: control points per axis of the bias field (upsampled trilinearly).
        gamma_std: the image (rescaled to [0, 1]) is raised to exp(N(0, gamma_std)).
        noise_max: additive Gaussian noise std drawn from U(0, noise_max).
    """

    std_max: float = 0.08
    low_res_prob: float = 0.5
    max_thickness: float = 4.0
    blur_max: float = 1.0
    bias_std: float = 0.3
    bias_grid: int = 4
    gamma_std: float = 0.25
    noise_max: float = 0.03


def _hash01(x: torch.Tensor, salt: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """A pseudo-random number in [0, 1) per (label value, sample): the same value within one sample."""
    v = torch.sin(x * a + salt * b) * 43758.5453
    return v - torch.floor(v)


def _gauss_kernel(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """[B] sigmas (voxels) -> [B, 2r+1] normalised Gaussian taps (a delta where sigma is ~0)."""
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    return k / k.sum(1, keepdim=True)


def _blur_axis(x: torch.Tensor, sigma: torch.Tensor, axis: int, radius: int) -> torch.Tensor:
    """Blur each sample of [B, 1, S, S, S] along spatial ``axis`` (0..2) with its own sigma [B]."""
    b = x.shape[0]
    k = _gauss_kernel(sigma, radius)
    shape = [b, 1, 1, 1, 1]
    shape[2 + axis] = 2 * radius + 1
    pad = [0, 0, 0, 0, 0, 0]
    pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
    y = F.pad(x.transpose(0, 1), pad, mode="replicate")  # [1, B, ...]: one group per sample
    return F.conv3d(y, k.view(shape), groups=b).transpose(0, 1)


def synth_images(
    labels: torch.Tensor, valid: torch.Tensor, generator: torch.Generator, config: SynthConfig | None = None
) -> torch.Tensor:
    """SynthSeg-style images from label windows, batched, on the labels' device (the module docstring's model).

    Args:
        labels: [B, 1, S, S, S] integer label windows.
        valid: [B, 1, S, S, S] bool, voxels inside the scanned volume (others end 0).
        generator: on ``labels``' device.
        config: ranges (defaults when None).

    Returns:
        float32 [B, 1, S, S, S] in [0, 1].
    """
    c = config or SynthConfig()
    b, dev = labels.shape[0], labels.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=dev)

    lab = labels.float()
    salt = rand(b, 1, 1, 1, 1) * 100.0
    means = _hash01(lab, salt, 12.9898, 78.233)
    stds = _hash01(lab, salt, 39.3468, 11.135) * c.std_max
    img = means + stds * randn(*labels.shape)
    # One host transfer for the per-sample thick-slice draws (a sync per sample would stall the device).
    thick, axes, widths = torch.rand(3, b, generator=generator, device=dev).tolist()
    for i in range(b):
        if thick[i] >= c.low_res_prob:
            continue
        axis = min(int(axes[i] * 3), 2)
        t = 1.5 + widths[i] * (c.max_thickness - 1.5)
        x = _blur_axis(img[i : i + 1], torch.tensor([0.42 * t], device=dev), axis, 4)
        size = list(x.shape[-3:])
        low = list(size)
        low[axis] = max(2, round(size[axis] / t))
        x = F.interpolate(x, size=low, mode="trilinear", align_corners=True)
        img[i : i + 1] = F.interpolate(x, size=size, mode="trilinear", align_corners=True)
    sigma = rand(b, 3) * c.blur_max
    for axis in range(3):
        img = _blur_axis(img, sigma[:, axis], axis, 2)
    g = c.bias_grid
    coarse = randn(b, 1, g, g, g) * c.bias_std
    bias = F.interpolate(coarse, size=labels.shape[-3:], mode="trilinear", align_corners=True)
    img = img * torch.exp(bias)
    lo = img.flatten(1).amin(1).view(b, 1, 1, 1, 1)
    hi = img.flatten(1).amax(1).view(b, 1, 1, 1, 1)
    img = ((img - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    img = img ** torch.exp(randn(b) * c.gamma_std).view(b, 1, 1, 1, 1)
    img = img + (rand(b) * c.noise_max).view(b, 1, 1, 1, 1) * randn(*labels.shape)
    return torch.where(valid, img.clamp(0, 1), torch.zeros_like(img))


class SynthGenerator:
    """Label map -> synthetic image, one window at a time (:func:`synth_images` on a batch of one, for the
    host data loader). Deterministic given the ``rng`` passed in."""

    def __init__(self, config: SynthConfig | None = None) -> None:
        self.config = config or SynthConfig()

    def __call__(self, labels: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None) -> np.ndarray:
        """Synthesise an image.

        Args:
            labels: integer-valued label map (X, Y, Z) (any numeric dtype).
            rng: source of randomness (one draw seeds the torch generator).
            valid: optional bool mask (X, Y, Z) of voxels inside the scanned volume; voxels outside are
                set to 0, like the zero padding of real windows.

        Returns:
            float32 image (X, Y, Z) with values in [0, 1] (0 outside ``valid``).
        """
        lab = np.asarray(labels)
        if lab.ndim != 3:
            raise ValueError(f"labels must be a 3D array, got shape {lab.shape}")
        inside = np.ones(lab.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        with torch.no_grad():
            img = synth_images(
                torch.from_numpy(lab.astype(np.float32))[None, None],
                torch.from_numpy(inside)[None, None],
                gen,
                self.config,
            )
        return img[0, 0].numpy().astype(np.float32, copy=False)
