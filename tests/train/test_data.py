from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from volsam.eval.datasets import load_dataset
from volsam.train.data import AugmentConfig, StepSampler, SynthDataset, TrainDataset, TrainingDataError, make_loader
from volsam.train.synth import SynthConfig, SynthGenerator

from . import AFFINE, SHAPE, make_case


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_samples_shapes_determinism_and_target_inside(toy_data: Path):
    ds = TrainDataset.from_dataset(toy_data, seed=5)
    assert len(ds) == 6 and len(ds.cases) == 3
    seen = set()
    for i in range(8):
        s = ds[i]
        assert s["image"].shape == (1, 128, 128, 128) and s["image"].dtype == torch.float32
        assert s["target"].shape == (1, 128, 128, 128) and s["target"].dtype == torch.float32
        assert set(torch.unique(s["target"]).tolist()) == {0.0, 1.0}  # never a window without the target
        seen.add(s["pair"])
    assert seen == set(range(6))  # the first epoch is a permutation of all pairs
    again = TrainDataset.from_dataset(toy_data, seed=5)[3]
    first = ds[3]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["target"], again["target"])
    other = TrainDataset.from_dataset(toy_data, seed=6)[3]
    assert not torch.equal(first["image"], other["image"])


def test_window_follows_the_file_geometry(toy_data: Path):
    """Without jitter the eval window is centred on a target voxel; the target is where the file says."""
    ds = TrainDataset.from_dataset(toy_data, labels=[1])
    entry = ds.entries[0]
    item = ds.eval_item(0)
    _, label = make_case(entry.case_index)
    assert label[tuple(entry.anchor)] == 1
    tgt = item["target"][0].numpy() > 0.5
    # window voxel 64 is the anchor; 3 mm voxels -> 1.5 mm window: the sphere's voxel count grows 8x
    assert tgt[64, 64, 64]
    assert abs(tgt.sum() / (label == 1).sum() - 8.0) < 0.8


def test_augmentation_keeps_image_and_label_aligned(tmp_path: Path):
    """Image = 1000 * target exactly: after flips/affine/elastic the bright voxels are still the target."""
    _, label = make_case(0)
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    nib.save(nib.Nifti1Image((label == 1).astype(np.float32) * 1000, AFFINE), str(tmp_path / "images" / "a.nii.gz"))
    nib.save(nib.Nifti1Image((label == 1).astype(np.uint8), AFFINE), str(tmp_path / "labels" / "a.nii.gz"))
    aug = AugmentConfig(flip_prob=0.5, affine_prob=1.0, elastic_prob=1.0, intensity_prob=0.0)
    ds = TrainDataset.from_dataset(tmp_path, augment=aug, jitter_mm=0.0)
    plain = TrainDataset.from_dataset(tmp_path, jitter_mm=0.0)
    changed = 0
    for i in range(3):
        s = ds[i]
        img, tgt = s["image"][0].numpy(), s["target"][0].numpy() > 0.5
        bright = img > (img.max() + img.min()) / 2
        assert _dice(bright, tgt) > 0.93
        changed += not torch.equal(s["target"], plain[i]["target"])
    assert changed == 3


def test_intensity_augmentation_and_synth_mix(toy_data: Path):
    aug = AugmentConfig(flip_prob=0.0, affine_prob=0.0, intensity_prob=1.0)
    ds = TrainDataset.from_dataset(toy_data, augment=aug, p_synth=0.5, seed=1)
    plain = TrainDataset.from_dataset(toy_data, seed=1)
    for i in range(3):
        s, p = ds[i], plain[i]
        assert torch.isfinite(s["image"]).all()
        assert torch.equal(s["target"], p["target"])  # intensity-only: geometry untouched
        assert not torch.equal(s["image"], p["image"])


def test_disk_cache_and_workers(toy_data: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    ds = TrainDataset.from_dataset(toy_data, cache_dir=cache, preload=True, augment=AugmentConfig())
    files = sorted(p.name for p in cache.glob("*.npy"))
    assert sum(f.endswith("_image.npy") for f in files) == 3 and sum(f.endswith("_label.npy") for f in files) == 3
    warm = TrainDataset.from_dataset(toy_data, cache_dir=cache, augment=AugmentConfig())
    assert torch.equal(ds[4]["image"], warm[4]["image"])
    sampler = StepSampler(0, 2, batch_size=2)
    serial = list(make_loader(ds, sampler, workers=0))
    parallel = list(make_loader(warm, sampler, workers=2))
    assert len(serial) == len(parallel) == 2
    for a, b in zip(serial, parallel, strict=True):
        # workers run torch single-threaded: reductions inside MONAI may round differently (~1e-6)
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["target"], b["target"])
        assert torch.allclose(a["image"], b["image"], atol=1e-5)


def test_synth_generator():
    _, label = make_case(0)
    gen = SynthGenerator(SynthConfig(low_res_prob=1.0))
    a = gen(label, np.random.default_rng(0))
    b = gen(label, np.random.default_rng(0))
    c = gen(label, np.random.default_rng(1))
    assert a.shape == SHAPE and a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.0 <= a.min() and a.max() <= 1.0
    means = [float(a[label == v].mean()) for v in (0, 1, 2)]
    assert max(means) - min(means) > 0.02  # labels get distinct intensities
    valid = np.zeros(SHAPE, dtype=bool)
    valid[8:] = True
    assert (gen(label, np.random.default_rng(0), valid)[:8] == 0).all()


def test_synth_dataset_from_labels_only(toy_data: Path):
    labels = sorted((toy_data / "labels").glob("*.nii.gz"))
    ds = SynthDataset(labels, seed=0)
    assert len(ds) == 6
    s = ds[0]
    tgt = s["target"][0] > 0.5
    img = s["image"][0]
    assert s["image"].shape == (1, 128, 128, 128) and tgt.any()
    assert abs(float(img[tgt].mean() - img[~tgt].mean())) > 0.1  # the target has its own contrast
    assert ds.eval_item(1)["image"].shape == (1, 128, 128, 128)


def _bad_grid_dataset(root: Path) -> Path:
    image, label = make_case(0)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    nib.save(nib.Nifti1Image(image, AFFINE), str(root / "images" / "a.nii.gz"))
    nib.save(nib.Nifti1Image(label, AFFINE), str(root / "labels" / "a.nii.gz"))
    nib.save(nib.Nifti1Image(image, AFFINE), str(root / "images" / "b.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.diag([2.0, 2.0, 2.0, 1.0])), str(root / "labels" / "b.nii.gz"))
    return root


def test_bad_inputs(tmp_path: Path):
    root = _bad_grid_dataset(tmp_path / "grid")
    with pytest.raises(TrainingDataError, match=r"1 of 2 cases cannot be used.*b: grid mismatch"):
        TrainDataset(load_dataset(root))
    ds = TrainDataset(load_dataset(root), skip_bad_cases=True)
    assert len(ds.cases) == 1 and ds.skipped[0][0] == "b" and "skipped 1" in ds.describe()
    empty = tmp_path / "empty"
    for sub in ("images", "labels"):
        (empty / sub).mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), AFFINE), str(empty / "images" / "a.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), AFFINE), str(empty / "labels" / "a.nii.gz"))
    with pytest.raises(TrainingDataError, match=r"no usable case.*no foreground"):
        TrainDataset(load_dataset(empty))


def test_extra_targets_are_other_structures_of_the_window(toy_data):
    from volsam.train.data import TrainDataset

    data = TrainDataset.from_dataset(toy_data, extra_targets=2, seed=3)
    for index in range(4):
        item = data[index]
        t = item["target"]
        assert t.shape[0] == 3 and bool(t.flatten(1).any(1).all())
        # the toy cases hold two labels: the other one is the first extra, then the sampled target repeats
        assert not torch.equal(t[0], t[1]) and torch.equal(t[2], t[0])
        assert float((t[0] * t[1]).sum()) == 0.0
    with pytest.raises(ValueError, match="extra_targets must be >= 0"):
        TrainDataset.from_dataset(toy_data, extra_targets=-1)


def test_training_step_with_extra_targets(toy_data, tmp_path):
    from volsam import build_model
    from volsam.train.data import TrainDataset
    from volsam.train.loop import TrainConfig, train

    torch.manual_seed(0)
    data = TrainDataset.from_dataset(toy_data, extra_targets=1)
    res = train(build_model("fastsam3d_mini"), data, tmp_path, TrainConfig(steps=1, rounds=2), model_name="x")
    assert len(res.losses) == 1 and np.isfinite(res.losses[0])


def test_multi_scale_windows_draw_spacings_the_target_fills(toy_data: Path):
    # toy targets: a sphere of radius 11-13 voxels of 3 mm (~170-310 cm3) and a 16x14x18 cube (~109 cm3)
    ds = TrainDataset.from_dataset(toy_data, seed=2, size=32, margin=4, spacings=(6.0, 1.5, 3.0, 24.0))
    assert ds.spacings == (1.5, 3.0, 6.0, 24.0)
    for e in ds.entries:
        # at 24 mm a 100-300 cm3 target covers < 64 window voxels (24^3 mm3 = 13.8 cm3 a voxel): never drawn
        assert ds.spacing_choices(e) == (1.5, 3.0, 6.0)
    seen = set()
    for i in range(12):
        s = ds[i]
        assert s["spacing"] in (1.5, 3.0, 6.0)
        assert s["target"].any()  # the target is in view at every spacing
        seen.add(s["spacing"])
        if s["spacing"] == 6.0:  # a 192 mm field: the whole target fits with room around it
            assert s["target"].mean() < 0.2
    assert seen == {1.5, 3.0, 6.0}
    plain = TrainDataset.from_dataset(toy_data, seed=2, size=32, margin=4)
    assert plain[0]["spacing"] == 1.5 and plain.spacing_choices(plain.entries[0]) == (1.5,)
    tiny = TrainDataset.from_dataset(toy_data, seed=2, size=32, margin=4, spacings=(24.0, 48.0))
    assert tiny.spacing_choices(tiny.entries[0]) == (24.0,)  # none fits: the finest
