"""Cut the small real volume bundled with volsam for ``volsam demo`` (needs Debian mricron-data).

A 112^3 crop (1 mm) of the Colin27 T1 around the deep grey nuclei, with the AAL left thalamus
(label 77, a structure held out of the default model's training) as the reference label. The crop
keeps its true affine, so world coordinates match the full Colin27 volume.

    python scripts/make_demo_volume.py src/volsam/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

TEMPLATES = Path("/usr/share/mricron/templates")
SIZE = 112
LEFT_THALAMUS = 77


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    out = p.parse_args().out
    img = nib.load(TEMPLATES / "ch2.nii.gz")
    aal = nib.load(TEMPLATES / "aal.nii.gz")
    lab = np.asarray(aal.dataobj)
    centre = np.round(np.argwhere(np.isin(lab, [77, 78])).mean(0)).astype(int)
    lo = centre - SIZE // 2
    sl = tuple(slice(a, a + SIZE) for a in lo)
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ lo + img.affine[:3, 3]
    data = np.asarray(img.dataobj)[sl].astype(np.uint8)
    mask = (lab[sl] == LEFT_THALAMUS).astype(np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), out / "colin27_crop.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), out / "colin27_crop_thalamus_l.nii.gz")
    print(f"crop {sl} -> {out}")


if __name__ == "__main__":
    main()
