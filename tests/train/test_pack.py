from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volsam.train.pack import PACK_FORMAT, _covering_window, pack_dataset, read_pack
from volsam.transforms import extract_window

from . import AFFINE


@pytest.fixture(scope="module")
def packed(toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "toy.npz"
    pack_dataset(toy_data, out, fg_samples=64)
    return out


def test_pack_holds_every_target_on_the_window_grid(packed: Path, toy_data: Path):
    meta, arrays = read_pack(packed)
    assert meta["format"] == PACK_FORMAT and meta["spacing"] == 1.5
    assert len(meta["cases"]) == 3 and arrays["targets"].shape == (6, 2) and arrays["fg"].shape == (6, 64, 3)
    for t, (case, value) in enumerate(arrays["targets"]):
        lab = arrays[f"label_{case}"]
        fg = arrays["fg"][t].astype(int)
        assert np.all(lab[fg[:, 0], fg[:, 1], fg[:, 2]] == value)  # every stored voxel lies in its target
        assert arrays["target_voxels"][t] == np.count_nonzero(lab == value)
    # 3 mm toy voxels on a 1.5 mm grid: each target holds ~8x its file voxels
    label = np.asarray(nib.load(str(toy_data / "labels" / "case0.nii.gz")).dataobj)
    ratio = arrays["target_voxels"][0] / np.count_nonzero(label == 1)
    assert 7.0 < ratio < 9.0


def test_packed_image_is_the_resampled_image_quantised(packed: Path, toy_data: Path):
    meta, arrays = read_pack(packed)
    image = np.asarray(nib.load(str(toy_data / "images" / "case0.nii.gz")).dataobj, dtype=np.float32)
    window = _covering_window(image.shape, AFFINE, 1.5)
    ref = extract_window(image, AFFINE, window, order=1)
    valid = extract_window(np.ones(image.shape, np.uint8), AFFINE, window, order=0) > 0.5
    idx = np.argwhere(valid)
    ref = ref[tuple(slice(a, b + 1) for a, b in zip(idx.min(0), idx.max(0), strict=True))]
    got = arrays[f"image_{meta['cases'][0]['image']}"] * arrays["image_scale"][meta["cases"][0]["image"]]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= arrays["image_scale"].max()  # int16 quantisation step


def test_pack_rejects_bad_arguments_and_files(toy_data: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="spacing must be > 0"):
        pack_dataset(toy_data, tmp_path / "x.npz", spacing=0)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a volsam pack"):
        read_pack(tmp_path / "other.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="a single array"):
        read_pack(tmp_path / "one.npy")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a volsam pack"):
        read_pack(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="no such file"):
        read_pack(tmp_path / "missing.npz")


def test_a_largest_label_lost_to_resampling_is_dropped(tmp_path: Path):
    """A one-voxel label at 0.5 mm, the largest value, that the 1.5 mm grid misses: dropped, not an IndexError."""
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    label = np.zeros((30, 30, 30), np.uint8)
    label[5:25, 5:25, 5:25] = 1
    label[4, 4, 4] = 9
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    nib.save(nib.Nifti1Image(label.astype(np.float32) * 100 + 10, affine), str(tmp_path / "images" / "a.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "labels" / "a.nii.gz"))
    pack_dataset(tmp_path, tmp_path / "p.npz", fg_samples=8)
    meta, arrays = read_pack(tmp_path / "p.npz")
    assert meta["target_names"] == ["label_1"] and arrays["targets"].shape == (1, 2)
