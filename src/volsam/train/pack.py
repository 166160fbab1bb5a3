"""A training dataset packed into one compressed file that an accelerator trains from without file I/O.

:func:`pack_dataset` resamples every case of a dataset once onto the grid windows use (RAS+-aligned,
isotropic ``spacing`` mm, :func:`volsam.transforms.extract_window`: trilinear image, nearest labels),
crops it to the scanned region and stores:

- ``image_<i>``: int16 images, ``image * image_scale[i]`` the resampled intensities (zero stays zero, so
  the normalisation of :func:`volsam.transforms.normalize_window`, which looks at voxels > 0, is kept);
  cases that share an image (one T1 under several atlases) share one entry;
- ``label_<c>``: uint16 label maps, each case's values renumbered 0..K-1 in ascending order (0 stays 0);
- ``targets`` int32 [T, 2]: (case, renumbered value); ``target_voxels`` int64 [T] on the packed grid;
- ``fg`` int16 [T, K, 3]: K foreground voxels of each target (drawn with replacement when it has fewer),
  from which :mod:`volsam.train.device_data` centres training windows;
- ``meta``: JSON (spacing, case names, each case's image entry, target names, the source dataset).

Only plain label-value targets can be packed (a target with its own label file, a threshold or a
largest-component rule raises ``ValueError``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from volsam.atomic import atomic_path
from volsam.transforms import Window, extract_window, voxel_to_world

__all__ = ["PACK_FORMAT", "PackSummary", "pack_dataset", "read_pack"]

PACK_FORMAT = "volsam-pack-1"


@dataclass(frozen=True)
class PackSummary:
    """What :func:`pack_dataset` wrote: case, image and target counts, voxels, file size in bytes."""

    cases: int
    images: int
    targets: int
    voxels: int
    bytes: int


def _covering_window(shape: tuple[int, ...], affine: np.ndarray, spacing: float) -> Window:
    """A cubic window (RAS+-aligned, ``spacing`` mm) that holds the whole volume."""
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = voxel_to_world(corners.astype(np.float64), affine)
    lo, hi = world.min(0), world.max(0)
    size = int(np.ceil((hi - lo).max() / spacing)) + 3
    centre = (lo + hi) / 2
    # Window voxel size // 2 sits on its centre; shift by half a voxel for even sizes so the volume is centred.
    return Window(centre + (0.5 * spacing if size % 2 == 0 else 0.0), size=size, spacing=spacing)


def pack_dataset(
    spec: str | Path,
    out: str | Path,
    *,
    spacing: float = 1.5,
    fg_samples: int = 512,
    seed: int = 0,
    labels: list[str | int] | None = None,
) -> PackSummary:
    """Pack a training dataset (any :func:`volsam.eval.datasets.load_dataset` spec) into ``out`` (.npz).

    Args:
        spec: dataset folder, CSV or built-in name.
        out: the file to write (atomically; an existing input is never overwritten in place).
        spacing: grid spacing, mm (the model's window spacing).
        fg_samples: foreground voxels stored per target.
        seed: seeds the foreground draws.
        labels: restrict to these target names or values (default: all).

    Returns:
        A :class:`PackSummary`.

    Raises:
        ValueError: ``spacing`` or ``fg_samples`` not positive, or a target that is not a label value.
    """
    from volsam.train.data import TrainDataset

    if not spacing > 0 or fg_samples < 1:
        raise ValueError(f"spacing must be > 0 and fg_samples >= 1, got {spacing} and {fg_samples}")
    ds = TrainDataset.from_dataset(spec, labels, size=64, spacing=spacing, seed=seed)
    derived = [e.target.name for e in ds.entries if e.derived]
    if derived:
        raise ValueError(f"only label-value targets can be packed; {derived[0]!r} has its own mask rule")
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    image_of: dict[str, int] = {}
    scales: list[float] = []
    case_meta: list[dict[str, Any]] = []
    targets, voxels, fgs, names = [], [], [], []
    total = 0
    for ci, info in enumerate(ds.cases):
        window = _covering_window(info.shape, info.affine, spacing)
        valid = extract_window(np.ones(info.shape, np.uint8), info.affine, window, order=0) > 0.5
        box = ndimage.find_objects(valid.astype(np.uint8))[0]  # the scanned region's bounding box
        lab = extract_window(ds._label(ci), info.affine, window, order=0)[box]
        img = extract_window(ds._image(ci), info.affine, window, order=1)[box]
        values, compact = np.unique(np.rint(lab).astype(np.int64), return_inverse=True)
        if values[0] != 0:  # keep 0 = background even where a volume has none
            values = np.concatenate([[0], values])
            compact = compact + 1
        if len(values) > np.iinfo(np.uint16).max:
            raise ValueError(f"{info.case.name}: {len(values)} label values do not fit uint16")
        arrays[f"label_{ci}"] = compact.reshape(lab.shape).astype(np.uint16)
        peak = float(np.abs(img).max())
        scale = peak / 32000.0 if peak > 0 else 1.0
        q = np.rint(img / scale).astype(np.int16)
        key = hashlib.sha256(q.tobytes() + str(q.shape).encode()).hexdigest()
        if key not in image_of:
            image_of[key] = len(scales)
            arrays[f"image_{len(scales)}"] = q
            scales.append(scale)
            total += q.size
        case_meta.append({"name": info.case.name, "image": image_of[key], "shape": list(lab.shape)})
        for e in (e for e in ds.entries if e.case_index == ci):
            v = int(np.searchsorted(values, int(e.target.value)))
            if v == len(values) or values[v] != int(e.target.value):
                continue  # too small to survive resampling to the packed grid
            idx = np.argwhere(arrays[f"label_{ci}"] == v)
            pick = rng.choice(len(idx), fg_samples, replace=len(idx) < fg_samples)
            targets.append((ci, v))
            voxels.append(len(idx))
            fgs.append(idx[pick].astype(np.int16))
            names.append(e.target.name)
    if not targets:
        raise ValueError(f"no target of {spec} survives resampling to {spacing} mm")
    arrays["image_scale"] = np.asarray(scales, np.float32)
    arrays["targets"] = np.asarray(targets, np.int32)
    arrays["target_voxels"] = np.asarray(voxels, np.int64)
    arrays["fg"] = np.stack(fgs)
    meta = {"format": PACK_FORMAT, "spacing": spacing, "source": str(spec), "cases": case_meta, "target_names": names}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return PackSummary(len(case_meta), len(scales), len(targets), total, out.stat().st_size)


def read_pack(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of a file :func:`pack_dataset` wrote.

    Raises:
        ValueError: not such a file.
    """
    expected = "expected an .npz written by volsam.train.pack.pack_dataset"
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file; {expected}")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a volsam pack ({str(e).splitlines()[0][:80]}); {expected}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not a volsam pack (a single array); {expected}")
    with z:
        arrays = {k: z[k] for k in z.files}
    if "meta" not in arrays:
        raise ValueError(f"{path}: not a volsam pack (no 'meta'); expected a file written by pack_dataset")
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    if meta.get("format") != PACK_FORMAT:
        raise ValueError(f"{path}: pack format {meta.get('format')!r}, expected {PACK_FORMAT!r}")
    return meta, arrays
