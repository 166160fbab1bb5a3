"""Procedural training volumes whose objects' borders are image edges.

Atlas parcels (cortical areas) have borders no image shows; a model trained mostly on them learns that one
click says little about where an object ends and draws a size prior. These volumes teach the opposite:
every object is a deformed ellipsoid (0.1-25 cm^3, the size range of deep grey structures and lesions)
whose intensity differs from the tissue around it. :func:`volsam.train.open_data.shapes_cases` writes them
into the default model's training set.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["SHAPES_PER_VOLUME", "SHAPES_SIZE", "shapes_volume"]

SHAPES_PER_VOLUME = 40
"""Shapes drawn per volume (overlaps and small pieces remove some)."""

SHAPES_SIZE = 144
"""Side of a procedural volume, 1 mm voxels."""

MIN_SHAPE_VOXELS = 300
"""Smallest shape kept (1 mm voxels), as the tissue components of the real sources."""


def _smooth_noise(shape: tuple[int, int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (X, Y, Z): a ``cells``^3 normal grid, cubic upsampling."""
    coarse = rng.standard_normal((cells, cells, cells))
    f = ndimage.zoom(coarse, [s / cells for s in shape], order=3, mode="reflect")[: shape[0], : shape[1], : shape[2]]
    return ((f - f.mean()) / max(f.std(), 1e-6)).astype(np.float32)


def shapes_volume(
    rng: np.random.Generator,
    size: int = SHAPES_SIZE,
    shapes: int = SHAPES_PER_VOLUME,
    axes_voxels: tuple[float, float] = (3.0, 18.0),
) -> tuple[np.ndarray, np.ndarray]:
    """One procedural volume: (image float32 in [0, 1], label map int64 with shapes 1..n and background
    tissue classes as negative values -1..-3), both (size, size, size) at 1 mm.

    Shapes are ellipsoids with log-uniform semi-axes of ``axes_voxels`` (3-18 voxels: mm at 1 mm) and a
    random rotation, their surface
    displaced by a smooth random field (lobes, bends); 40 % are the union with a second, offset ellipsoid
    (elongated and C-like objects such as the caudate). Later shapes are painted over earlier ones, so
    shapes touch and cut each other; each keeps its largest 26-connected piece of >= MIN_SHAPE_VOXELS.
    The image (:func:`_shapes_image`) gives each shape an intensity that differs from the tissue around it,
    so every border is an edge (the training loop's ``--p-synth`` redraws contrasts, weak ones included).
    """
    shape3 = (size, size, size)
    tissue = _smooth_noise(shape3, 9, rng)
    edges = np.quantile(tissue, [0.3, 0.65])
    lab = -(1 + np.digitize(tissue, edges)).astype(np.int64)
    wobble = _smooth_noise(shape3, 10, rng)
    coords = np.indices(shape3, dtype=np.float32)
    n = 0
    for _ in range(shapes):
        axes = np.exp(rng.uniform(np.log(axes_voxels[0]), np.log(axes_voxels[1]), 3))
        centre = rng.uniform(0.15 * size, 0.85 * size, 3)
        parts = [(centre, axes, np.linalg.qr(rng.standard_normal((3, 3)))[0])]
        if rng.random() < 0.4:
            d = rng.standard_normal(3)
            d /= np.linalg.norm(d)
            axes2 = axes * rng.uniform(0.6, 1.0, 3)
            centre2 = centre + d * rng.uniform(0.8, 1.6) * axes.max()
            parts.append((centre2, axes2, np.linalg.qr(rng.standard_normal((3, 3)))[0]))
        reach = max(float(a.max()) for _, a, _ in parts) * 1.6
        lo = np.clip(np.floor(np.min([c for c, _, _ in parts], axis=0) - reach), 0, size).astype(int)
        hi = np.clip(np.ceil(np.max([c for c, _, _ in parts], axis=0) + reach) + 1, 0, size).astype(int)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        if any(b - a < 2 for a, b in zip(lo, hi, strict=True)):
            continue
        x = coords[(slice(None), *box)].reshape(3, -1).T
        amp = rng.uniform(0.1, 0.45)
        inside = np.zeros(len(x), dtype=bool)
        for c, a, rot in parts:
            q = ((x - c) @ rot) / a
            inside |= (q**2).sum(axis=1) < 1.0 + amp * wobble[box].ravel()
        if not inside.any():
            continue
        n += 1
        sub = lab[box].reshape(-1)
        sub[inside] = n
        lab[box] = sub.reshape(lab[box].shape)
    out = np.where(lab > 0, 0, lab)
    kept = 0
    for v in range(1, n + 1):
        comp, k = ndimage.label(lab == v, structure=np.ones((3, 3, 3)))
        if k == 0:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        if sizes.max() < MIN_SHAPE_VOXELS:
            continue
        kept += 1
        out[comp == 1 + int(np.argmax(sizes))] = kept
    # pieces cut off a shape go back to the tissue under them
    hole = out == 0
    if hole.any():
        out[hole] = -(1 + np.digitize(tissue[hole], edges))
    return _shapes_image(out, rng), out


def _shapes_image(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Image (float32, [0, 1]) of a :func:`shapes_volume` label map: tissue classes (negative labels) at
    spread means; each shape at the mean of the tissue around it +- U(0.15, 0.45) (reflected into [0, 1]);
    Gaussian texture, blur of 0.3-1.0 voxels, a smooth bias field and noise."""
    tissue_means = np.sort(rng.uniform(0.15, 0.85, 3))
    rng.shuffle(tissue_means)
    means = np.zeros(int(lab.max()) + 4, dtype=np.float32)  # index lab + 3: tissue -3..-1, shapes 1..n
    means[:3] = tissue_means[::-1]
    for v in range(1, int(lab.max()) + 1):
        m = lab == v
        ring = ndimage.binary_dilation(m, iterations=2) & ~m & (lab < 0)
        around = float(np.mean(means[lab[ring] + 3])) if ring.any() else 0.5
        mu = around + rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.45)
        means[v + 3] = float(np.abs(mu) if mu < 0 else (2.0 - mu if mu > 1 else mu))
    img = means[lab + 3] + rng.uniform(0.005, 0.04) * rng.standard_normal(lab.shape, dtype=np.float32)
    img = ndimage.gaussian_filter(img, sigma=rng.uniform(0.3, 1.0, 3), mode="nearest")
    img *= np.exp(0.15 * _smooth_noise(lab.shape, 4, rng))
    img += rng.uniform(0.005, 0.03) * rng.standard_normal(lab.shape, dtype=np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)
