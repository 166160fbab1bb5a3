"""Datastores of images and labels: a local folder or a DICOMweb server (a PACS), behind one interface
(:class:`Datastore`); see :mod:`volsam.datastore.base`.

``open_datastore("DIR")`` gives a :class:`~volsam.datastore.local.LocalDatastore`,
``open_datastore("http://host:8042/dicom-web")`` a :class:`~volsam.datastore.dicomweb.DicomwebDatastore`
(needs the ``datastore`` extra: ``dicomweb-client``; imported only then).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from volsam.datastore.base import (
    LABEL_KINDS,
    Datastore,
    DatastoreError,
    ImageEntry,
    LabelConflictError,
    PushError,
    SavedLabel,
    SeriesGeometryError,
    restore_labels,
)
from volsam.datastore.local import LocalDatastore

__all__ = [
    "LABEL_KINDS",
    "Datastore",
    "DatastoreError",
    "ImageEntry",
    "LabelConflictError",
    "LocalDatastore",
    "PushError",
    "SavedLabel",
    "SeriesGeometryError",
    "is_url",
    "open_datastore",
    "restore_labels",
]


def is_url(target: str | Path) -> bool:
    """Whether ``target`` names a DICOMweb server (http:// or https://) rather than a folder."""
    return str(target).lower().startswith(("http://", "https://"))


def open_datastore(target: str | Path, **options: Any) -> Datastore:
    """A datastore for a folder or a DICOMweb URL; ``options`` go to the backend (DICOMweb: ``user``,
    ``password``, ``token``, ``timeout``, ``retries``, ``cache_dir``; local: ``create``)."""
    if is_url(target):
        try:
            from volsam.datastore.dicomweb import DicomwebDatastore
        except ImportError as err:
            raise ImportError(
                f"a DICOMweb datastore needs dicomweb-client ({err}); pip install 'volsam[datastore]'"
            ) from err
        return DicomwebDatastore(str(target), **options)
    return LocalDatastore(target, **options)
