"""The datastore interface: images to label and their saved labels, wherever they live.

A datastore lists images (:class:`ImageEntry`), opens one as a :class:`~volsam.io.Volume`, and keeps two
kinds of label maps per image, after MONAI Label's datastore:

- ``original``: the model's first result, kept to measure how much a person changed it;
- ``final``: what a person saved.

Label maps are (X, Y, Z) integer arrays on the image's own grid (object n has label n, as
:attr:`volsam.session.Session.label_map`). A saved label is never overwritten in place: every save is a new
version (1, 2, ...). A save names the version it was based on (``base_version``, None for "started from no
saved label"); when that is older than the latest, the save is refused with :class:`LabelConflictError`
unless forced, so two people labelling one image never lose work silently.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from volsam.io import Volume
    from volsam.session import Session

__all__ = [
    "LABEL_KINDS",
    "Datastore",
    "DatastoreError",
    "ImageEntry",
    "LabelConflictError",
    "LabelKind",
    "PushError",
    "SavedLabel",
    "SeriesGeometryError",
    "restore_labels",
]

LabelKind = Literal["original", "final"]
LABEL_KINDS: tuple[str, ...] = ("original", "final")


class DatastoreError(RuntimeError):
    """A datastore operation failed (one-line message; never holds credentials)."""


class LabelConflictError(DatastoreError):
    """A save was based on an older label version than the latest saved one (save again with force)."""

    def __init__(self, message: str, latest: int, base: int | None) -> None:
        super().__init__(message)
        self.latest = latest
        self.base = base


class PushError(DatastoreError):
    """A label was saved locally (``saved``) but could not be stored to the PACS; push it again later."""

    def __init__(self, message: str, saved: SavedLabel) -> None:
        super().__init__(message)
        self.saved = saved


class SeriesGeometryError(DatastoreError, ValueError):
    """A DICOM series is not a regular 3D grid: a missing slice, uneven spacing, mixed orientations."""


@dataclass(frozen=True)
class ImageEntry:
    """One image of a datastore.

    ``id`` addresses it (local: the file name without extension; DICOMweb: the SeriesInstanceUID), ``name``
    is what a person reads, ``labels`` the latest saved version per kind (absent: none saved), ``meta``
    backend details (local: ``path``; DICOMweb: ``study_instance_uid``, ``modality``, ``instances``,
    ``remote_segs``: SEG series in the PACS that reference it).
    """

    id: str
    name: str
    labels: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``final`` when a person's label exists, ``original`` when only the model's, else ``none``."""
        if "final" in self.labels or self.meta.get("remote_segs"):
            return "final"
        return "original" if "original" in self.labels else "none"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "status": self.status, "labels": dict(self.labels),
                "meta": dict(self.meta)}


@dataclass(frozen=True)
class SavedLabel:
    """A saved label version: ``path`` is its local file (NIfTI on the image grid); ``remote`` what a
    DICOMweb backend stored (``seg_series_instance_uid``, ``seg_sop_instance_uid``, ``url``), empty when
    the label was not pushed."""

    image_id: str
    kind: str
    version: int
    path: Path
    remote: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "kind": self.kind, "version": self.version, "path": str(self.path),
                "remote": dict(self.remote)}


class Datastore(ABC):
    """Images and their labels behind one interface (:class:`~volsam.datastore.local.LocalDatastore`,
    :class:`~volsam.datastore.dicomweb.DicomwebDatastore`)."""

    #: Where the datastore lives, safe to show (a folder, or a URL without credentials).
    location: str

    @abstractmethod
    def list_images(self) -> list[ImageEntry]:
        """Every image with the latest version of each of its labels."""

    @abstractmethod
    def get_image(self, image_id: str, *, max_voxels: int | None = None) -> Volume:
        """The image as a Volume (DICOMweb: retrieved into the local cache first; a cached copy is reused).
        Raises KeyError for an unknown id, :class:`SeriesGeometryError` for an irregular series,
        :class:`~volsam.io.ImageReadError` for an unreadable one or one over ``max_voxels`` voxels."""

    @abstractmethod
    def get_label(self, image_id: str, kind: str = "final") -> tuple[np.ndarray, int] | None:
        """(label map (X, Y, Z), version) of the latest saved label of ``kind``, or None when there is none."""

    @abstractmethod
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
        """Save ``label_map`` (X, Y, Z, on the image grid) as a new version of ``kind``.

        ``reference``: the image as :meth:`get_image` gave it (saves reading or retrieving it again).

        ``base_version``: the version the edit started from (None: from no saved label). Raises
        :class:`LabelConflictError` when a newer version exists, unless ``force`` (the new version is then
        saved on top; nothing is overwritten). DICOMweb: saved locally first, then a ``final`` label is
        stored to the PACS as DICOM-SEG; a failed push raises :class:`PushError` (its ``saved``: the local
        version, kept).
        """

    @abstractmethod
    def add_image(self, source: str | Path) -> ImageEntry:
        """Put an image into the datastore (local: copy a file or DICOM folder in; DICOMweb: STOW a DICOM
        folder, or a NIfTI/NRRD/MHA image written as a DICOM series). Never replaces an existing image."""


def restore_labels(session: Session, label_map: np.ndarray) -> int:
    """Give ``session`` (its image already set) one object per label of ``label_map``, each started from
    its saved voxels (:meth:`~volsam.session.Session.set_initial_mask`), so that the next click continues
    from the saved work. Object n keeps label n; labels absent from the map stay empty objects. Returns the
    number of objects; the last one is current."""
    lm = np.asarray(label_map)
    session.reset()
    top = int(lm.max()) if lm.size else 0
    for label in range(1, top + 1):
        if label > 1:
            session.new_object()
        voxels = lm == label
        if voxels.any():
            session.set_initial_mask(voxels)
    return session.num_objects
