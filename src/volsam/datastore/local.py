"""A datastore in a local folder: the images in it, their labels beside them (MONAI Label's layout)::

    DIR/
      case01.nii.gz             an image (NIfTI, NRRD, MetaImage)
      case02/                   an image: a DICOM series folder
      labels/original/case01.v1.nii.gz
      labels/final/case01.v3.nii.gz
      .volsam-labels.json       the label index (see :mod:`volsam.datastore.labels`)

An image's id is its file name without the extension (a DICOM folder: the folder name). Images are only
read, never written; labels are versioned and never overwritten (:class:`~volsam.datastore.labels.LabelStore`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from volsam.datastore.base import Datastore, ImageEntry, SavedLabel
from volsam.datastore.labels import LabelStore, check_image_id
from volsam.datastore.series import check_series_files
from volsam.io import Volume, read_image

__all__ = ["IMAGE_SUFFIXES", "LocalDatastore"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_RESERVED = {"labels"}


def _stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _is_dicom_folder(path: Path) -> bool:
    """A folder holding at least one file with the DICOM preamble magic (``DICM`` at byte 128)."""
    for f in sorted(path.iterdir())[:64]:
        if f.is_file():
            try:
                with open(f, "rb") as fh:
                    fh.seek(128)
                    if fh.read(4) == b"DICM":
                        return True
            except OSError:
                continue
    return False


class LocalDatastore(Datastore):
    """Images and versioned labels in the folder ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path, *, create: bool = False) -> None:
        self.root = Path(root).expanduser()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        if not self.root.is_dir():
            raise ValueError(f"expected a datastore folder, {self.root} is not a directory")
        self.location = str(self.root)
        self.labels = LabelStore(self.root)

    def __repr__(self) -> str:
        return f"LocalDatastore({self.location!r})"

    def _images(self) -> dict[str, Path]:
        found: dict[str, list[Path]] = {}
        for p in sorted(self.root.iterdir()):
            if p.name.startswith(".") or p.name in _RESERVED:
                continue
            stem = _stem(p.name) if p.is_file() else (p.name if p.is_dir() and _is_dicom_folder(p) else None)
            if stem is not None:
                found.setdefault(stem, []).append(p)
        images: dict[str, Path] = {}
        for stem, paths in found.items():
            # Two files with one stem (case.nii.gz and case.nrrd) keep their full names as ids.
            for p in paths:
                image_id = stem if len(paths) == 1 else p.name
                try:
                    images[check_image_id(image_id)] = p
                except ValueError:
                    continue  # a name that cannot be a label file stem (spaces, ...) is not offered
        return images

    def path_of(self, image_id: str) -> Path:
        """The image file (or DICOM folder) of ``image_id``; KeyError when the folder has none."""
        images = self._images()
        if image_id not in images:
            raise KeyError(f"no image {image_id!r} in datastore {self.location}")
        return images[image_id]

    def list_images(self) -> list[ImageEntry]:
        versions = self.labels.all_versions()
        return [
            ImageEntry(image_id, path.name, versions.get(image_id, {}), {"path": str(path)})
            for image_id, path in self._images().items()
        ]

    def get_image(self, image_id: str, *, max_voxels: int | None = None) -> Volume:
        path = self.path_of(image_id)
        if path.is_dir():
            check_series_files([f for f in sorted(path.iterdir()) if f.is_file()], f"DICOM series {path}")
        return read_image(path, max_voxels=max_voxels)

    def get_label(self, image_id: str, kind: str = "final") -> tuple[np.ndarray, int] | None:
        return self.labels.load(image_id, kind)

    def save_label(
        self,
        image_id: str,
        label_map: np.ndarray,
        kind: str = "final",
        *,
        base_version: int | None = None,
        force: bool = False,
        reference: Volume | None = None,
    ) -> SavedLabel:
        """See :meth:`Datastore.save_label`; ``reference``: the image already read (saves reading it again)."""
        ref = reference if reference is not None else self.get_image(image_id)
        return self.labels.save(image_id, label_map, ref, kind, base_version=base_version, force=force)

    def add_image(self, source: str | Path) -> ImageEntry:
        """Copy an image file (or a DICOM series folder) into the datastore; refuses to replace one."""
        src = Path(source).expanduser()
        if src.is_dir():
            if not _is_dicom_folder(src):
                raise ValueError(f"expected an image file or a DICOM series folder, {src} holds no DICOM file")
            stem: str | None = src.name
        else:
            stem = _stem(src.name)
            if src.name.lower().endswith((".nhdr", ".mhd")):
                raise ValueError(f"{src} names a separate data file; convert it to .nrrd or .mha to add it")
            if stem is None or not src.is_file():
                raise ValueError(f"expected an image file ({', '.join(IMAGE_SUFFIXES)}) or a DICOM folder, got {src}")
        check_image_id(stem)
        if stem in self._images():
            raise FileExistsError(f"datastore {self.location} already holds an image {stem!r}")
        target = self.root / src.name
        if target.exists():
            raise FileExistsError(f"refusing to overwrite {target}")
        tmp = self.root / f".{src.name}.adding"
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copyfile(src, tmp)
        tmp.rename(target)  # a reader never sees a half-copied image
        return ImageEntry(stem, target.name, {}, {"path": str(target)})
