"""SynthSeg-style synthetic images from label maps alone (Billot et al., 2023).

Each label of a window's label map gets a random mean intensity and standard deviation (a Gaussian
mixture), then the image is corrupted the way real scans are: an optional simulated thick-slice
acquisition (blur + downsampling + upsampling along one axis), a random anisotropic blur, a smooth
multiplicative bias field, a random gamma and additive noise. Contrast is therefore never the same twice
and a model trained on it learns shapes, not intensities.

Use it through :class:`volsam.train.data.TrainDataset` (``p_synth``: the probability that a sample's
image is replaced by a synthetic one generated from the same window's label map, so real and synthetic
images mix) or :class:`volsam.train.data.SynthDataset` (label files only, every image synthetic). This
module knows nothing of datasets, so the dependency runs one way (data -> synth).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["SynthConfig", "SynthGenerator"]


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


class SynthGenerator:
    """Label map -> synthetic image. Deterministic given the ``rng`` passed in."""

    def __init__(self, config: SynthConfig | None = None) -> None:
        self.config = config or SynthConfig()

    def __call__(self, labels: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None) -> np.ndarray:
        """Synthesise an image.

        Args:
            labels: integer-valued label map (X, Y, Z) (any numeric dtype).
            rng: source of randomness.
            valid: optional bool mask (X, Y, Z) of voxels inside the scanned volume; voxels outside are
                set to 0, like the zero padding of real windows.

        Returns:
            float32 image (X, Y, Z) with values in [0, 1] (0 outside ``valid``).
        """
        c = self.config
        lab = np.asarray(labels)
        if lab.ndim != 3:
            raise ValueError(f"labels must be a 3D array, got shape {lab.shape}")
        values, inverse = np.unique(lab, return_inverse=True)
        inverse = inverse.reshape(lab.shape)
        means = rng.uniform(0.0, 1.0, len(values)).astype(np.float32)
        stds = rng.uniform(0.0, c.std_max, len(values)).astype(np.float32)
        img = means[inverse] + stds[inverse] * rng.standard_normal(lab.shape, dtype=np.float32)
        if rng.random() < c.low_res_prob:
            img = self._thick_slices(img, int(rng.integers(3)), float(rng.uniform(1.5, c.max_thickness)))
        sigma = rng.uniform(0.0, c.blur_max, 3)
        if np.any(sigma > 0.1):
            img = ndimage.gaussian_filter(img, sigma=sigma, mode="nearest")
        img *= self._bias(lab.shape, rng)
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / max(hi - lo, 1e-6)
        img = np.power(img, np.float32(np.exp(rng.normal(0.0, c.gamma_std))), dtype=np.float32)
        img += np.float32(rng.uniform(0.0, c.noise_max)) * rng.standard_normal(lab.shape, dtype=np.float32)
        np.clip(img, 0.0, 1.0, out=img)
        if valid is not None:
            img[~np.asarray(valid, dtype=bool)] = 0.0
        return img.astype(np.float32, copy=False)

    @staticmethod
    def _thick_slices(img: np.ndarray, axis: int, thickness: float) -> np.ndarray:
        """Simulate slices ``thickness`` voxels thick along ``axis``: blur, subsample, interpolate back."""
        sigma = [0.0, 0.0, 0.0]
        sigma[axis] = 0.42 * thickness  # SynthSeg's slice-profile width
        img = ndimage.gaussian_filter(img, sigma=sigma, mode="nearest")
        shape = list(img.shape)
        low = list(shape)
        low[axis] = max(2, round(shape[axis] / thickness))
        t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
        with torch.no_grad():
            t = F.interpolate(t, size=tuple(low), mode="trilinear", align_corners=True)
            t = F.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=True)
        return t[0, 0].numpy()

    def _bias(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Smooth positive multiplicative field: exp of a trilinearly upsampled random control grid."""
        g = self.config.bias_grid
        coarse = torch.from_numpy(rng.normal(0.0, self.config.bias_std, (1, 1, g, g, g)).astype(np.float32))
        with torch.no_grad():
            field = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)
        return np.exp(field[0, 0].numpy())
