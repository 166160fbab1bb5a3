"""The DICOMweb datastore against a real Orthanc (tests/datastore/conftest.py): a real head series stored,
listed over QIDO-RS, retrieved over WADO-RS, segmented in a Session, saved -> a DICOM-SEG in Orthanc that
references the source series and lies on its slices; resume on a fresh workstation from the PACS; and the
failures: a PACS down or silent, wrong credentials, a push that fails after the local save, a series with
a missing slice. Credentials appear in no message and no log record."""

from __future__ import annotations

import logging
import socket
import threading

import numpy as np
import pydicom
import pytest

from volsam import Session
from volsam.datastore import (
    DatastoreError,
    LabelConflictError,
    PushError,
    SeriesGeometryError,
    open_datastore,
    restore_labels,
)
from volsam.datastore.series import write_dicom_series

dicomweb_client = pytest.importorskip("dicomweb_client")
hd = pytest.importorskip("highdicom")

from tests.datastore.conftest import free_port  # noqa: E402
from volsam.datastore.dicomweb import ENV_PASSWORD, ENV_TOKEN, ENV_USER, DicomwebDatastore  # noqa: E402

CLICK = (20, 28, 12)  # left thalamus in the head crop (voxels)


def _client(orthanc) -> dicomweb_client.DICOMwebClient:
    """A plain dicomweb-client, independent of the code under test, to look into Orthanc."""
    import requests

    s = requests.Session()
    s.auth = (orthanc.user, orthanc.password)
    return dicomweb_client.DICOMwebClient(orthanc.dicomweb, session=s)


@pytest.fixture
def series(tmp_path, head_crop) -> tuple[str, list]:
    files = write_dicom_series(head_crop, tmp_path / "mr", modality="MR", series_description="head crop")
    return str(pydicom.dcmread(files[0]).SeriesInstanceUID), files


def _seg_instances(orthanc, source_uid: str) -> list[pydicom.Dataset]:
    client = _client(orthanc)
    found = []
    for s in client.search_for_series(search_filters={"Modality": "SEG"}):
        study, uid = s["0020000D"]["Value"][0], s["0020000E"]["Value"][0]
        for ds in client.retrieve_series(study, uid):
            if ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source_uid:
                found.append(ds)
    return found


def test_orthanc_round_trip(orthanc, series, tmp_path, monkeypatch):
    uid, files = series
    monkeypatch.setenv(ENV_USER, orthanc.user)  # credentials from the environment
    monkeypatch.setenv(ENV_PASSWORD, orthanc.password)
    store = open_datastore(orthanc.dicomweb, cache_dir=tmp_path / "cache")
    entry = store.add_image(tmp_path / "mr")  # STOW-RS of the series
    assert entry.id == uid

    listed = {e.id: e for e in store.list_images()}  # QIDO-RS
    assert listed[uid].status == "none" and listed[uid].meta["modality"] == "MR"
    assert listed[uid].meta["instances"] == len(files)

    vol = store.get_image(uid)  # WADO-RS into the cache
    source = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    cached = sorted((tmp_path / "cache" / "series" / uid).iterdir())
    assert {p.stem for p in cached} == source
    session = Session()
    session.set_image(vol)
    session.add_click(CLICK)
    lm = session.label_map.copy()
    assert lm.any()
    saved = store.save_label(uid, lm, base_version=None, reference=vol)
    assert saved.version == 1 and saved.remote["url"] == orthanc.dicomweb

    (seg,) = _seg_instances(orthanc, uid)  # the SEG in Orthanc
    assert seg.Modality == "SEG" and seg.SOPInstanceUID == saved.remote["seg_sop_instance_uid"]
    seg = hd.seg.Segmentation.from_dataset(seg)
    # Its frames lie on the source slices: each frame derives from one source instance, at its position.
    positions = {str(pydicom.dcmread(f).SOPInstanceUID): [float(v) for v in pydicom.dcmread(f).ImagePositionPatient]
                 for f in files}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        src = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose(frame.PlanePositionSequence[0].ImagePositionPatient, positions[src], atol=1e-3)
    slice_uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in vol.meta["dicom_files"]]
    frames = seg.get_pixels_by_source_instance(slice_uids, combine_segments=True, skip_overlap_checks=True)
    got = np.asarray(frames).transpose(2, 1, 0) > 0
    want = lm > 0
    dice = 2 * np.count_nonzero(got & want) / (np.count_nonzero(got) + np.count_nonzero(want))
    assert dice == 1.0

    # The local cache and the label index agree with Orthanc.
    rec = store.labels.latest(uid)
    assert rec["version"] == 1 and rec["pushed"] is True
    assert rec["seg_sop_instance_uid"] == saved.remote["seg_sop_instance_uid"]
    assert pydicom.dcmread(store.cache / rec["seg_file"]).SOPInstanceUID == rec["seg_sop_instance_uid"]
    assert np.array_equal(store.get_label(uid)[0], lm)
    listed = {e.id: e for e in store.list_images()}
    assert listed[uid].status == "final" and listed[uid].meta["remote_segs"] == 1
    assert seg.SeriesInstanceUID not in listed  # a SEG is not offered as an image

    # A fresh workstation (empty cache) resumes from the PACS's SEG and continues.
    other = DicomwebDatastore(orthanc.dicomweb, cache_dir=tmp_path / "cache2")
    pulled, version = other.get_label(uid)
    assert version == 1 and np.array_equal(pulled, lm)
    resumed = Session()
    resumed.set_image(other.get_image(uid))
    restore_labels(resumed, pulled)
    assert np.array_equal(resumed.label_map, lm)
    resumed.add_click((CLICK[0] + 4, CLICK[1], CLICK[2]))
    assert other.save_label(uid, resumed.label_map, base_version=version).version == 2
    assert len(_seg_instances(orthanc, uid)) == 2  # the first SEG is kept: versions, not overwrites
    # The first workstation, which started from version 1, is told of the conflict; reopening pulls the
    # other workstation's SEG as its version 2.
    with pytest.raises(LabelConflictError, match="at version 1 but this save started from no saved label"):
        store.save_label(uid, lm, base_version=None, reference=vol)
    newer, v = store.get_label(uid)
    assert v == 2 and np.array_equal(newer, resumed.label_map)
    with pytest.raises(LabelConflictError, match="at version 2 but this save started from version 1"):
        store.save_label(uid, lm, base_version=1, reference=vol)


def _assert_clean(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text


@pytest.mark.parametrize("how", ["basic", "bearer"])
def test_pacs_down_one_line_no_credentials(tmp_path, caplog, how):
    port = free_port()  # nothing listens there
    creds = {"user": "alice", "password": "pw-Zq81x"} if how == "basic" else {"token": "tok-Zq81x"}
    caplog.set_level(logging.DEBUG)
    store = DicomwebDatastore(f"http://127.0.0.1:{port}/dicom-web", cache_dir=tmp_path, timeout=2, **creds)
    with pytest.raises(DatastoreError) as err:
        store.list_images()
    msg = str(err.value)
    assert msg == (f"DICOMweb server http://127.0.0.1:{port}/dicom-web unreachable (connection refused) "
                   "during series search (QIDO-RS)")
    _assert_clean(msg + repr(store) + caplog.text, "pw-Zq81x", "tok-Zq81x")


def test_credentials_in_url_are_used_and_hidden(orthanc, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    url = orthanc.dicomweb.replace("http://", f"http://{orthanc.user}:{orthanc.password}@")
    store = open_datastore(url, cache_dir=tmp_path)
    assert store.location == orthanc.dicomweb
    store.list_studies()  # authenticated
    bad = open_datastore(orthanc.dicomweb, user=orthanc.user, password="wrong-Zq81x", cache_dir=tmp_path)
    with pytest.raises(DatastoreError) as err:
        bad.list_images()
    msg = str(err.value)
    assert msg.startswith(f"DICOMweb series search (QIDO-RS) at {orthanc.dicomweb} failed: HTTP 401 Unauthorized")
    assert ENV_USER in msg and ENV_TOKEN in msg
    _assert_clean(msg + caplog.text + repr(store) + repr(bad), orthanc.password, "wrong-Zq81x")


def test_bearer_token_sent_only_in_the_prepared_request(tmp_path):
    import requests

    store = DicomwebDatastore("https://pacs.example/dicom-web", token="tok-Zq81x", cache_dir=tmp_path)
    req = store.client._session.prepare_request(requests.Request("GET", "https://pacs.example/dicom-web/studies"))
    assert req.headers["Authorization"] == "Bearer tok-Zq81x"
    assert "tok-Zq81x" not in repr(store.client._session.auth) + repr(store)
    with pytest.raises(ValueError, match="either a user and password or a bearer token"):
        DicomwebDatastore("https://pacs.example/dicom-web", token="t", user="u", cache_dir=tmp_path)


def test_silent_pacs_times_out(tmp_path):
    with socket.socket() as srv:  # accepts connections, never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        held: list[socket.socket] = []
        t = threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True)
        t.start()
        store = DicomwebDatastore(f"http://127.0.0.1:{port}/dicom-web", timeout=0.5, retries=0, cache_dir=tmp_path)
        with pytest.raises(DatastoreError) as err:
            store.list_images()
        for c in held:
            c.close()
    assert str(err.value) == (f"DICOMweb server http://127.0.0.1:{port}/dicom-web did not answer series search "
                              "(QIDO-RS) within 0.5 s (timeout)")


def test_push_failure_keeps_the_local_save_and_pushes_later(orthanc, series, tmp_path):
    uid, _ = series
    live = DicomwebDatastore(orthanc.dicomweb, user=orthanc.user, password=orthanc.password, cache_dir=tmp_path / "c")
    live.add_image(tmp_path / "mr")
    vol = live.get_image(uid)
    lm = np.zeros(vol.shape, np.uint8)
    lm[10:30, 10:30, 5:15] = 1
    down = DicomwebDatastore(f"http://127.0.0.1:{free_port()}/dicom-web", cache_dir=tmp_path / "c", retries=0)
    with pytest.raises(PushError) as err:
        down.save_label(uid, lm, reference=vol)
    assert err.value.saved.version == 1 and err.value.saved.path.is_file()
    msg = str(err.value)
    assert msg.startswith(f"label saved locally as version 1 ({tmp_path / 'c' / 'labels' / 'final' / uid}.v1.nii.gz);")
    assert "unreachable (connection refused)" in msg and "volsam datastore push" in msg
    assert live.labels.latest(uid)["pushed"] is False and np.array_equal(live.get_label(uid)[0], lm)
    assert _seg_instances(orthanc, uid) == []
    (sent,) = live.push_pending()  # the PACS is back
    assert sent.version == 1 and live.labels.latest(uid)["pushed"] is True
    (seg,) = _seg_instances(orthanc, uid)
    assert seg.SOPInstanceUID == live.labels.latest(uid)["seg_sop_instance_uid"]
    assert live.push_pending() == []


def test_series_with_a_missing_slice_is_refused(orthanc, series, tmp_path):
    uid, files = series
    client = _client(orthanc)
    client.store_instances([pydicom.dcmread(f) for i, f in enumerate(files) if i != 7])  # bypasses add_image's check
    store = DicomwebDatastore(orthanc.dicomweb, user=orthanc.user, password=orthanc.password, cache_dir=tmp_path / "c")
    with pytest.raises(SeriesGeometryError) as err:
        store.get_image(uid)
    assert str(err.value).startswith(f"series {uid}: 1 slice(s) missing between ")
    assert not (tmp_path / "c" / "series" / uid).exists()
    assert [p for p in (tmp_path / "c" / "series").iterdir()] == []  # no partial folder left
    with pytest.raises(KeyError, match=r"no series 1\.2\.3\.4"):
        store.get_image("1.2.3.4")
