from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volsam.eval import datasets
from volsam.eval.datasets import (
    COLIN27_DEFAULT_TARGETS,
    Case,
    Target,
    load_dataset,
    load_target_mask,
    resolve_targets,
    validate_case,
)

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])
SHAPE = (12, 10, 6)


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _label(values: dict[int, tuple[slice, ...]], shape=SHAPE) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint8)
    for v, sl in values.items():
        lab[sl] = v
    return lab


def _image(shape=SHAPE) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


LAB_A = _label({1: np.s_[1:4, 1:4, 1:3], 2: np.s_[6:9, 5:8, 2:5]})  # 18 and 27 voxels
LAB_B = _label({1: np.s_[0:2, 0:2, 0:2]})  # liver only


@pytest.fixture
def nnunet(tmp_path: Path) -> Path:
    root = tmp_path / "Dataset001_Toy"
    (root / "dataset.json").parent.mkdir(parents=True)
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1, "kidney": 2, "both": [1, 2]},
        "file_ending": ".nii.gz",
        "numTraining": 3,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    for name, lab in (("toy_001", LAB_A), ("toy_002", LAB_B)):
        _save(root / "imagesTr" / f"{name}_0000.nii.gz", _image())
        _save(root / "labelsTr" / f"{name}.nii.gz", lab)
    _save(root / "labelsTr" / "toy_003.nii.gz", LAB_A)  # its image is missing
    return root


def test_nnunet_layout(nnunet: Path):
    cases = load_dataset(nnunet)
    assert [c.name for c in cases] == ["toy_001", "toy_002", "toy_003"]
    c = cases[0]
    assert c.image == nnunet / "imagesTr" / "toy_001_0000.nii.gz"
    assert c.label == nnunet / "labelsTr" / "toy_001.nii.gz"
    assert c.targets == (Target(1, "liver"), Target(2, "kidney"))  # region label "both" is not a target
    assert [int(load_target_mask(c, t).sum()) for t in c.targets] == [18, 27]
    assert validate_case(c) is None
    assert validate_case(cases[1]) is None  # kidney absent, liver present
    assert int(load_target_mask(cases[1], Target(2, "kidney")).sum()) == 0
    reason = validate_case(cases[2])
    assert reason is not None and "image" in reason and "toy_003_0000" in reason


def test_nnunet_label_subsets(nnunet: Path):
    assert load_dataset(nnunet, ["kidney"])[0].targets == (Target(2, "kidney"),)
    assert load_dataset(nnunet, [2, "Liver"])[0].targets == (Target(2, "kidney"), Target(1, "liver"))
    assert load_dataset(nnunet, ["1"])[0].targets == (Target(1, "liver"),)
    with pytest.raises(ValueError, match=r"'spleen'.*liver \(1\), kidney \(2\)"):
        load_dataset(nnunet, ["spleen"])
    with pytest.raises(ValueError, match="valid names"):
        load_dataset(nnunet, [7])


def test_nnunet_v1_labels_and_missing_dataset_json(tmp_path: Path):
    root = tmp_path / "Task01"
    _save(root / "imagesTr" / "c1_0000.nii.gz", _image())
    _save(root / "labelsTr" / "c1.nii.gz", LAB_A)
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "tumour"}}))
    assert load_dataset(root)[0].targets == (Target(1, "liver"), Target(2, "tumour"))
    (root / "dataset.json").unlink()
    c = load_dataset(root)[0]
    assert c.targets == ()  # lazy: values come from the label file
    assert resolve_targets(c) == (Target(1, "label_1"), Target(2, "label_2"))


def test_folder_layout_lazy_targets(tmp_path: Path):
    root = tmp_path / "ds"
    _save(root / "images" / "a.nii.gz", _image())
    _save(root / "images" / "b_0000.nii.gz", _image())
    _save(root / "images" / "unlabelled.nii.gz", _image())
    _save(root / "labels" / "a.nii.gz", LAB_A)
    _save(root / "labels" / "b.nii.gz", _label({3: np.s_[2:5, 2:5, 2:5]}))
    cases = load_dataset(root)
    assert [(c.name, c.image.name) for c in cases] == [("a", "a.nii.gz"), ("b", "b_0000.nii.gz")]
    assert all(c.targets == () for c in cases)
    lab_b = nib.load(str(cases[1].label)).get_fdata()
    assert resolve_targets(cases[1], lab_b) == (Target(3, "label_3"),)
    assert resolve_targets(cases[0]) == (Target(1, "label_1"), Target(2, "label_2"))
    assert int(load_target_mask(cases[1], Target(3, "label_3"), lab_b).sum()) == 27
    assert [validate_case(c) for c in cases] == [None, None]

    sub = load_dataset(root, [3, "label_1"])
    assert sub[0].targets == (Target(3, "label_3"), Target(1, "label_1"))
    with pytest.raises(ValueError, match="no label names"):
        load_dataset(root, ["liver"])


def test_csv_layout(tmp_path: Path):
    img = _save(tmp_path / "data" / "img.nii.gz", _image())
    _save(tmp_path / "data" / "lab.nii.gz", LAB_A)
    other = tmp_path / "elsewhere"
    _save(other / "x_0000.nii.gz", _image())
    _save(other / "x.nii.gz", LAB_B)
    csv_path = tmp_path / "lists" / "cases.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(
        f"image,label\n../data/img.nii.gz,../data/lab.nii.gz\n{other}/x_0000.nii.gz,{other}/x.nii.gz\n\n"
    )
    cases = load_dataset(csv_path)
    assert [c.name for c in cases] == ["lab", "x"]
    assert cases[0].image.resolve() == img.resolve()
    assert [validate_case(c) for c in cases] == [None, None]
    assert load_dataset(str(csv_path), [2])[0].targets == (Target(2, "label_2"),)

    bad = tmp_path / "bad.csv"
    bad.write_text("img,seg\na,b\n")
    with pytest.raises(ValueError, match="'image' and 'label'"):
        load_dataset(bad)


def test_validate_case_reasons(tmp_path: Path):
    img = _save(tmp_path / "img.nii.gz", _image())
    lab = LAB_A
    shape_bad = _save(tmp_path / "shape.nii.gz", np.zeros((12, 10, 5), np.uint8))
    affine_bad = _save(tmp_path / "aff.nii.gz", lab, affine=np.diag([0.8, 0.8, 2.0, 1.0]))
    empty = _save(tmp_path / "empty.nii.gz", np.zeros(SHAPE, np.uint8))
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not a nifti")
    good = _save(tmp_path / "lab.nii.gz", lab)

    def reason(label: Path, targets=()) -> str | None:
        return validate_case(Case("c", img, label, tuple(targets)))

    assert reason(good) is None
    assert "grid mismatch" in reason(shape_bad) and "(12, 10, 5)" in reason(shape_bad)
    assert "grid mismatch" in reason(affine_bad) and "affine" in reason(affine_bad)
    assert reason(empty) == "label has no foreground"
    assert reason(garbage).startswith("label unreadable")
    assert reason(tmp_path / "nope.nii.gz").startswith("label unreadable")
    assert "none of the targets" in reason(good, [Target(5, "five")])
    assert validate_case(Case("c", garbage, good)).startswith("image unreadable")
    # a target with its own label source on another grid
    assert "grid mismatch" in reason(good, [Target(1, "x", label_path=shape_bad, threshold=0.0)])


def test_threshold_and_largest_component_target(tmp_path: Path):
    img = _save(tmp_path / "img.nii.gz", _image())
    prob = np.zeros(SHAPE, np.float32)
    prob[1:5, 1:5, 1:4] = 0.9  # 48 voxels
    prob[8:10, 7:9, 4:6] = 0.7  # 8 voxels, separate
    prob[0, 9, 0] = 0.2
    src = _save(tmp_path / "prob.nii.gz", prob)
    case = Case("c", img, src, (Target(1, "blob", label_path=src, threshold=0.5, largest_component=True),))
    assert int(load_target_mask(case, case.targets[0]).sum()) == 48
    t = Target(1, "all", label_path=src, threshold=0.5)
    assert int(load_target_mask(case, t).sum()) == 56
    assert validate_case(case) is None


def test_bad_specs(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="colin27-aal"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="imagesTr"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "nolabels" / "labelsTr").mkdir(parents=True)
    with pytest.raises(ValueError, match="no label files"):
        load_dataset(tmp_path / "nolabels")


def test_colin27_missing_package(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(datasets, "MRICRON_TEMPLATES", tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install mricron-data"):
        load_dataset("colin27-aal")


def test_colin27_aal(mricron_dir: Path):
    (case,) = load_dataset("colin27-aal")
    assert case.image == mricron_dir / "ch2.nii.gz"
    assert tuple(t.name for t in case.targets) == COLIN27_DEFAULT_TARGETS
    values = {t.name: t.value for t in case.targets}
    assert (values["Thalamus_L"], values["Thalamus_R"], values["Hippocampus_L"], values["Amygdala_R"]) == (
        77,
        78,
        37,
        42,
    )
    assert validate_case(case) is None
    label = np.asanyarray(nib.load(str(case.label)).dataobj)
    counts = {t.name: int(load_target_mask(case, t, label).sum()) for t in case.targets}
    assert all(n > 0 for n in counts.values()), counts
    assert counts["Brain"] > 1_000_000 > 20 * counts["Thalamus_L"]  # 1 mm voxels: litres vs millilitres

    (sub,) = load_dataset("colin27-aal", ["Precentral_L", 78, "brain"])
    assert [t.name for t in sub.targets] == ["Precentral_L", "Thalamus_R", "Brain"]
    with pytest.raises(ValueError, match="Thalamus_L"):
        load_dataset("colin27-aal", ["thalamus"])


def test_union_target(tmp_path: Path):
    lab = np.zeros((6, 6, 6), dtype=np.uint8)
    lab[:2], lab[2:4], lab[4:] = 1, 2, 3
    case = datasets.Case("c", tmp_path / "i.nii.gz", tmp_path / "l.nii.gz")
    m = datasets.load_target_mask(case, datasets.Target(1000, "u", values=(1, 3)), lab)
    assert m.sum() == 4 * 36 and not m[2:4].any()


def test_large_targets(mricron_dir: Path):
    (case,) = load_dataset("large-targets")
    assert [t.name for t in case.targets] == list(datasets.LARGE_DEFAULT_TARGETS)
    assert validate_case(case) is None
    lab = np.asarray(nib.load(str(case.label)).dataobj)
    sizes = {t.name: int(datasets.load_target_mask(case, t, lab).sum()) for t in case.targets}
    # 1 mm voxels: a brain of 1-2 L, hemispheres about half of it, lobes and cerebellum over 0.1 L
    assert 1_000_000 < sizes["Brain"] < 2_000_000
    assert 0.3 < sizes["Cerebrum_L"] / sizes["Brain"] < 0.5
    assert min(sizes.values()) > 100_000
    left = datasets.load_target_mask(case, case.targets[1], lab)
    assert np.argwhere(left)[:, 0].mean() < 90  # AAL's odd values: the left side (x < 0 mm, voxel < 90)
    (sub,) = load_dataset("large-targets", ["occipital_r"])
    assert [t.name for t in sub.targets] == ["Occipital_R"]
    with pytest.raises(ValueError, match="Cerebellum"):
        load_dataset("large-targets", ["Thalamus_L"])


def test_colin27_thick(mricron_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VOLSAM_CACHE", str(tmp_path))
    (case,) = load_dataset("colin27-aal-thick")
    assert [t.name for t in case.targets] == list(datasets.COLIN27_HELD_OUT)
    assert validate_case(case) is None
    img = nib.load(str(case.image))
    assert img.shape == (181, 217, 30)
    assert np.allclose(img.header.get_zooms()[:3], (1.0, 1.0, 6.0))
    # the thick grid's voxel centres sit at the middle of their 6 mm slabs: world z of slab 0 is -71 + 2.5
    assert np.isclose(img.affine[2, 3], -71.0 + 2.5)
    lab = np.asarray(nib.load(str(case.label)).dataobj)
    thal = datasets.load_target_mask(case, case.targets[0], lab)
    assert 800 < thal.sum() < 1700  # ~7.5 cm3 of thalamus in 6 mm3 voxels
    mtime = case.image.stat().st_mtime
    load_dataset("colin27-aal-thick")
    assert case.image.stat().st_mtime == mtime  # written once, then reused
