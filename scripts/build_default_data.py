"""Build the default model's training set from open data that installs offline.

Writes an nnU-Net raw folder (imagesTr/, labelsTr/, dataset.json) under OUT from the sources of
:mod:`volsam.train.open_data`: Colin27 + AAL minus the held-out structures and inia19 + NeuroMaps (Debian
``mricron-data``), the head CT of Debian ``invesalius-examples`` (skull and head by threshold), and the
MNI152 2009a template with grey/white matter (``pip install nilearn``, whose package ships it), the other
MNI-space atlases of ``mricron-data``, Colin27 tissue components, and procedural volumes of shapes whose
borders are image edges (``shapes``).

    python scripts/build_default_data.py OUT [--sources ...] [--val-targets N]

``--large-val`` also writes OUT/validation_large (large targets of no training source). ``--val-targets N``
moves N MRI targets, drawn before training, into OUT/validation (``volsam train
--val-data OUT/validation``); they are never trained on. The held-out evaluation structures are in no split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from volsam.train.open_data import SOURCES, VALIDATION_SOURCES, build_training_set, split_validation

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    p.add_argument("--val-targets", type=int, default=0, help="targets moved to OUT/validation (default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation draw")
    p.add_argument(
        "--large-val", action="store_true",
        help="also write OUT/validation_large: large targets never trained on (inia19 brain and hemispheres, "
        "one large-shapes volume), the ship rule's large-target validation",
    )
    a = p.parse_args()
    labels = build_training_set(a.out, a.sources)
    print(f"wrote {a.out}: {len(labels) - 1} target labels from {', '.join(a.sources)}")
    if a.val_targets:
        val = split_validation(a.out, a.val_targets, a.seed)
        print(f"moved {len(val)} targets to {a.out / 'validation'}: {', '.join(val)}")
    if a.large_val:
        large = build_training_set(a.out / "validation_large", list(VALIDATION_SOURCES), VALIDATION_SOURCES)
        print(f"wrote {a.out / 'validation_large'}: {len(large) - 1} large validation targets")
