"""Build the default model's training set from open data that installs offline.

Writes an nnU-Net raw folder (imagesTr/, labelsTr/, dataset.json) under OUT from the sources of
:mod:`volsam.train.open_data`: Colin27 + AAL minus the held-out structures and inia19 + NeuroMaps (Debian
``mricron-data``), the head CT of Debian ``invesalius-examples`` (skull and head by threshold), and the
MNI152 2009a template with grey/white matter (``pip install nilearn``, whose package ships it).

    python scripts/build_default_data.py OUT [--sources colin27 inia19 invesalius mni152]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from volsam.train.open_data import SOURCES, build_training_set

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    a = p.parse_args()
    labels = build_training_set(a.out, a.sources)
    print(f"wrote {a.out}: {len(labels) - 1} target labels from {', '.join(a.sources)}")
