"""The local-folder datastore: a round trip through a real Session (open, click, save original and final),
resume in a new datastore and session (as after a server restart), versions that are never overwritten,
explicit conflicts between two sessions, concurrent saves, and refusal of an incomplete DICOM series."""

from __future__ import annotations

import hashlib
import json
import threading

import nibabel as nib
import numpy as np
import pytest

from volsam import Session
from volsam.datastore import LabelConflictError, LocalDatastore, SeriesGeometryError, open_datastore, restore_labels
from volsam.datastore.labels import INDEX_NAME
from volsam.datastore.series import write_dicom_series

CLICK = (20, 28, 12)  # left thalamus in the head crop (voxels)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store(tmp_path, head_crop) -> LocalDatastore:
    root = tmp_path / "ds"
    root.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(head_crop.array), head_crop.affine), root / "head.nii.gz")
    return open_datastore(root)


@pytest.fixture(scope="module")
def session() -> Session:
    return Session()  # the shipped default model


def test_local_round_trip_and_resume(store, session, tmp_path):
    (entry,) = store.list_images()
    assert (entry.id, entry.status, entry.labels) == ("head", "none", {})
    image_before = _sha(store.root / "head.nii.gz")

    vol = store.get_image("head")
    session.set_image(vol)
    session.add_click(CLICK)
    first = session.label_map.copy()
    assert first.any()
    orig = store.save_label("head", first, "original", reference=vol)
    session.add_click((CLICK[0] + 3, CLICK[1], CLICK[2]))
    final = session.label_map.copy()
    saved = store.save_label("head", final, base_version=None, reference=vol)
    assert (orig.version, saved.version) == (1, 1)
    assert saved.path == store.root / "labels" / "final" / "head.v1.nii.gz"
    assert orig.path == store.root / "labels" / "original" / "head.v1.nii.gz"
    index = json.loads((store.root / INDEX_NAME).read_text())
    assert index["images"]["head"]["final"]["latest"] == 1
    assert index["images"]["head"]["final"]["versions"][0]["file"] == "labels/final/head.v1.nii.gz"
    assert _sha(store.root / "head.nii.gz") == image_before  # the image is never written
    (entry,) = store.list_images()
    assert entry.status == "final" and entry.labels == {"original": 1, "final": 1}

    # A restart: a new datastore object on the folder and a new session continue from the saved label.
    again = LocalDatastore(store.root)
    lm, version = again.get_label("head")
    assert version == 1 and np.array_equal(lm, final)
    assert np.array_equal(again.get_label("head", "original")[0], first)
    resumed = Session()
    resumed.set_image(again.get_image("head"))
    assert restore_labels(resumed, lm) == 1
    assert np.array_equal(resumed.label_map, final)  # the saved work is the starting point
    resumed.add_click((CLICK[0], CLICK[1] + 3, CLICK[2]), positive=False)
    edited = resumed.label_map.copy()
    assert not np.array_equal(edited, final)
    v2 = again.save_label("head", edited, base_version=version)
    assert v2.version == 2
    v1_file = store.root / "labels" / "final" / "head.v1.nii.gz"
    assert np.array_equal(nib.load(v1_file).get_fdata().astype(np.uint8), final)  # v1 kept as it was
    assert np.array_equal(again.get_label("head")[0], edited)


def test_restore_keeps_object_labels(store, session):
    vol = store.get_image("head")
    lm = np.zeros(vol.shape, np.uint8)
    lm[10:20, 10:20, 5:10] = 1
    lm[40:50, 40:50, 10:15] = 3  # object 2 empty: object 3 keeps label 3
    session.set_image(vol)
    assert restore_labels(session, lm) == 3
    assert np.array_equal(session.label_map, lm) and session.current_label == 3


def test_two_sessions_conflict_then_force(store, head_crop):
    vol = store.get_image("head")
    a = np.zeros(vol.shape, np.uint8)
    a[5:15, 5:15, 2:8] = 1
    b = np.zeros(vol.shape, np.uint8)
    b[30:40, 30:40, 10:20] = 1
    # Both opened the image before anything was saved; A saves first.
    assert store.save_label("head", a, base_version=None).version == 1
    with pytest.raises(LabelConflictError) as err:
        store.save_label("head", b, base_version=None)
    msg = str(err.value)
    assert msg.startswith("image head: its final label is at version 1 but this save started from no saved label")
    assert "force" in msg and "\n" not in msg and err.value.latest == 1
    assert store.save_label("head", b, base_version=1).version == 2  # B reopened and saved on top: fine
    with pytest.raises(LabelConflictError, match="at version 2 but this save started from version 1"):
        store.save_label("head", a, base_version=1)
    assert store.save_label("head", a, base_version=1, force=True).version == 3
    files = sorted(p.name for p in (store.root / "labels" / "final").iterdir())
    assert files == ["head.v1.nii.gz", "head.v2.nii.gz", "head.v3.nii.gz"]  # nothing lost


def test_concurrent_saves_get_distinct_versions(store):
    vol = store.get_image("head")
    masks = []
    for n in range(4):
        m = np.zeros(vol.shape, np.uint8)
        m[n * 5 : n * 5 + 4, 2:6, 2:6] = 1
        masks.append(m)
    got: list[int] = []
    errors: list[BaseException] = []

    def save(m):
        try:
            got.append(store.save_label("head", m, force=True, reference=vol).version)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=save, args=(m,)) for m in masks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(got) == [1, 2, 3, 4]
    index = store.labels.read_index()["images"]["head"]["final"]
    saved = {int(v["version"]): store.labels.path_of(v) for v in index["versions"]}
    loaded = sorted(int(np.argwhere(nib.load(p).get_fdata())[:, 0].min()) for p in saved.values())
    assert loaded == [0, 5, 10, 15]  # every mask is on disk under its own version


def test_dicom_folder_with_a_missing_slice_is_refused(tmp_path, head_crop):
    root = tmp_path / "ds"
    files = write_dicom_series(head_crop, root / "series1", modality="MR")
    files[10].unlink()
    store = LocalDatastore(root)
    assert [e.id for e in store.list_images()] == ["series1"]
    with pytest.raises(SeriesGeometryError, match=r"1 slice\(s\) missing between .* refusing an incomplete series"):
        store.get_image("series1")


def test_bad_ids_and_folder(tmp_path, store):
    with pytest.raises(KeyError, match="no image 'nope'"):
        store.get_image("nope")
    with pytest.raises(ValueError, match="expected an image id"):
        store.save_label("../x", np.zeros((2, 2, 2)), reference=store.get_image("head"))
    with pytest.raises(ValueError, match="not a directory"):
        LocalDatastore(tmp_path / "missing")
    with pytest.raises(FileExistsError, match="already holds an image 'head'"):
        store.add_image(store.root / "head.nii.gz")
