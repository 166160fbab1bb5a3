"""Evaluation datasets: lists of cases (image + label files) and the targets to segment in each.

:func:`load_dataset` accepts

- an nnU-Net raw dataset folder: ``labelsTr/NAME.nii.gz``, ``imagesTr/NAME_0000.nii.gz`` (first channel
  only) and an optional ``dataset.json`` whose ``"labels"`` name the values (v2 ``{"liver": 1}`` or v1
  ``{"1": "liver"}``);
- a folder with ``images/`` and ``labels/``: a label ``labels/NAME.ext`` pairs with ``images/NAME.ext``
  or ``images/NAME_0000.ext``;
- a CSV file with header ``image,label`` (optional ``name`` column); relative paths are resolved against
  the CSV's folder;
- a built-in name from :data:`BUILTIN_DATASETS`: ``"colin27-aal"`` (AAL regions and the brain of the
  Colin27 1 mm T1), ``"large-targets"`` (whole brain, cerebral hemispheres, cerebellum and lobes of
  Colin27, 0.1-1.5 L: :data:`LARGE_TARGETS`) and ``"colin27-aal-thick"`` (``colin27-aal`` with 6 mm
  slices: :func:`volsam.eval.thick.thick_colin27`, written once into :func:`volsam.hub.cache_dir`);
- a folder of CVPR 2025 challenge cases ``NAME.npz`` (``imgs``, ``spacing``, ``gts``, optional ``boxes``:
  :mod:`volsam.challenge`): image, label and boxes in one file, so ``Case.image`` and ``Case.label`` are
  the same ``.npz``.

Targets. A :class:`Target` is one binary object: by default the voxels of the case's label file equal
to ``value``; it may carry its own label source (``label_path``), a threshold instead of equality and a
largest-connected-component rule (the built-in whole-brain target uses all three). Cases from folders or
CSVs without label names are loaded *lazily*: ``Case.targets`` is empty, meaning "every non-zero value
of the label file", and :func:`resolve_targets` discovers them when the runner reads the label, so the
loader never reads image data. Cases from ``dataset.json`` or built-ins list their targets explicitly;
a target absent from one case simply has an empty mask there (the runner skips it).

Bad cases do not make the loader raise: :func:`validate_case` returns the reason (unreadable file, image
and label grids differ, no foreground) so the runner can skip the case and report why.

File reading uses nibabel directly (NIfTI and the formats nibabel reads); arrays come back in file
voxel order ``(X, Y, Z)``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage
from scipy import ndimage

__all__ = [
    "BUILTIN_DATASETS",
    "COLIN27_DEFAULT_TARGETS",
    "COLIN27_HELD_OUT",
    "LARGE_DEFAULT_TARGETS",
    "LARGE_TARGETS",
    "MRICRON_TEMPLATES",
    "Case",
    "Target",
    "load_dataset",
    "load_target_mask",
    "resolve_targets",
    "validate_case",
]

MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")
"""Where Debian's ``mricron-data`` installs the Colin27 (ch2) template and the AAL atlas."""

COLIN27_DEFAULT_TARGETS: tuple[str, ...] = (
    "Thalamus_L",
    "Thalamus_R",
    "Caudate_L",
    "Caudate_R",
    "Putamen_L",
    "Putamen_R",
    "Hippocampus_L",
    "Hippocampus_R",
    "Amygdala_L",
    "Amygdala_R",
    "Brain",
)
"""Targets of ``colin27-aal`` when no subset is asked for (AAL names; ``Brain`` from ``ch2bet``)."""

COLIN27_HELD_OUT: tuple[str, ...] = COLIN27_DEFAULT_TARGETS[:8]
"""The held-out structures the default model's figures are measured on (never a training target)."""

_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".mgz")
_AFFINE_ATOL_MM = 1e-3  # image and label affines must agree to this (absolute, mm)


@dataclass(frozen=True)
class Target:
    """One binary object to segment in a case.

    Attributes:
        value: label value selecting the object (``label == value``).
        name: display name (dataset.json / atlas name, else ``label_<value>``).
        label_path: label file for this target; None = the case's ``label``.
        threshold: when set, the mask is ``data > threshold`` instead of ``data == value``.
        largest_component: keep only the largest 26-connected component of the mask.
        values: when set, the mask is the union ``data in values`` (a lobe from its atlas parcels);
            ``value`` is then only an identifier.
    """

    value: int
    name: str
    label_path: Path | None = None
    threshold: float | None = None
    largest_component: bool = False
    values: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Case:
    """One image with its label file.

    Attributes:
        name: case identifier (unique within a dataset).
        image: image file.
        label: label file (integer label map).
        targets: objects to segment; empty = every non-zero value of ``label`` (see
            :func:`resolve_targets`).
    """

    name: str
    image: Path
    label: Path
    targets: tuple[Target, ...] = ()


# --------------------------------------------------------------------------------------------------
# file access (nibabel; to be replaced by volsam.io)


def _load(path: Path) -> SpatialImage:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return nib.load(str(path))  # type: ignore[return-value]


def _spatial_shape(shape: Sequence[int], path: Path) -> tuple[int, int, int]:
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise ValueError(f"{path.name}: expected a 3D volume, got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _grid(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Spatial shape (X, Y, Z) and 4x4 voxel-to-world affine (mm) from the header only."""
    img = _load(path)
    return _spatial_shape(img.shape, path), np.asarray(img.affine, dtype=np.float64)


def _read_array(path: Path) -> np.ndarray:
    """Voxel data (X, Y, Z) in its stored dtype (scaled when the header asks for it)."""
    img = _load(path)
    shape = _spatial_shape(img.shape, path)
    return np.asanyarray(img.dataobj).reshape(shape)


# --------------------------------------------------------------------------------------------------
# targets


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def load_target_mask(case: Case, target: Target, label: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask (X, Y, Z) of ``target`` in ``case``; all False when the target is absent.

    Args:
        case: the case.
        target: one of its targets (or of :func:`resolve_targets`).
        label: the case's label array if already read (used when ``target.label_path`` is None), to
            avoid reading the file once per target.
    """
    if target.label_path is not None:
        data = _read_array(target.label_path)
    else:
        data = _read_array(case.label) if label is None else np.asarray(label)
    if target.threshold is not None:
        mask = data > target.threshold
    elif target.values is not None:
        mask = np.isin(data, target.values)
    else:
        mask = data == target.value
    return _largest_component(mask) if target.largest_component else mask


def resolve_targets(case: Case, label: np.ndarray | None = None) -> tuple[Target, ...]:
    """The targets of ``case``: ``case.targets`` when given, else one per non-zero label value.

    Args:
        case: the case.
        label: its label array (X, Y, Z) if already read; read from ``case.label`` when needed.

    Returns:
        Explicit targets unchanged; for a lazy case, ``Target(v, f"label_{v}")`` for each non-zero value
        ``v`` present, ascending.
    """
    if case.targets:
        return case.targets
    data = _read_array(case.label) if label is None else np.asarray(label)
    values = np.unique(data[data != 0])
    out = []
    for v in values:
        if v != np.round(v):
            raise ValueError(f"{case.label}: non-integer label value {v}")
        out.append(Target(int(v), f"label_{int(v)}"))
    return tuple(out)


def validate_case(case: Case) -> str | None:
    """Why ``case`` cannot be evaluated, or None when it can.

    Checks that the image and every label source are readable 3D volumes on the same grid (shape equal,
    affines equal within 1e-3 mm) and that at least one target has foreground (for a lazy case: the label
    has a non-zero voxel). Reads the label data. A challenge ``.npz`` is checked by
    :func:`volsam.challenge.read_case` and must hold ``gts``.
    """
    if case.image.name.endswith(".npz"):
        from volsam.challenge import eval_inputs

        try:
            _, label, _ = eval_inputs(case.image)
        except (OSError, ValueError) as e:
            return f"unreadable: {' '.join(str(e).split())}"
        if not case.targets:
            return None if label.any() else "label has no foreground"
        if any(load_target_mask(case, t, label).any() for t in case.targets):
            return None
        return f"none of the targets ({', '.join(t.name for t in case.targets)}) has foreground"
    try:
        shape, affine = _grid(case.image)
    except Exception as e:
        return f"image unreadable: {e}"
    sources = [case.label] + [t.label_path for t in case.targets if t.label_path is not None]
    for src in dict.fromkeys(sources):
        try:
            lshape, laffine = _grid(src)
        except Exception as e:
            return f"label unreadable: {e}"
        if lshape != shape:
            return f"grid mismatch: image {case.image.name} shape {shape} vs {src.name} shape {lshape}"
        if not np.allclose(laffine, affine, rtol=0.0, atol=_AFFINE_ATOL_MM):
            diff = float(np.abs(laffine - affine).max())
            return f"grid mismatch: affines of {case.image.name} and {src.name} differ by up to {diff:.4g} mm"
    try:
        label = _read_array(case.label)
        if not case.targets:
            return None if label.any() else "label has no foreground"
        # value targets: one pass over the label instead of one per target (a dataset.json lists many)
        plain = [t for t in case.targets if t.label_path is None and t.threshold is None and t.values is None]
        if plain and np.isin(np.asarray([t.value for t in plain]), np.unique(label)).any():
            return None
        if any(load_target_mask(case, t, label).any() for t in case.targets if t not in plain):
            return None
    except Exception as e:
        return f"label unreadable: {e}"
    return f"none of the targets ({', '.join(t.name for t in case.targets)}) has foreground"


# --------------------------------------------------------------------------------------------------
# label selection


def _select(
    labels: Sequence[str | int] | None,
    available: Sequence[Target],
    default: Sequence[Target],
    where: str,
) -> tuple[Target, ...]:
    """Targets picked from ``available`` by name or value, in the order asked; ``default`` when None."""
    if labels is None:
        return tuple(default)
    by_name = {t.name: t for t in available}
    by_fold = {t.name.casefold(): t for t in available}
    by_value = {t.value: t for t in available if t.label_path is None and t.values is None}
    out: dict[str, Target] = {}
    for lab in labels:
        t = None
        if isinstance(lab, (int, np.integer)) and not isinstance(lab, bool):
            t = by_value.get(int(lab))
        elif isinstance(lab, str):
            t = by_name.get(lab) or by_fold.get(lab.casefold())
            if t is None and lab.strip().isdigit():
                t = by_value.get(int(lab))
        if t is None:
            valid = ", ".join(
                f"{t.name} ({t.value})" if t.label_path is None and t.values is None else t.name for t in available
            )
            raise ValueError(f"unknown label {lab!r} for {where}; valid names (values): {valid}")
        out[t.name] = t
    return tuple(out.values())


def _select_nameless(labels: Sequence[str | int] | None, where: str) -> tuple[Target, ...]:
    """Explicit ``label_<v>`` targets for a dataset without label names; () = lazy (all values)."""
    if labels is None:
        return ()
    out: dict[int, Target] = {}
    for lab in labels:
        text = str(lab).strip()
        if text.startswith("label_"):
            text = text[len("label_") :]
        if isinstance(lab, bool) or not text.isdigit() or int(text) == 0:
            raise ValueError(
                f"unknown label {lab!r} for {where}: this dataset has no label names, select targets by "
                "non-zero integer value (or 'label_<value>')"
            )
        out[int(text)] = Target(int(text), f"label_{int(text)}")
    return tuple(out.values())


# --------------------------------------------------------------------------------------------------
# layouts


def _split_ext(path: Path) -> tuple[str, str]:
    name = path.name
    for ext in _EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return path.stem, path.suffix


def _volume_files(folder: Path, ending: str | None = None) -> list[Path]:
    exts = (ending,) if ending else _EXTENSIONS
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(exts) and not p.name.startswith("."))


def _find_image(folder: Path, stem: str, ext: str, channel_suffix: bool) -> Path:
    """The image paired with label ``stem``: ``folder/stem{ext}`` or ``folder/stem_0000{ext}`` (any known
    extension). When none exists, the expected path (``_0000`` form if ``channel_suffix``) is returned so
    that :func:`validate_case` reports it missing."""
    forms = (f"{stem}_0000", stem) if channel_suffix else (stem, f"{stem}_0000")
    candidates = [folder / f"{s}{e}" for e in dict.fromkeys((ext, *_EXTENSIONS)) for s in forms]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _nnunet_targets(meta: dict) -> list[Target] | None:
    """Named targets from dataset.json ``labels`` (v1 or v2), without background; None if absent."""
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        return None
    pairs: list[tuple[str, object]] = []
    if all(str(k).strip().lstrip("-").isdigit() and isinstance(v, str) for k, v in raw.items()):
        pairs = [(v, int(k)) for k, v in raw.items()]  # v1: {"1": "liver"}
    else:
        pairs = list(raw.items())  # v2: {"liver": 1}; region labels are lists of values
    out = []
    for name, value in pairs:
        if isinstance(value, (int, str)) and str(value).strip().isdigit() and int(value) != 0:
            out.append(Target(int(value), str(name)))
    # Region-based entries (lists of values, nnU-Net v2) have no single value and are not targets.
    return sorted(out, key=lambda t: t.value)


def _load_nnunet(root: Path, labels: Sequence[str | int] | None) -> list[Case]:
    meta: dict = {}
    if (root / "dataset.json").is_file():
        meta = json.loads((root / "dataset.json").read_text())
    named = _nnunet_targets(meta)
    where = f"nnU-Net dataset {root.name}"
    targets = _select_nameless(labels, where) if named is None else _select(labels, named, named, where)
    ending = meta.get("file_ending") if isinstance(meta.get("file_ending"), str) else None
    cases = []
    for lab in _volume_files(root / "labelsTr", ending):
        stem, ext = _split_ext(lab)
        cases.append(Case(stem, _find_image(root / "imagesTr", stem, ext, channel_suffix=True), lab, targets))
    return cases


def _load_folder(root: Path, labels: Sequence[str | int] | None) -> list[Case]:
    targets = _select_nameless(labels, f"folder dataset {root.name}")
    cases = []
    for lab in _volume_files(root / "labels"):
        stem, ext = _split_ext(lab)
        cases.append(Case(stem, _find_image(root / "images", stem, ext, channel_suffix=False), lab, targets))
    return cases


def _load_csv(path: Path, labels: Sequence[str | int] | None) -> list[Case]:
    targets = _select_nameless(labels, f"CSV dataset {path.name}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        if "image" not in fields or "label" not in fields:
            raise ValueError(f"{path}: the CSV header must have 'image' and 'label' columns, got {fields}")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    cases: list[Case] = []
    seen: set[str] = set()
    for n, row in enumerate(rows, start=2):
        if not row.get("image") and not row.get("label"):
            continue
        if not row.get("image") or not row.get("label"):
            raise ValueError(f"{path}:{n}: both 'image' and 'label' are needed, got {row}")
        image, label = (Path(row[k]).expanduser() for k in ("image", "label"))
        image, label = (p if p.is_absolute() else path.parent / p for p in (image, label))
        name = row.get("name") or _split_ext(label)[0]
        if name in seen:
            name = f"{name}_row{n}"
        seen.add(name)
        cases.append(Case(name, image, label, targets))
    return cases


def _aal_names(path: Path) -> list[Target]:
    """AAL regions from ``aal.nii.txt`` lines ``"<value> <name> <code>"`` (CRLF tolerated)."""
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            out.append(Target(int(parts[0]), parts[1]))
    return out


def _colin27_files(name: str) -> dict[str, Path]:
    root = MRICRON_TEMPLATES
    files = {k: root / k for k in ("ch2.nii.gz", "aal.nii.gz", "aal.nii.txt", "ch2bet.nii.gz")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"dataset {name!r} needs Debian's mricron-data (missing: {', '.join(missing)}); "
            "install it with: apt-get install mricron-data"
        )
    return files


def _colin27_brain(files: dict[str, Path]) -> Target:
    """The whole brain: ``ch2bet > 0``, largest component."""
    return Target(1, "Brain", label_path=files["ch2bet.nii.gz"], threshold=0.0, largest_component=True)


def _colin27_case(
    case_id: str,
    files: dict[str, Path],
    available: list[Target],
    labels: Sequence[str | int] | None,
    default: Sequence[str],
    where: str,
) -> list[Case]:
    """The one case of a Colin27 built-in: ``labels`` chosen from ``available`` (``default`` names if None)."""
    by_name = {t.name: t for t in available}
    targets = _select(labels, available, [by_name[n] for n in default if n in by_name], where)
    return [Case(case_id, files["ch2.nii.gz"], files["aal.nii.gz"], targets)]


def _load_colin27_aal(labels: Sequence[str | int] | None) -> list[Case]:
    """Colin27 (ch2) 1 mm T1 MRI with AAL regions and the whole brain."""
    files = _colin27_files("colin27-aal")
    available = [*_aal_names(files["aal.nii.txt"]), _colin27_brain(files)]
    return _colin27_case("colin27", files, available, labels, COLIN27_DEFAULT_TARGETS, "colin27-aal")


def _aal_side(first: int, last: int, side: str) -> tuple[int, ...]:
    """AAL values first..last of one side (odd = left, even = right in AAL's numbering)."""
    return tuple(v for v in range(first, last + 1) if v % 2 == (1 if side == "L" else 0))


LARGE_TARGETS: dict[str, tuple[int, ...]] = {
    "Cerebrum_L": _aal_side(1, 90, "L"),
    "Cerebrum_R": _aal_side(1, 90, "R"),
    "Cerebellum": tuple(range(91, 117)),
    "Frontal_L": _aal_side(1, 28, "L"),
    "Frontal_R": _aal_side(1, 28, "R"),
    "Temporal_L": _aal_side(79, 90, "L"),
    "Temporal_R": _aal_side(79, 90, "R"),
    "Parietal_L": _aal_side(57, 70, "L"),
    "Parietal_R": _aal_side(57, 70, "R"),
    "Occipital_L": _aal_side(43, 54, "L"),
    "Occipital_R": _aal_side(43, 54, "R"),
}
"""AAL unions of ``large-targets`` (besides ``Brain``, ``ch2bet > 0``): the cerebral hemispheres (AAL 1-90
of one side), the cerebellum with the vermis (91-116) and the frontal (1-28), parietal (57-70), occipital
(43-54) and temporal (79-90) lobes of each side. Colin27's large structures: no training source of the
default model has them as targets (:mod:`volsam.train.open_data` trains on other images' large targets)."""

LARGE_DEFAULT_TARGETS: tuple[str, ...] = (
    "Brain", "Cerebrum_L", "Cerebrum_R", "Cerebellum", "Frontal_L", "Frontal_R", "Temporal_L", "Temporal_R",
)
"""Targets of ``large-targets`` when no subset is asked for (0.1-1.5 L)."""


def _load_large_targets(labels: Sequence[str | int] | None) -> list[Case]:
    """Colin27's whole brain, hemispheres, cerebellum and lobes (:data:`LARGE_TARGETS`)."""
    files = _colin27_files("large-targets")
    unions = [Target(1000 + i, name, values=vals) for i, (name, vals) in enumerate(LARGE_TARGETS.items())]
    available = [_colin27_brain(files), *unions]
    return _colin27_case("colin27_large", files, available, labels, LARGE_DEFAULT_TARGETS, "large-targets")


def _load_colin27_thick(labels: Sequence[str | int] | None) -> list[Case]:
    """``colin27-aal`` at 6 mm slices (:func:`volsam.eval.thick.thick_colin27`); default targets: the
    held-out structures."""
    from volsam.eval.thick import thick_colin27
    from volsam.hub import cache_dir

    files = thick_colin27(_colin27_files("colin27-aal-thick"), cache_dir() / "datasets" / "colin27-aal-thick")
    available = [*_aal_names(files["aal.nii.txt"]), _colin27_brain(files)]
    return _colin27_case("colin27_thick", files, available, labels, COLIN27_HELD_OUT, "colin27-aal-thick")


_BUILTINS: dict[str, Callable[[Sequence[str | int] | None], list[Case]]] = {
    "colin27-aal": _load_colin27_aal,
    "large-targets": _load_large_targets,
    "colin27-aal-thick": _load_colin27_thick,
}

BUILTIN_DATASETS: tuple[str, ...] = tuple(_BUILTINS)
"""Names :func:`load_dataset` accepts besides paths."""


def load_dataset(spec: str | Path, labels: Sequence[str | int] | None = None) -> list[Case]:
    """Cases of a dataset (see the module docstring for the accepted ``spec`` forms).

    Args:
        spec: a built-in name, an nnU-Net raw folder, an ``images/`` + ``labels/`` folder or a CSV file.
        labels: targets to keep, by name or label value (in this order); None = all (built-ins: their
            default targets, :data:`COLIN27_DEFAULT_TARGETS`, :data:`LARGE_DEFAULT_TARGETS`,
            :data:`COLIN27_HELD_OUT` for the thick set; any AAL region or ``Brain`` may be asked for).
            Datasets without label names take values or ``label_<value>``.

    Returns:
        Cases sorted by label file name (one case for ``colin27-aal``). Cases whose files are missing or
        inconsistent are included; :func:`validate_case` says why they cannot be used.

    Raises:
        FileNotFoundError: ``spec`` is neither a built-in name nor an existing path, or a built-in's
            files are not installed.
        ValueError: unrecognised layout, bad CSV header, no cases, or an unknown label (the message
            lists the valid ones).
    """
    if isinstance(spec, str) and spec in _BUILTINS:
        return _BUILTINS[spec](labels)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {str(spec)!r}: no such file or folder, and not a built-in name ({', '.join(BUILTIN_DATASETS)})"
        )
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"dataset file {path} is not a .csv")
        cases = _load_csv(path, labels)
    elif (path / "labelsTr").is_dir():
        cases = _load_nnunet(path, labels)
    elif (path / "images").is_dir() and (path / "labels").is_dir():
        cases = _load_folder(path, labels)
    elif any(p.name.endswith(".npz") for p in path.iterdir()):
        targets = _select_nameless(labels, f"challenge folder {path.name}")
        cases = [Case(p.name[: -len(".npz")], p, p, targets) for p in sorted(path.glob("*.npz")) if p.is_file()]
    else:
        raise ValueError(
            f"{path}: not a dataset folder; expected an nnU-Net raw folder (imagesTr/, labelsTr/, "
            "dataset.json), images/ + labels/ subfolders, or CVPR 2025 challenge cases (*.npz)"
        )
    if not cases:
        raise ValueError(f"{path}: no label files found")
    return cases
