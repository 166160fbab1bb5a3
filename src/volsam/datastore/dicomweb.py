"""A datastore on a DICOMweb server (a PACS such as Orthanc, dcm4chee or Google Healthcare), through
``dicomweb-client``: QIDO-RS lists series, WADO-RS retrieves one into a local cache, STOW-RS stores a
DICOM-SEG of the final labels that references the source series.

Local cache (``cache_dir``; default ``$XDG_CACHE_HOME/volsam/dicomweb/<host_port>``)::

    series/<SeriesInstanceUID>/<SOPInstanceUID>.dcm     a retrieved series (complete, or absent)
    labels/final/<SeriesInstanceUID>.v2.nii.gz          saved labels, versioned (volsam.datastore.labels)
    labels/final/<SeriesInstanceUID>.v2.seg.dcm         the DICOM-SEG stored to the PACS for version 2
    .volsam-labels.json                                 the label index (records what was pushed)

Every label is saved locally before it is pushed, so a PACS that is down or slow loses nothing: the push
fails with a one-line :class:`~volsam.datastore.base.DatastoreError` and :meth:`DicomwebDatastore.push_pending`
sends it later. Credentials (HTTP basic, or a bearer token) come from the arguments, from the URL's
``user:password@`` part, or from ``VOLSAM_DICOMWEB_USER``/``VOLSAM_DICOMWEB_PASSWORD``/``VOLSAM_DICOMWEB_TOKEN``;
they travel only in the ``requests`` session's auth (dicomweb-client logs the headers it is handed, not
the session's), and every message names the URL without them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np
import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from volsam.atomic import atomic_path
from volsam.datastore.base import Datastore, DatastoreError, ImageEntry, PushError, SavedLabel
from volsam.datastore.labels import LabelStore
from volsam.datastore.series import check_series_geometry, write_dicom_series
from volsam.io import Volume, read_image, write_mask

__all__ = ["ENV_PASSWORD", "ENV_TOKEN", "ENV_USER", "DicomwebDatastore", "safe_url"]

ENV_USER = "VOLSAM_DICOMWEB_USER"
ENV_PASSWORD = "VOLSAM_DICOMWEB_PASSWORD"
ENV_TOKEN = "VOLSAM_DICOMWEB_TOKEN"
_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# Series of these modalities are not images to segment (segmentations, reports, presentation states...).
_NOT_IMAGES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "DOC", "REG", "OT_SEG"}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_STOW_BATCH = 64  # instances per STOW-RS request: bounds request size for big series
_SEG_LABEL = re.compile(r"^label (\d+)$")
_log = logging.getLogger(__name__)


def safe_url(url: str) -> str:
    """``url`` without a ``user:password@`` part, query or fragment (what messages may show)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class _BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer TOKEN`` added when a request is prepared (never shown by repr)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


def _value(item: dict[str, Any], tag: str, default: Any = None) -> Any:
    """First value of ``tag`` (8 hex digits) in a DICOM JSON object; PN values as their alphabetic text."""
    values = item.get(tag, {}).get("Value") or [default]
    v = values[0]
    return v.get("Alphabetic", default) if isinstance(v, dict) and "Alphabetic" in v else v


def _connection_reason(err: BaseException) -> str:
    text = str(err).lower()
    for needle, reason in (
        ("refused", "connection refused"),
        ("name or service not known", "host not found"),
        ("nodename nor servname", "host not found"),
        ("temporary failure in name resolution", "host not found"),
        ("timed out", "connection timed out"),
        ("ssl", "TLS handshake failed"),
        ("reset by peer", "connection reset"),
    ):
        if needle in text:
            return reason
    return "connection failed"


def _default_cache(location: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    parts = urlsplit(location)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{parts.hostname}_{parts.port or ''}{parts.path}").strip("_")
    return base / "volsam" / "dicomweb" / name


class DicomwebDatastore(Datastore):
    """Series on a DICOMweb server, retrieved into ``cache_dir``; labels saved there and pushed as DICOM-SEG.

    Args:
        url: the DICOMweb root, e.g. ``http://pacs:8042/dicom-web`` (Orthanc's plugin).
        user, password: HTTP basic credentials; token: a bearer token (not both).
        timeout: seconds to wait for the server to connect or to send the next bytes of a response.
        retries: extra tries after a refused connection, a timeout or a 408/429/503/504 answer, after
            0.5 s, 1 s, ... (dicomweb-client's backoff): a PACS that is down fails after ~0.5 s with the
            default, one that accepts but never answers after (retries + 1) * timeout + the waits.
        cache_dir: where series are retrieved and labels saved (see the module docstring).
    """

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 1,
        cache_dir: str | Path | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// DICOMweb URL, got {safe_url(url)!r}")
        if parts.username is not None and user is None:
            user, password = unquote(parts.username), unquote(parts.password or "")
        user = user if user is not None else os.environ.get(ENV_USER)
        password = password if password is not None else os.environ.get(ENV_PASSWORD)
        token = token if token is not None else os.environ.get(ENV_TOKEN)
        if token and user:
            raise ValueError("give either a user and password or a bearer token, not both")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 s, got {timeout}")
        self.location = safe_url(url)
        self.timeout = float(timeout)
        self._secrets = [s for s in (password, token) if s]
        session = requests.Session()
        if token:
            session.auth = _BearerAuth(token)
        elif user:
            session.auth = requests.auth.HTTPBasicAuth(user, password or "")
        self.client = DICOMwebClient(self.location, session=session, timeout=self.timeout)
        self.client.set_http_retry_params(retry=retries > 0, max_attempts=retries + 1, wait_exponential_multiplier=250)
        self.cache = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache(self.location)
        self.labels = LabelStore(self.cache)

    def __repr__(self) -> str:
        return f"DicomwebDatastore({self.location!r}, cache_dir={str(self.cache)!r})"

    # ------------------------------------------------------------------ errors
    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return " ".join(text.split())

    @contextlib.contextmanager
    def _remote(self, what: str) -> Iterator[None]:
        """Turn a failed request into a one-line DatastoreError naming the URL (no credentials)."""
        try:
            yield
        except requests.exceptions.HTTPError as err:
            resp = err.response
            status = f"HTTP {resp.status_code} {resp.reason}" if resp is not None else "HTTP error"
            hint = ""
            if resp is not None and resp.status_code in (401, 403):
                hint = (" (check the credentials: --dicomweb-user/--dicomweb-password or --dicomweb-token, or "
                        f"{ENV_USER}/{ENV_PASSWORD}/{ENV_TOKEN})")
            raise DatastoreError(self._scrub(f"DICOMweb {what} at {self.location} failed: {status}{hint}")) from None
        except requests.exceptions.Timeout:
            raise DatastoreError(
                f"DICOMweb server {self.location} did not answer {what} within {self.timeout:g} s (timeout)"
            ) from None
        except requests.exceptions.ConnectionError as err:
            raise DatastoreError(
                f"DICOMweb server {self.location} unreachable ({_connection_reason(err)}) during {what}"
            ) from None
        except requests.exceptions.RequestException as err:
            message = f"DICOMweb {what} at {self.location} failed: {type(err).__name__}"
            raise DatastoreError(self._scrub(message)) from None

    # ------------------------------------------------------------------ QIDO-RS
    def _series(self, study: str | None = None, **filters: Any) -> list[dict[str, Any]]:
        fields = ["PatientName", "PatientID", "StudyDate", "StudyDescription", "SeriesDescription",
                  "NumberOfSeriesRelatedInstances", "SeriesDate", "SeriesTime"]
        with self._remote("series search (QIDO-RS)"):
            return self.client.search_for_series(
                study, fields=fields, search_filters=filters or None, get_remaining=True
            )

    def list_studies(self) -> list[dict[str, Any]]:
        """Studies on the server (QIDO-RS): ``study_instance_uid``, ``patient_name``, ``patient_id``,
        ``study_date``, ``description``."""
        with self._remote("study search (QIDO-RS)"):
            found = self.client.search_for_studies(
                fields=["PatientName", "PatientID", "StudyDate", "StudyDescription"], get_remaining=True
            )
        return [
            {"study_instance_uid": _value(s, "0020000D"), "patient_name": _value(s, "00100010", ""),
             "patient_id": _value(s, "00100020", ""), "study_date": _value(s, "00080020", ""),
             "description": _value(s, "00081030", "")}
            for s in found
        ]

    def _seg_references(self, study: str | None = None) -> dict[str, list[dict[str, str]]]:
        """Source series UID -> the SEG instances on the server (of ``study``, or all) that reference it,
        oldest first (by content date and time)."""
        refs: dict[str, list[dict[str, str]]] = {}
        for seg in self._series(study, Modality="SEG"):
            seg_study, series = _value(seg, "0020000D"), _value(seg, "0020000E")
            with self._remote("SEG metadata retrieval (WADO-RS)"):
                instances = self.client.retrieve_series_metadata(seg_study, series)
            for inst in instances:
                for ref in inst.get("00081115", {}).get("Value", []):
                    source = _value(ref, "0020000E")
                    if source:
                        refs.setdefault(source, []).append({
                            "study_instance_uid": seg_study,
                            "series_instance_uid": series,
                            "sop_instance_uid": _value(inst, "00080018"),
                            "when": f"{_value(inst, '00080023', '')}{_value(inst, '00080033', '')}",
                        })
        for found in refs.values():
            found.sort(key=lambda r: r["when"])
        return refs

    def list_images(self) -> list[ImageEntry]:
        versions = self.labels.all_versions()
        segs = self._seg_references()
        entries = []
        for s in self._series():
            modality = _value(s, "00080060", "")
            uid = _value(s, "0020000E")
            if modality in _NOT_IMAGES or not uid or not _UID.match(uid):
                continue
            name = " ".join(
                str(v) for v in (_value(s, "00100010", ""), _value(s, "00080020", ""), modality,
                                 _value(s, "0008103E", "")) if v
            )
            meta = {
                "study_instance_uid": _value(s, "0020000D"),
                "modality": modality,
                "instances": _value(s, "00201209"),
                "remote_segs": len(segs.get(uid, [])),
            }
            entries.append(ImageEntry(uid, name or uid, versions.get(uid, {}), meta))
        return entries

    def _study_of(self, series_uid: str) -> str:
        if not isinstance(series_uid, str) or not _UID.match(series_uid):
            raise ValueError(f"expected a SeriesInstanceUID (digits and dots), got {series_uid!r}")
        found = self._series(SeriesInstanceUID=series_uid)
        if not found:
            raise KeyError(f"no series {series_uid} at {self.location}")
        return str(_value(found[0], "0020000D"))

    # ------------------------------------------------------------------ WADO-RS
    def series_dir(self, series_uid: str) -> Path:
        return self.cache / "series" / series_uid

    def pull(self, series_uid: str, *, refresh: bool = False) -> Path:
        """Retrieve a series into the cache (WADO-RS) and return its folder; a cached series is reused
        without asking the server (so work continues offline) unless ``refresh``. Checks the series is a
        regular grid before it is kept (:class:`SeriesGeometryError` otherwise); a failed retrieval leaves
        no partial folder."""
        if not isinstance(series_uid, str) or not _UID.match(series_uid):
            raise ValueError(f"expected a SeriesInstanceUID (digits and dots), got {series_uid!r}")
        final = self.series_dir(series_uid)
        if final.is_dir() and not refresh:
            return final
        study = self._study_of(series_uid)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{series_uid}.", suffix=".partial", dir=final.parent))
        try:
            headers = []
            with self._remote(f"retrieval of series {series_uid} (WADO-RS)"):
                for n, ds in enumerate(self.client.iter_series(study, series_uid)):
                    if str(ds.SOPClassUID) == _SEG_SOP_CLASS:
                        raise ValueError(f"series {series_uid} is a segmentation (SEG), not an image to segment")
                    sop = str(getattr(ds, "SOPInstanceUID", ""))
                    name = f"{sop}.dcm" if _UID.match(sop) else f"instance{n:05d}.dcm"
                    ds.save_as(tmp / name, enforce_file_format=True)
                    headers.append(_geometry_header(ds))
            if not headers:
                raise DatastoreError(f"series {series_uid} at {self.location} has no instances")
            check_series_geometry(headers, f"series {series_uid}")
            if final.is_dir():  # refresh, or another thread got there first
                shutil.rmtree(final)
            try:
                tmp.rename(final)
            except OSError:
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def get_image(self, image_id: str, *, max_voxels: int | None = None) -> Volume:
        return read_image(self.pull(image_id), max_voxels=max_voxels)

    # ------------------------------------------------------------------ labels
    def _source_uids(self, volume: Volume) -> list[str]:
        return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in volume.meta["dicom_files"]]

    def _seg_label_map(self, seg_ds: Dataset, volume: Volume) -> np.ndarray:
        """A DICOM-SEG instance as a label map (X, Y, Z) on ``volume``'s grid (segment labels ``label N``
        keep value N, other segments their segment number)."""
        import highdicom as hd

        seg = hd.seg.Segmentation.from_dataset(seg_ds)
        numbers = sorted(int(n) for n in seg.segment_numbers)
        try:
            frames = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=self._source_uids(volume),
                segment_numbers=numbers,
                combine_segments=True,
                skip_overlap_checks=True,
            )
        except (KeyError, ValueError, RuntimeError) as err:
            raise DatastoreError(
                f"SEG {seg_ds.SOPInstanceUID} does not map onto the slices of its source series: {err}"
            ) from err
        lut = np.zeros(max(numbers) + 1, dtype=np.uint16)
        for n in numbers:
            m = _SEG_LABEL.match(str(seg.get_segment_description(n).segment_label))
            lut[n] = int(m.group(1)) if m else n
        lm = lut[np.asarray(frames)].transpose(2, 1, 0)
        return lm.astype(np.uint8) if lm.max(initial=0) <= 255 else lm

    def get_label(self, image_id: str, kind: str = "final") -> tuple[np.ndarray, int] | None:
        """The latest ``kind`` label; for ``final``, a SEG on the server newer than anything saved or
        pulled here (another workstation's save) is pulled first and saved as a new local version. A
        server that cannot be reached then is logged, and the labels saved here are used."""
        if kind == "final":
            try:
                self._pull_newer_seg(image_id)
            except DatastoreError as err:
                # Offline: the labels saved here are still the work to continue from.
                _log.warning("%s; continuing from the labels saved in %s", err, self.cache)
        return self.labels.load(image_id, kind)

    def _pull_newer_seg(self, series_uid: str) -> None:
        refs = self._seg_references(self._study_of(series_uid)).get(series_uid, [])
        if not refs:
            return
        newest = refs[-1]
        index = self.labels.read_index()["images"].get(series_uid, {}).get("final", {})
        known = {v.get("seg_sop_instance_uid") for v in index.get("versions", [])}
        if newest["sop_instance_uid"] in known:
            return
        volume = self.get_image(series_uid)
        with self._remote(f"retrieval of SEG {newest['sop_instance_uid']} (WADO-RS)"):
            seg_ds = self.client.retrieve_instance(
                newest["study_instance_uid"], newest["series_instance_uid"], newest["sop_instance_uid"]
            )
        lm = self._seg_label_map(seg_ds, volume)
        self.labels.save(
            series_uid, lm, volume, "final", force=True,
            extra={"source": "pacs", "seg_sop_instance_uid": newest["sop_instance_uid"],
                   "seg_series_instance_uid": newest["series_instance_uid"], "pushed": True},
        )

    def save_label(
        self,
        image_id: str,
        label_map: np.ndarray,
        kind: str = "final",
        *,
        base_version: int | None = None,
        force: bool = False,
        reference: Volume | None = None,
        push: bool = True,
    ) -> SavedLabel:
        """See :meth:`Datastore.save_label`. A ``final`` label is then written as DICOM-SEG beside it and
        stored to the server (unless ``push`` is False); ``reference``: the image already read."""
        ref = reference if reference is not None else self.get_image(image_id)
        saved = self.labels.save(image_id, label_map, ref, kind, base_version=base_version, force=force)
        if kind != "final" or not push:
            return saved
        seg_path = saved.path.with_name(f"{image_id}.v{saved.version}.seg.dcm")
        try:
            write_mask(np.asarray(label_map), ref, seg_path, overwrite_ok=False)
            _describe_seg(seg_path, f"volsam final v{saved.version}")
        except (ValueError, OSError, RuntimeError) as err:
            raise PushError(
                f"label saved locally as version {saved.version} ({saved.path}); writing its DICOM-SEG failed: "
                f"{' '.join(str(err).split())}",
                saved,
            ) from err
        seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
        self.labels.annotate(image_id, kind, saved.version, seg_file=str(seg_path.relative_to(self.cache)),
                             seg_sop_instance_uid=str(seg.SOPInstanceUID),
                             seg_series_instance_uid=str(seg.SeriesInstanceUID), pushed=False)
        try:
            self._stow([seg_path], f"storage of the DICOM-SEG of {image_id} v{saved.version} (STOW-RS)")
        except DatastoreError as err:
            raise PushError(
                f"label saved locally as version {saved.version} ({saved.path}); {err}; "
                "`volsam datastore push` sends it later",
                saved,
            ) from None
        self.labels.annotate(image_id, kind, saved.version, pushed=True)
        remote = {"seg_series_instance_uid": str(seg.SeriesInstanceUID),
                  "seg_sop_instance_uid": str(seg.SOPInstanceUID), "url": self.location}
        return SavedLabel(saved.image_id, kind, saved.version, saved.path, remote)

    def push_pending(self) -> list[SavedLabel]:
        """Store every final label saved here whose DICOM-SEG has not reached the server yet."""
        done = []
        for image_id, rec in self.labels.read_index()["images"].items():
            for v in rec.get("final", {}).get("versions", []):
                if v.get("pushed") is False and v.get("seg_file"):
                    path = self.cache / v["seg_file"]
                    self._stow([path], f"storage of the DICOM-SEG of {image_id} v{v['version']} (STOW-RS)")
                    self.labels.annotate(image_id, "final", int(v["version"]), pushed=True)
                    done.append(SavedLabel(image_id, "final", int(v["version"]), self.cache / v["file"],
                                           {"seg_sop_instance_uid": v["seg_sop_instance_uid"], "url": self.location}))
        return done

    # ------------------------------------------------------------------ STOW-RS
    def _stow(self, files: Sequence[Path], what: str) -> None:
        for start in range(0, len(files), _STOW_BATCH):
            batch = [pydicom.dcmread(f) for f in files[start : start + _STOW_BATCH]]
            with self._remote(what):
                response = self.client.store_instances(batch)
            failed = getattr(response, "FailedSOPSequence", None) if response is not None else None
            if failed:
                raise DatastoreError(
                    f"DICOMweb {what} at {self.location}: the server refused {len(failed)} instance(s), e.g. "
                    f"{failed[0].ReferencedSOPInstanceUID} (failure reason {getattr(failed[0], 'FailureReason', '?')})"
                )

    def add_image(self, source: str | Path) -> ImageEntry:
        """STOW a DICOM series folder, or an image file written as a DICOM series first (CT if its values
        look like HU, else MR; :func:`~volsam.datastore.series.write_dicom_series`). Returns its entry."""
        src = Path(source).expanduser()
        with contextlib.ExitStack() as stack:
            if src.is_dir():
                files = [f for f in sorted(src.iterdir()) if f.is_file() and not f.name.startswith(".")]
            else:
                vol = read_image(src, dtype=None)
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="volsam-stow-")))
                modality = "CT" if float(np.min(vol.array)) < -500 else "MR"
                files = write_dicom_series(vol, tmp, modality=modality, series_description=src.name)
            headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
            if not headers:
                raise ValueError(f"expected DICOM files in {src}, found none")
            uids = {str(h.SeriesInstanceUID) for h in headers}
            if len(uids) != 1:
                raise ValueError(f"expected one DICOM series in {src}, found {len(uids)}")
            check_series_geometry(headers, f"DICOM series {src}")
            self._stow(files, f"storage of {len(files)} instances (STOW-RS)")
        uid = uids.pop()
        meta = {"study_instance_uid": str(headers[0].StudyInstanceUID)}
        return ImageEntry(uid, src.name, self.labels.versions(uid), meta)


def _geometry_header(ds: Dataset) -> Dataset:
    """What :func:`check_series_geometry` reads, copied so a retrieved instance's pixels can be freed."""
    out = Dataset()
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "Rows", "Columns", "PixelSpacing"):
        if key in ds:
            setattr(out, key, ds.data_element(key).value)
    return out


def _describe_seg(path: Path, description: str) -> None:
    """Give a written SEG a series description and date/time (PACS lists and orders series by them)."""
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = description
    now = time.gmtime()
    ds.SeriesDate, ds.SeriesTime = time.strftime("%Y%m%d", now), time.strftime("%H%M%S", now)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)

