"""The thick-slice variant of a built-in evaluation set (``colin27-aal-thick``): Colin27's 1 mm T1 and
its labels with slabs of several millimetres along one axis, as thick-slice MR is acquired."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from volsam.atomic import atomic_path
from volsam.io import Volume, read_image, write_image, write_mask

__all__ = ["THICK_MM", "thick_colin27"]

THICK_MM = 6.0
"""Slice thickness of ``colin27-aal-thick``, mm (the issue's thick-slice MR)."""


def thick_colin27(files: dict[str, Path], out_dir: Path, thickness_mm: float = THICK_MM) -> dict[str, Path]:
    """Colin27 with slices ``thickness_mm`` thick along its third (inferior-superior) axis: written once.

    The image is the mean of each block of ``round(thickness_mm)`` 1 mm slices (a box slice profile, as a
    thick acquired slice integrates its slab); the AAL labels and the brain mask take, per voxel, the
    value most of the block's slices hold (ties: the lowest value). The block's centre is the new voxel
    centre, so the grid stays aligned in world coordinates. Files ``ch2.nii.gz``, ``aal.nii.gz``,
    ``ch2bet.nii.gz`` (and ``aal.nii.txt`` copied) under ``out_dir``, written atomically; existing files
    are reused.

    Args:
        files: the Colin27 source files by name (``ch2.nii.gz``, ``aal.nii.gz``, ``aal.nii.txt``,
            ``ch2bet.nii.gz``), as Debian's mricron-data installs them.
        out_dir: folder of the thick copies.
        thickness_mm: slab thickness, mm (rounded to whole 1 mm slices).
    """
    out = {k: out_dir / k for k in files}
    if all(p.is_file() for p in out.values()):
        return out
    k = round(thickness_mm)
    img = read_image(files["ch2.nii.gz"])
    n = img.shape[2] // k
    affine = np.array(img.affine, dtype=np.float64)
    # new voxel j covers old slices k*j .. k*j + k - 1; its centre is old index k*j + (k - 1) / 2
    affine[:3, 3] = affine[:3, 3] + affine[:3, 2] * (k - 1) / 2.0
    affine[:3, 2] = affine[:3, 2] * k

    def blocks(a: np.ndarray) -> np.ndarray:
        return np.asarray(a)[:, :, : n * k].reshape(a.shape[0], a.shape[1], n, k)

    def mode(a: np.ndarray) -> np.ndarray:
        b = blocks(a).astype(np.int64)
        values = np.unique(b)
        counts = np.stack([(b == v).sum(axis=3) for v in values])  # [V, X, Y, n]
        return values[np.argmax(counts, axis=0)]

    ref = Volume(blocks(img.array).mean(axis=3).astype(np.float32), affine)
    write_image(ref, out["ch2.nii.gz"])
    write_mask(mode(read_image(files["aal.nii.gz"], dtype=None).array).astype(np.uint8), ref, out["aal.nii.gz"])
    brain = np.asarray(read_image(files["ch2bet.nii.gz"]).array) > 0
    write_mask(mode(brain).astype(np.uint8), ref, out["ch2bet.nii.gz"])
    with atomic_path(out["aal.nii.txt"]) as tmp:
        tmp.write_bytes(files["aal.nii.txt"].read_bytes())
    return out
