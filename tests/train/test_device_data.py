from __future__ import annotations

from pathlib import Path

import pytest
import torch

from volsam.train.device_data import PackedVolumes
from volsam.train.pack import pack_dataset
from volsam.train.synth import SynthConfig, synth_images


@pytest.fixture(scope="module")
def packed(toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "toy.npz"
    pack_dataset(toy_data, out, fg_samples=64)
    return out


def test_synth_images_give_each_label_one_intensity_and_zero_outside():
    plain = SynthConfig(std_max=0.0, low_res_prob=0.0, blur_max=0.0, bias_std=0.0, gamma_std=0.0, noise_max=0.0)
    lab = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    lab[:, :, 4:10, 4:10, 4:10] = 3
    lab[:, :, 11:14] = 7
    valid = torch.ones_like(lab, dtype=torch.bool)
    valid[:, :, :, :, 15] = False
    img = synth_images(lab, valid, torch.Generator().manual_seed(1), plain)
    assert img.shape == lab.shape and float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert float(img[valid.logical_not()].abs().max()) == 0.0
    for k in range(2):
        for v in (0, 3, 7):
            region = img[k][(lab[k] == v) & valid[k]]
            assert float(region.max() - region.min()) < 1e-5  # one intensity per label
    assert not torch.equal(img[0], img[1])  # a new contrast per sample
    full = synth_images(lab, valid, torch.Generator().manual_seed(1))  # default ranges: blur, bias, noise
    assert float(full.min()) >= 0.0 and float(full.max()) <= 1.0


def test_packed_windows_always_hold_their_target(packed: Path):
    data = PackedVolumes(packed, window=32, jitter=8, p_synth=0.5)
    g, dg = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    for _ in range(3):
        b = data.sample(6, g, dg)
        assert b.image.shape == (6, 1, 32, 32, 32) and b.target.shape == (6, 1, 32, 32, 32)
        assert bool((b.target.flatten(1).sum(1) > 0).all())
        assert torch.isfinite(b.image).all()
        real = ~b.synthetic
        if bool(real.any()):  # toy images: the target is brighter than background
            img, tgt = b.image[real], b.target[real] > 0.5
            assert float(img[tgt].mean()) > float(img[~tgt].mean())


def test_packed_volumes_check_their_arguments(packed: Path):
    with pytest.raises(ValueError, match="jitter must be in"):
        PackedVolumes(packed, window=32, jitter=16)
    with pytest.raises(ValueError, match="p_synth must be in"):
        PackedVolumes(packed, window=32, jitter=4, p_synth=2.0)


def test_case_weights_set_the_draws_per_source(packed: Path):
    data = PackedVolumes(packed, window=32, jitter=8, p_synth=0.0, case_weights={"case0": 0.0, "case1": 3.0})
    names = [c["name"] for c in data.meta["cases"]]
    shares = data.sampling_shares()
    assert shares["case0"] == 0.0 and shares["case1"] > shares[names[-1]] > 0.0
    g, dg = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    drawn = torch.cat([data.sample(8, g, dg).target_index for _ in range(4)])
    cases = {names[int(c)] for c in data.targets[drawn, 0]}
    assert "case0" not in cases and "case1" in cases
    uniform = PackedVolumes(packed, window=32, jitter=8, p_synth=0.0)
    assert all(abs(v - 1 / len(names)) < 0.5 for v in uniform.sampling_shares().values())


@pytest.mark.parametrize(
    ("weights", "message"),
    [({"nope": 1.0}, "matches no case"), ({"case": -1.0}, "must be >= 0"), ({"case": 0.0}, "no target to draw")],
)
def test_case_weights_are_checked(packed: Path, weights: dict[str, float], message: str):
    with pytest.raises(ValueError, match=message):
        PackedVolumes(packed, window=32, jitter=8, case_weights=weights)
