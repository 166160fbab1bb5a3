"""Versioned label files and their index, shared by both datastore backends.

Layout under ``root``::

    labels/original/NAME.v1.nii.gz      the model's first result, version 1
    labels/final/NAME.v1.nii.gz         a person's save, version 1
    labels/final/NAME.v2.nii.gz         the next save (v1 is kept)
    labels/final/NAME.v2.seg.dcm        DICOMweb only: the DICOM-SEG pushed for v2
    .volsam-labels.json                 the index: latest version and history per image and kind

A save writes its label file (atomically, never over an existing file), then rewrites the index
atomically (:mod:`volsam.atomic`), both under an exclusive lock (``fcntl.flock`` on ``.volsam-labels.lock``),
so concurrent saves from threads or processes get distinct versions and the conflict check sees every
earlier save. A crash between the two writes leaves an unindexed file that the next version number skips.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from volsam.atomic import atomic_path
from volsam.datastore.base import LABEL_KINDS, LabelConflictError, SavedLabel
from volsam.io import Volume, read_image, write_mask

__all__ = ["INDEX_NAME", "LabelStore", "check_image_id"]

INDEX_NAME = ".volsam-labels.json"
_LOCK_NAME = ".volsam-labels.lock"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# One lock per process for each index, besides the file lock: flock excludes other open files, and this
# keeps two threads of one process from interleaving even where flock is advisory-only or missing.
_THREAD_LOCKS: dict[Path, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def check_image_id(image_id: str) -> str:
    """``image_id`` when it is a safe file name stem (letters, digits, ``.``, ``_``, ``-``), else ValueError."""
    if not isinstance(image_id, str) or not _ID.match(image_id) or ".." in image_id:
        raise ValueError(f"expected an image id of letters, digits, '.', '_' or '-' (at most 128), got {image_id!r}")
    return image_id


def _check_kind(kind: str) -> str:
    if kind not in LABEL_KINDS:
        raise ValueError(f"expected a label kind in {LABEL_KINDS}, got {kind!r}")
    return kind


class LabelStore:
    """The versioned labels under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.index_path = self.root / INDEX_NAME

    # ------------------------------------------------------------------ locking and the index
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The index, read under the exclusive lock; written back atomically when the block succeeds."""
        self.root.mkdir(parents=True, exist_ok=True)
        key = self.index_path.resolve()
        with _THREAD_LOCKS_GUARD:
            tlock = _THREAD_LOCKS.setdefault(key, threading.Lock())
        with tlock, open(self.root / _LOCK_NAME, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                index = self.read_index()
                before = json.dumps(index, sort_keys=True)
                yield index
                if json.dumps(index, sort_keys=True) != before:
                    with atomic_path(self.index_path) as tmp:
                        tmp.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read_index(self) -> dict[str, Any]:
        """The index as saved: ``{"format": 1, "images": {id: {kind: {"latest": n, "versions": [...]}}}}``."""
        if not self.index_path.exists():
            return {"format": 1, "images": {}}
        try:
            index = json.loads(self.index_path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"label index {self.index_path} is unreadable: {err}") from err
        if not isinstance(index, dict) or not isinstance(index.get("images"), dict):
            raise ValueError(f"label index {self.index_path} is not a volsam label index")
        return index

    # ------------------------------------------------------------------ queries
    def latest(self, image_id: str, kind: str = "final") -> dict[str, Any] | None:
        """The index record of the latest version (``version``, ``file``, ``saved``, ...), or None."""
        rec = self.read_index()["images"].get(image_id, {}).get(_check_kind(kind))
        return rec["versions"][-1] if rec and rec.get("versions") else None

    def versions(self, image_id: str) -> dict[str, int]:
        """Latest version per kind that has one, e.g. ``{"original": 1, "final": 3}``."""
        rec = self.read_index()["images"].get(image_id, {})
        return {k: int(rec[k]["latest"]) for k in LABEL_KINDS if rec.get(k, {}).get("versions")}

    def all_versions(self) -> dict[str, dict[str, int]]:
        """:meth:`versions` of every image in the index."""
        images = self.read_index()["images"]
        return {
            i: {k: int(r[k]["latest"]) for k in LABEL_KINDS if r.get(k, {}).get("versions")} for i, r in images.items()
        }

    def path_of(self, record: dict[str, Any]) -> Path:
        return self.root / record["file"]

    def load(self, image_id: str, kind: str = "final") -> tuple[np.ndarray, int] | None:
        """(label map (X, Y, Z), version) of the latest version of ``kind``, or None."""
        rec = self.latest(image_id, kind)
        if rec is None:
            return None
        vol = read_image(self.path_of(rec), dtype=None)
        return np.asarray(vol.array), int(rec["version"])

    # ------------------------------------------------------------------ saving
    def save(
        self,
        image_id: str,
        label_map: np.ndarray,
        reference: Volume,
        kind: str = "final",
        *,
        base_version: int | None = None,
        force: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> SavedLabel:
        """Write ``label_map`` as the next version of ``kind`` (see :meth:`Datastore.save_label`)."""
        check_image_id(image_id)
        _check_kind(kind)
        lm = np.asarray(label_map)
        if lm.shape != reference.shape:
            raise ValueError(f"label map shape {lm.shape} differs from image {image_id}'s shape {reference.shape}")
        folder = self.root / "labels" / kind
        folder.mkdir(parents=True, exist_ok=True)
        with self._locked() as index:
            rec = index["images"].setdefault(image_id, {}).setdefault(kind, {"latest": 0, "versions": []})
            latest = int(rec["latest"])
            if kind == "final" and not force and latest and base_version != latest:
                based = "no saved label" if base_version is None else f"version {base_version}"
                raise LabelConflictError(
                    f"image {image_id}: its final label is at version {latest} but this save started from "
                    f"{based}; reopen the image to continue from version {latest}, or save with force "
                    "to keep both",
                    latest,
                    base_version,
                )
            version = max(latest, self._highest_file(folder, image_id)) + 1
            target = folder / f"{image_id}.v{version}.nii.gz"
            write_mask(lm, reference, target, overwrite_ok=False)
            entry: dict[str, Any] = {
                "version": version,
                "file": str(target.relative_to(self.root)),
                "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "base_version": base_version,
                "labels": [int(v) for v in np.unique(lm) if v != 0],
                **(extra or {}),
            }
            rec["versions"].append(entry)
            rec["latest"] = version
        return SavedLabel(image_id, kind, version, target)

    def annotate(self, image_id: str, kind: str, version: int, **fields: Any) -> None:
        """Add ``fields`` (e.g. what was pushed to a PACS) to a saved version's index record."""
        with self._locked() as index:
            for entry in index["images"].get(image_id, {}).get(kind, {}).get("versions", []):
                if int(entry["version"]) == version:
                    entry.update(fields)
                    return
        raise KeyError(f"no {kind} label version {version} of image {image_id}")

    @staticmethod
    def _highest_file(folder: Path, image_id: str) -> int:
        pattern = re.compile(rf"^{re.escape(image_id)}\.v(\d+)\.")
        found = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
        return max(found, default=0)
