"""Shared helpers of the training tests: a tiny synthetic dataset."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

SHAPE = (64, 64, 64)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])  # 64 voxels x 3 mm = 192 mm = one 128^3 window at 1.5 mm


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with a bright sphere (label 1) and a darker cube (label 2), both off-centre."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).transpose(1, 2, 3, 0).astype(np.float32)
    centre = np.array([24, 30, 34]) + rng.integers(-3, 4, 3)
    radius = 11 + int(rng.integers(0, 3))
    sphere = ((grid - centre) ** 2).sum(-1) <= radius**2
    lo = np.array([36, 34, 10]) + rng.integers(-3, 4, 3)
    cube = np.zeros(SHAPE, dtype=bool)
    cube[lo[0] : lo[0] + 16, lo[1] : lo[1] + 14, lo[2] : lo[2] + 18] = True
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[sphere] = 1
    label[cube] = 2
    image = 100 + 20 * rng.standard_normal(SHAPE).astype(np.float32)
    image[sphere] += 150
    image[cube] += 70
    return image.astype(np.float32), label


def write_dataset(root: Path, n: int = 3, seed: int = 0) -> Path:
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, label = make_case(seed + i)
        nib.save(nib.Nifti1Image(image, AFFINE), str(root / "images" / f"case{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, AFFINE), str(root / "labels" / f"case{i}.nii.gz"))
    return root


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded: on this shared 2-core machine OpenMP's 2 threads can be 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def tiny_fusion():
    """A small early-fusion model (32^3 windows), seeded."""
    from volsam.config import FusionConfig
    from volsam.modeling import FusionSeg3D

    torch.manual_seed(0)
    return FusionSeg3D.from_config(FusionConfig(img_size=32, widths=(4, 8), blocks=(1, 1)))
