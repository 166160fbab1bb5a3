"""Batch prompting: many images, each with its objects' clicks and boxes, one label map per image.

A prompts file is JSON or CSV. Relative paths in it are resolved against the file's folder. Coordinates
are voxel indices ``(i, j, k)`` of the image array (as ``volsam segment --point``), or world mm RAS+ with
``world``. Prompts of an object are applied in order: a box and clicks refine one object exactly as
:class:`~volsam.session.Session` does interactively.

JSON: a list of cases (or ``{"cases": [...]}``)::

    [{"image": "ct_001.nii.gz", "output": "ct_001_seg.nii.gz", "world": false,
      "objects": [{"label": 6, "box": [40, 52, 10, 88, 97, 41]},
                  {"label": 2, "prompts": [{"point": [120, 80, 30]}, {"negative": [130, 85, 31]}]}]}]

An object takes ``prompts`` (an ordered list of ``{"point": [i, j, k]}``, ``{"negative": [i, j, k]}``,
``{"box": [i0, j0, k0, i1, j1, k1]}``) and/or the shorthands ``box``, ``points`` and ``negative``
(applied in that order, after ``prompts``). ``label`` is the value the object gets in the label map
(default: its position, 1, 2, ...). ``output`` is optional (default: beside the image, ``NAME_mask.EXT``,
or in the output folder given to :func:`run_batch`).

CSV: one prompt per row, header ``image,label,prompt,i,j,k,i1,j1,k1`` (optional ``output`` and
``world`` columns); ``prompt`` is ``point``, ``negative`` or ``box`` (a box fills ``i1,j1,k1`` too). Rows of
an image form its case, rows of a label its object, in the order they appear.

Errors are per case: :func:`run_batch` records the reason and goes on with the next image.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BatchCase", "BatchObject", "BatchResult", "read_prompts", "run_batch"]

PROMPT_KINDS = ("point", "negative", "box")
_N = {"point": 3, "negative": 3, "box": 6}


@dataclass
class BatchObject:
    """One object: its label value and ordered prompts ``(kind, coordinates)``."""

    label: int
    prompts: list[tuple[str, tuple[float, ...]]] = field(default_factory=list)


@dataclass
class BatchCase:
    """One image to segment and where to write its label map (None: the default name)."""

    image: Path
    objects: list[BatchObject]
    output: Path | None = None
    world: bool = False


@dataclass
class BatchResult:
    """Outcome of one case: the written label map or the error, voxels per label, seconds."""

    image: Path
    output: Path | None = None
    voxels: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


def _coords(value: Any, kind: str, where: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != _N[kind] or not all(np.isfinite(vals)):
        raise ValueError(f"{where}: a {kind} needs {_N[kind]} numbers, got {value!r}")
    return vals


def _label(value: Any, default: int, where: str) -> int:
    if value is None or value == "":
        return default
    try:
        label = int(value)
    except (TypeError, ValueError):
        label = -1
    if not 1 <= label <= 65535 or str(value).strip() not in (str(label), f"{label}.0"):
        raise ValueError(f"{where}: label must be an integer 1..65535, got {value!r}")
    return label


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise ValueError(f"{where}: world must be true or false, got {value!r}")


def _resolve(base: Path, value: Any) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def _json_object(obj: Any, n: int, where: str) -> BatchObject:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: an object must be a JSON object with prompts, got {obj!r}")
    unknown = set(obj) - {"label", "prompts", "box", "points", "negative"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (expected label, prompts, box, points, negative)")
    out = BatchObject(_label(obj.get("label"), n, where))
    for p in obj.get("prompts", []):
        if not isinstance(p, dict) or len(p) != 1 or next(iter(p)) not in PROMPT_KINDS:
            raise ValueError(f"{where}: a prompt is one {{point|negative|box: [numbers]}} entry, got {p!r}")
        kind, value = next(iter(p.items()))
        out.prompts.append((kind, _coords(value, kind, where)))
    if "box" in obj:
        out.prompts.append(("box", _coords(obj["box"], "box", where)))
    for kind, key in (("point", "points"), ("negative", "negative")):
        for value in obj.get(key, []):
            out.prompts.append((kind, _coords(value, kind, where)))
    if not out.prompts:
        raise ValueError(f"{where}: the object has no prompt (give prompts, box, points or negative)")
    return out


def _read_json(path: Path) -> list[BatchCase]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict) and "cases" in data:
        data = data["cases"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of cases (or {{'cases': [...]}})")
    cases = []
    for n, c in enumerate(data, start=1):
        where = f"{path.name} case {n}"
        if not isinstance(c, dict) or "image" not in c or not isinstance(c.get("objects"), list) or not c["objects"]:
            raise ValueError(f"{where}: a case needs 'image' and a non-empty 'objects' list")
        objects = [_json_object(o, i, f"{where} object {i}") for i, o in enumerate(c["objects"], start=1)]
        output = _resolve(path.parent, c["output"]) if c.get("output") else None
        cases.append(BatchCase(_resolve(path.parent, c["image"]), objects, output, _flag(c.get("world", False), where)))
    return cases


def _read_csv(path: Path) -> list[BatchCase]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        need = ["image", "label", "prompt", "i", "j", "k"]
        if any(c not in fields for c in need):
            raise ValueError(f"{path}: the CSV header needs {','.join(need)} (+ i1,j1,k1 for boxes), got {fields}")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    cases: dict[Path, BatchCase] = {}
    for n, row in enumerate(rows, start=2):
        where = f"{path.name}:{n}"
        if not any(row.values()):
            continue
        kind = row["prompt"].lower()
        if kind not in PROMPT_KINDS:
            raise ValueError(f"{where}: prompt must be one of {', '.join(PROMPT_KINDS)}, got {row['prompt']!r}")
        keys = ["i", "j", "k"] + (["i1", "j1", "k1"] if kind == "box" else [])
        coords = _coords([row.get(k, "") for k in keys], kind, where)
        image = _resolve(path.parent, row["image"])
        case = cases.setdefault(image, BatchCase(image, [], None, _flag(row.get("world", ""), where)))
        if row.get("output"):
            case.output = _resolve(path.parent, row["output"])
        label = _label(row["label"], len(case.objects) + 1, where)
        obj = next((o for o in case.objects if o.label == label), None)
        if obj is None:
            obj = BatchObject(label)
            case.objects.append(obj)
        obj.prompts.append((kind, coords))
    return list(cases.values())


def read_prompts(path: str | Path) -> list[BatchCase]:
    """Cases of a prompts file (``.json`` or ``.csv``, see the module docstring); ValueError names the
    case or line that is wrong. Images are not read here."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompts file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"prompts file {path} must be .json or .csv")
    cases = _read_json(path) if suffix == ".json" else _read_csv(path)
    if not cases:
        raise ValueError(f"{path}: no cases")
    for c in cases:
        labels = [o.label for o in c.objects]
        if len(set(labels)) != len(labels):
            raise ValueError(f"{path}: {c.image.name} gives label {max(labels, key=labels.count)} to two objects")
    return cases


def _output_for(case: BatchCase, vol: Any, output_dir: Path | None) -> Path:
    from volsam.io import default_output_path

    if case.output is not None:
        return case.output
    default = default_output_path(vol)
    return output_dir / default.name if output_dir is not None else default


def _segment(session: Any, case: BatchCase, output_dir: Path | None, written: set[Path]) -> BatchResult:
    from volsam.io import write_mask

    session.set_image(case.image)
    vol = session.volume
    out = _output_for(case, vol, output_dir)
    if out.resolve() == case.image.resolve():
        raise ValueError(f"output {out} is the input image; inputs are never overwritten")
    if out.resolve() in written:  # two images with one default name in one output folder
        raise ValueError(f"output {out} was already written by an earlier case of the batch")
    for n, obj in enumerate(case.objects):
        if n > 0:
            session.new_object()
        for kind, coords in obj.prompts:
            if kind == "box":
                session.add_box(coords[:3], coords[3:], world=case.world)
            else:
                session.add_click(coords, positive=kind == "point", world=case.world)
    lm = np.asarray(session.label_map)
    # Session object n has value n; the file gives each object its own label value.
    lut = np.zeros(len(case.objects) + 1, dtype=np.uint16 if max(o.label for o in case.objects) > 255 else np.uint8)
    for n, obj in enumerate(case.objects, start=1):
        lut[n] = obj.label
    out_map = lut[lm]
    path = write_mask(out_map, vol, out)
    written.add(path.resolve())
    voxels = {o.label: int(np.count_nonzero(out_map == o.label)) for o in case.objects}
    return BatchResult(case.image, path, voxels)


def run_batch(
    cases: list[BatchCase],
    session: Any,
    *,
    output_dir: str | Path | None = None,
    on_case: Callable[[BatchResult], None] | None = None,
) -> list[BatchResult]:
    """Segment every case with one ``session`` (the model is loaded once) and write one label map each.

    A case that fails (unreadable image, a point outside the volume, an unwritable output) gets its
    error in its :class:`BatchResult`; the others still run. Two cases writing the same output are refused
    before anything runs.
    """
    out_dir = Path(output_dir) if output_dir is not None else None
    planned = [str(c.output.resolve()) for c in cases if c.output is not None]
    if len(set(planned)) != len(planned):
        raise ValueError("two cases of the prompts file write the same output file")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    written: set[Path] = set()
    results = []
    for case in cases:
        t0 = time.perf_counter()
        try:
            res = _segment(session, case, out_dir, written)
        except (OSError, ValueError) as e:
            res = BatchResult(case.image, error=" ".join(str(e).split()) or type(e).__name__)
        res.seconds = time.perf_counter() - t0
        results.append(res)
        if on_case is not None:
            on_case(res)
    return results
