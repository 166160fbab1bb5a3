"""The CVPR 2025 interactive 3D challenge's file format and inference contract.

"CVPR 2025: Foundation Models for Interactive 3D Biomedical Image Segmentation"
(https://www.codabench.org/competitions/5263/). Facts below come from the organisers' evaluation code,
https://github.com/JunMa11/CVPR-MedSegFMCompetition (``CVPR25_iter_eval.py``, ``get_boxes.py``, README);
the README's "Challenge format" section repeats them with a source for each.

A case is one ``.npz`` file:

``imgs``
    the image, uint8, shape ``(D, H, W)`` (z, y, x).
``spacing``
    voxel size in mm, 3 numbers, passed as-is with the ``(D, H, W)`` arrays to the surface-distance code,
    i.e. in array-axis order.
``gts``
    integer label map ``(D, H, W)``; training cases only (validation/test ground truth is kept apart).
``boxes`` (optional)
    a list with one dict per class (classes in ascending label order) with keys ``z_min``, ``z_max``,
    ``z_mid`` (slices along D) and ``z_mid_x_min``, ``z_mid_y_min``, ``z_mid_x_max``, ``z_mid_y_max``: the
    2D box on slice ``z_mid``, x along W and y along H, inclusive, enlarged at random by up to 5/256 of the
    slice size per side. Omitted for classes where a box is a bad prompt (vessels); then the box step is
    skipped and scored 0.
``clicks`` (added by the evaluator from step 2 on)
    a list with one dict per class: ``{"fg": [[z, y, x], ...], "bg": [[z, y, x], ...]}``. The coordinates
    are array indices of ``imgs`` (``np.argwhere`` on the ``(D, H, W)`` mask), although the script's
    docstring calls them ``[x, y, z]``.
``clicks_order``
    a list with one list per class of ``"fg"``/``"bg"``: the order in which that class's clicks were made.
``prev_pred``
    the previous step's prediction ``(D, H, W)``; optional input.

The model writes ``outputs/NAME.npz`` (same file name) with key ``segs``: uint8 ``(D, H, W)``, class ``c``
(1-based position in the lists above) painted with value ``c``. The evaluator runs the container once per
step (box, then 5 clicks) with ``inputs/`` and ``outputs/`` mounted under ``/workspace`` and the command
``sh predict.sh``; each whole run may take at most 90 s per class.

Scores (per case, per step): DSC = mean over the classes in ``gts`` of the Dice; NSD = mean of the
normalised surface Dice at 2 mm, computed only when that mean DSC > 0.2 (else 0). DSC_AUC / NSD_AUC: the
trapezoid over the 5 click steps (the optional box step is left out); DSC_Final / NSD_Final: after the
last click.

volsam works in file voxel order ``(i, j, k)`` = ``(x, y, z)``: :func:`case_volume` transposes ``(D, H, W)``
to ``(W, H, D)`` and reverses the spacing; :func:`box_prompt` and :func:`click_prompt` map the challenge's
prompts into that order, :func:`predict_case` maps the label map back.

Reading the lists of dicts needs ``np.load(..., allow_pickle=True)``, which can run code from a crafted
file: read only case files from a source you trust (as the challenge's own scripts do).
"""

from __future__ import annotations

import pickle
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from volsam.atomic import atomic_path
from volsam.io import Volume, volume_from_array

__all__ = [
    "BOX_KEYS",
    "ChallengeCase",
    "PredictResult",
    "box_prompt",
    "case_volume",
    "challenge_predict",
    "click_prompt",
    "eval_inputs",
    "is_challenge_folder",
    "predict_case",
    "read_case",
    "write_segs",
]

BOX_KEYS = ("z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")
"""Keys of one class's box dict (``get_boxes.py``)."""

SECONDS_PER_CLASS = 90.0
"""The challenge's upper bound on one container run, per class (README, "Upper Time Bound")."""


@dataclass
class ChallengeCase:
    """One challenge case as read from its ``.npz`` (arrays in the file's ``(D, H, W)`` order).

    Attributes:
        name: file name without ``.npz``.
        imgs: image (D, H, W).
        spacing: mm per array axis (D, H, W order).
        gts: label map (D, H, W) or None.
        boxes: one dict per class (:data:`BOX_KEYS`) or None when the file has no ``boxes``.
        clicks: one ``{"fg": [...], "bg": [...]}`` per class, or None.
        clicks_order: one list of ``"fg"``/``"bg"`` per class, or None.
        prev_pred: previous prediction (D, H, W) or None.
    """

    name: str
    imgs: np.ndarray
    spacing: tuple[float, float, float]
    gts: np.ndarray | None = None
    boxes: list[dict[str, int]] | None = None
    clicks: list[dict[str, list[list[int]]]] | None = None
    clicks_order: list[list[str]] | None = None
    prev_pred: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        """Classes to predict: the length of the prompt lists (the ground truth's when there are none)."""
        for lst in (self.boxes, self.clicks, self.clicks_order):
            if lst is not None:
                return len(lst)
        if self.gts is not None:
            return int(np.count_nonzero(np.unique(self.gts)))
        return 0


def _list(obj: Any, what: str, path: Path) -> list:
    value = obj.tolist() if isinstance(obj, np.ndarray) else obj
    if not isinstance(value, list):
        raise ValueError(f"{path.name}: '{what}' must be a list with one entry per class, got {type(value).__name__}")
    return value


def is_challenge_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding challenge ``.npz`` cases (and no other dataset layout)."""
    p = Path(path)
    if not p.is_dir() or (p / "labelsTr").is_dir() or ((p / "images").is_dir() and (p / "labels").is_dir()):
        return False
    return any(q.name.endswith(".npz") for q in p.iterdir())


def read_case(path: str | Path) -> ChallengeCase:
    """Read and check one challenge case (see the module docstring); ValueError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such case file: {path}")
    # np.load with allow_pickle unpickles any non-zip file whole: accept zip archives (.npz) only.
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path.name}: not an .npz file (expected a zip archive of .npy arrays)")
    try:
        npz = np.load(path, allow_pickle=True)  # the prompt lists are pickled Python objects (module docstring)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path.name}: not a readable .npz ({' '.join(str(e).split())})") from None
    with npz:
        keys = set(npz.files)
        if "imgs" not in keys or "spacing" not in keys:
            raise ValueError(f"{path.name}: a challenge case needs keys 'imgs' and 'spacing', got {sorted(keys)}")
        imgs = np.asarray(npz["imgs"])
        if imgs.ndim != 3:
            raise ValueError(f"{path.name}: 'imgs' must be 3D (D, H, W), got shape {imgs.shape}")
        sp = np.asarray(npz["spacing"], dtype=np.float64).reshape(-1)
        if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise ValueError(f"{path.name}: 'spacing' must be 3 positive numbers (mm), got {sp.tolist()}")
        arrays = {}
        for key in ("gts", "prev_pred"):
            if key in keys:
                a = np.asarray(npz[key])
                if a.shape != imgs.shape:
                    raise ValueError(f"{path.name}: '{key}' has shape {a.shape}, 'imgs' {imgs.shape}")
                arrays[key] = a
        lists = {k: _list(npz[k], k, path) for k in ("boxes", "clicks", "clicks_order") if k in keys}
    n = {k: len(v) for k, v in lists.items()}
    if len(set(n.values())) > 1:
        raise ValueError(f"{path.name}: the prompt lists differ in length (one entry per class): {n}")
    for c, box in enumerate(lists.get("boxes", [])):
        if not isinstance(box, dict) or any(k not in box for k in BOX_KEYS):
            raise ValueError(f"{path.name}: box {c} must be a dict with keys {', '.join(BOX_KEYS)}, got {box!r}")
    for c, cl in enumerate(lists.get("clicks", [])):
        if not isinstance(cl, dict) or not set(cl) <= {"fg", "bg"}:
            raise ValueError(f"{path.name}: clicks {c} must be a dict with 'fg' and 'bg' lists, got {cl!r}")
        for kind in ("fg", "bg"):
            for p in cl.get(kind, []):
                if len(p) != 3:
                    raise ValueError(f"{path.name}: click {p!r} of class {c} is not [z, y, x]")
    return ChallengeCase(
        name=path.name[: -len(".npz")] if path.name.endswith(".npz") else path.stem,
        imgs=imgs,
        spacing=(float(sp[0]), float(sp[1]), float(sp[2])),
        gts=arrays.get("gts"),
        boxes=lists.get("boxes"),
        clicks=lists.get("clicks"),
        clicks_order=lists.get("clicks_order"),
        prev_pred=arrays.get("prev_pred"),
    )


def to_xyz(a: np.ndarray) -> np.ndarray:
    """``(D, H, W)`` -> volsam's ``(X, Y, Z)`` = ``(W, H, D)`` (a view)."""
    return np.asarray(a).transpose(2, 1, 0)


def case_volume(case: ChallengeCase) -> Volume:
    """The image as a volsam :class:`~volsam.io.Volume` ``(W, H, D)`` with the spacing on the diagonal."""
    sz, sy, sx = case.spacing
    return volume_from_array(np.ascontiguousarray(to_xyz(case.imgs)), np.diag([sx, sy, sz, 1.0]))


def box_prompt(box: dict[str, int]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """One class's challenge box as inclusive volsam voxel corners ``((x0, y0, z0), (x1, y1, z1))``."""
    lo = (int(box["z_mid_x_min"]), int(box["z_mid_y_min"]), int(box["z_min"]))
    hi = (int(box["z_mid_x_max"]), int(box["z_mid_y_max"]), int(box["z_max"]))
    return lo, hi


def click_prompt(point: Sequence[int]) -> tuple[float, float, float]:
    """A challenge click ``[z, y, x]`` as a volsam voxel ``(x, y, z)``."""
    z, y, x = (float(v) for v in point)
    return x, y, z


def ordered_clicks(case: ChallengeCase, c: int) -> list[tuple[tuple[float, float, float], bool]]:
    """Class ``c``'s clicks as ``(voxel, positive)`` in the order they were made (``clicks_order``; without
    it, foreground clicks first)."""
    if case.clicks is None:
        return []
    fg = list(case.clicks[c].get("fg", []))
    bg = list(case.clicks[c].get("bg", []))
    order = case.clicks_order[c] if case.clicks_order is not None else ["fg"] * len(fg) + ["bg"] * len(bg)
    if sorted(order) != sorted(["fg"] * len(fg) + ["bg"] * len(bg)):
        raise ValueError(
            f"{case.name}: clicks_order of class {c} ({len(order)} entries) does not match its "
            f"{len(fg)} fg + {len(bg)} bg clicks"
        )
    pools = {"fg": iter(fg), "bg": iter(bg)}
    return [(click_prompt(next(pools[kind])), kind == "fg") for kind in order]


def predict_case(session: Any, case: ChallengeCase) -> np.ndarray:
    """``segs`` for one case: uint8 ``(D, H, W)``, class ``c`` (1-based) painted ``c``.

    Every class is one object of the :class:`~volsam.session.Session`, prompted with its box (when the file
    has boxes) and then all its clicks so far, in order: the container runs afresh at every step, and
    replaying the whole prompt history gives the same result as an interactive session that kept its state.
    ``prev_pred`` is therefore not needed as a model input; a class with no prompt at all keeps its voxels
    of ``prev_pred``. Overlaps follow the Session's policy (an earlier class keeps its voxels).
    """
    n = case.num_classes
    if n > 255:
        raise ValueError(f"{case.name}: {n} classes do not fit the uint8 'segs' the challenge expects")
    session.set_image(case_volume(case))
    unprompted = []
    for c in range(n):
        if c > 0:
            session.new_object()
        prompted = False
        if case.boxes is not None:
            lo, hi = box_prompt(case.boxes[c])
            session.add_box(lo, hi)
            prompted = True
        for point, positive in ordered_clicks(case, c):
            session.add_click(point, positive=positive)
            prompted = True
        if not prompted:
            unprompted.append(c + 1)
    lm = np.asarray(session.label_map) if n else np.zeros(to_xyz(case.imgs).shape, dtype=np.uint8)
    segs = np.ascontiguousarray(lm.transpose(2, 1, 0)).astype(np.uint8)
    if case.prev_pred is not None:
        for label in unprompted:
            keep = (case.prev_pred == label) & (segs == 0)
            segs[keep] = label
    return segs


def eval_inputs(path: str | Path) -> tuple[Volume, np.ndarray, dict[int, tuple] | None]:
    """What evaluation needs from a training case: the volume, the label map ``(X, Y, Z)`` and the boxes by
    label value (``(lo, hi)`` inclusive volsam corners; None when the file has no ``boxes``).

    The i-th box belongs to the i-th non-zero label value in ascending order, as in ``get_boxes.py``.
    """
    case = read_case(path)
    if case.gts is None:
        raise ValueError(f"{Path(path).name}: no 'gts' key: evaluation needs the ground truth in the case file")
    values = [int(v) for v in np.unique(case.gts) if v != 0]
    boxes = None
    if case.boxes is not None:
        if len(case.boxes) != len(values):
            raise ValueError(
                f"{Path(path).name}: {len(case.boxes)} boxes for {len(values)} classes in 'gts' (one per class)"
            )
        boxes = {v: box_prompt(b) for v, b in zip(values, case.boxes, strict=True)}
    return case_volume(case), np.ascontiguousarray(to_xyz(case.gts)), boxes


def write_segs(path: str | Path, segs: np.ndarray) -> Path:
    """Write ``{"segs": segs}`` as a compressed ``.npz``, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez would append ".npz" to a name
        np.savez_compressed(f, segs=np.asarray(segs, dtype=np.uint8))
    return path


@dataclass
class PredictResult:
    """Outcome of :func:`challenge_predict` for one input file."""

    name: str
    output: Path | None
    classes: int = 0
    seconds: float = 0.0
    error: str | None = None
    over_budget: bool = field(default=False)


def challenge_predict(
    input_dir: str | Path,
    output_dir: str | Path,
    session_factory: Callable[[], Any],
    *,
    on_case: Callable[[PredictResult], None] | None = None,
) -> list[PredictResult]:
    """Run the inference contract over ``input_dir/*.npz``: one ``output_dir/NAME.npz`` with ``segs`` each.

    A case that fails (unreadable, bad prompts) is reported in its result and the others still run; no
    output is written for it (the evaluator then scores zeros, as it does for any missing output).
    ``over_budget`` flags a case slower than :data:`SECONDS_PER_CLASS` per class (model loading excluded).
    """
    src, dst = Path(input_dir), Path(output_dir)
    if not src.is_dir():
        raise ValueError(f"input folder {src} does not exist")
    files = sorted(p for p in src.iterdir() if p.name.endswith(".npz") and p.is_file())
    if not files:
        raise ValueError(f"no .npz cases in {src}")
    if dst.resolve() == src.resolve():
        raise ValueError("the output folder must differ from the input folder (inputs are never overwritten)")
    dst.mkdir(parents=True, exist_ok=True)
    session = session_factory()
    results = []
    for path in files:
        t0 = time.perf_counter()
        name = path.name[: -len(".npz")]
        try:
            case = read_case(path)
            segs = predict_case(session, case)
            out = write_segs(dst / path.name, segs)
            dt = time.perf_counter() - t0
            res = PredictResult(name, out, case.num_classes, dt, over_budget=dt > SECONDS_PER_CLASS * case.num_classes)
        except (OSError, ValueError) as e:
            res = PredictResult(name, None, seconds=time.perf_counter() - t0, error=" ".join(str(e).split()))
        results.append(res)
        if on_case is not None:
            on_case(res)
    return results
