"""``volsam demo``: segment the bundled real volume from one click with the shipped model.

The bundled volume is a 112^3 crop of the Colin27 T1 (Debian mricron-data; see ``data/LICENSE.md``) and
its reference label is the AAL left thalamus, a structure held out of the default model's training.
The click is placed where a person would click: the point of the label farthest from its boundary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from volsam.eval.interaction import target_view
from volsam.eval.metrics import dice
from volsam.eval.report import plot_view, save_png
from volsam.io import read_image, write_mask
from volsam.session import Session

DATA_DIR = Path(__file__).parent / "data"
DEMO_IMAGE = DATA_DIR / "colin27_crop.nii.gz"
DEMO_LABEL = DATA_DIR / "colin27_crop_thalamus_l.nii.gz"


@dataclass
class DemoResult:
    click: tuple[int, int, int]
    dice: float
    model_ms: float
    encode_ms: float
    decode_ms: float
    paste_ms: float
    mask_path: Path
    png_path: Path


def run_demo(out_dir: str | Path, model: str | Path | None = None, device: str | None = None) -> DemoResult:
    """Segment the bundled volume from one click; write ``mask.nii.gz`` and ``overlay.png`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    session = Session(model, device)
    model_ms = (time.perf_counter() - t0) * 1e3
    session.set_image(DEMO_IMAGE)
    truth = read_image(DEMO_LABEL, dtype=None).array > 0
    depth = ndimage.distance_transform_edt(truth, sampling=session.volume.spacing)
    click = tuple(int(x) for x in np.unravel_index(np.argmax(depth), truth.shape))
    mask = session.add_click(click)
    d = dice(mask > 0, truth)
    t = session.timings
    mask_path = write_mask(mask, session.volume, out / "mask.nii.gz")
    view = target_view("colin27 crop", "Thalamus_L", session.volume, truth, mask > 0, d)
    png_path = save_png(plot_view(view, "demo"), out / "overlay.png")
    return DemoResult(click, d, model_ms, t.encode_ms, t.decode_ms, t.paste_ms, mask_path, png_path)
