"""Build the default model's training set from open data that installs offline (Debian mricron-data).

Writes an nnU-Net raw layout (imagesTr/, labelsTr/, dataset.json) under OUT:

- ``colin27``: Colin27 T1 (``ch2.nii.gz``) with the AAL labels, *minus* the held-out evaluation
  structures (left/right thalamus, caudate, putamen, hippocampus, amygdala) which are set to 0, so no
  held-out voxel is ever a training target;
- ``inia19``: the macaque inia19 T1 with its NeuroMaps labels (labels under 500 mm^3 dropped).

Synthetic images from these label maps are generated on the fly by ``volsam train --synth`` (random
contrast per label), so the model is not tied to T1 contrast.

    python scripts/build_default_data.py OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from volsam.eval.datasets import MRICRON_TEMPLATES
from volsam.io import read_image, write_mask

HELD_OUT_AAL = {37, 38, 41, 42, 71, 72, 73, 74, 77, 78}
# NeuroMaps labels smaller than this many 0.5 mm voxels (500 mm^3, ~150 voxels at 1.5 mm) are dropped:
# at the model's 1.5 mm they are a handful of voxels.
MIN_VOXELS = 4000


def _aal_names(path: Path) -> dict[int, str]:
    names = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def _copy_image(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())


def build(out: Path) -> None:
    t = MRICRON_TEMPLATES
    if not (t / "ch2.nii.gz").exists():
        raise SystemExit(f"{t} not found: apt-get install mricron-data")
    out.mkdir(parents=True, exist_ok=True)
    labels: dict[str, int] = {"background": 0}

    aal = read_image(t / "aal.nii.gz", dtype=None)
    names = _aal_names(t / "aal.nii.txt")
    lab = np.asarray(aal.array).astype(np.uint16)
    lab[np.isin(lab, list(HELD_OUT_AAL))] = 0
    _copy_image(t / "ch2.nii.gz", out / "imagesTr" / "colin27_0000.nii.gz")
    write_mask(lab, aal, out / "labelsTr" / "colin27.nii.gz")
    for v in np.unique(lab):
        if v:
            labels[f"AAL_{names.get(int(v), v)}"] = int(v)

    nm = read_image(t / "inia19-NeuroMaps.nii.gz", dtype=None)
    lab2 = np.asarray(nm.array).astype(np.int64)
    counts = np.bincount(lab2.ravel().clip(min=0))
    small = np.flatnonzero(counts < MIN_VOXELS)
    lab2[np.isin(lab2, small)] = 0
    # Distinct values from AAL's: offset by 10000.
    lab2 = np.where(lab2 > 0, lab2 + 10000, 0).astype(np.uint16)
    _copy_image(t / "inia19-t1-brain.nii.gz", out / "imagesTr" / "inia19_0000.nii.gz")
    write_mask(lab2, nm, out / "labelsTr" / "inia19.nii.gz")
    for v in np.unique(lab2):
        if v:
            labels[f"NeuroMaps_{int(v) - 10000}"] = int(v)

    (out / "dataset.json").write_text(
        json.dumps(
            {
                "name": "volsam-default-train",
                "description": "Colin27 AAL (held-out structures removed) + inia19 NeuroMaps, from Debian mricron-data",
                "channel_names": {"0": "T1"},
                "labels": labels,
                "numTraining": 2,
                "file_ending": ".nii.gz",
                "held_out_aal": sorted(HELD_OUT_AAL),
            },
            indent=1,
        )
    )
    print(f"wrote {out}: {len(labels) - 1} target labels")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    build(p.parse_args().out)
