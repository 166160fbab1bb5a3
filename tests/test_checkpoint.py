from __future__ import annotations

import argparse

import pytest
import torch

import volsam
from volsam.checkpoint import CheckpointError, read_state_dict, save_checkpoint


@pytest.fixture(scope="module")
def mini_sd(load_fixture):
    return load_fixture("sam_med3d_mini")["state_dict"]


def _same(model, sd):
    msd = model.state_dict()
    return msd.keys() == sd.keys() and all(torch.equal(msd[k], sd[k]) for k in sd)


@pytest.mark.parametrize("layout", ["model_state_dict", "state_dict", "bare", "ddp", "training"])
def test_released_layouts_load_and_infer_architecture(tmp_path, mini_sd, layout):
    obj = {
        "model_state_dict": {"model_state_dict": mini_sd},
        "state_dict": {"state_dict": mini_sd},
        "bare": mini_sd,
        "ddp": {"module." + k: v for k, v in mini_sd.items()},
        "training": {"epoch": 3, "model_state_dict": mini_sd, "optimizer_state_dict": {"lr": 1e-4}},
    }[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = volsam.load_checkpoint(path)
    assert model.config == volsam.registry.model_config("sam_med3d_mini")
    assert _same(model, mini_sd)
    assert _same(volsam.build_model("sam_med3d_mini", checkpoint=path), mini_sd)


def test_safetensors_round_trip(tmp_path, mini_sd):
    model = volsam.build_model("sam_med3d_mini")
    model.load_state_dict(mini_sd)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    assert _same(volsam.load_checkpoint(path), mini_sd)


def test_saved_layout_is_official(tmp_path, mini_sd):
    model = volsam.build_model("sam_med3d_mini")
    model.load_state_dict(mini_sd)
    path = save_checkpoint(model, tmp_path / "out.pth", epoch=2)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model_state_dict", "epoch"} and raw["epoch"] == 2
    assert list(raw["model_state_dict"]) == list(mini_sd)
    assert [p.name for p in tmp_path.iterdir()] == ["out.pth"]  # no temporary file left


def test_encoder_only_student_needs_and_uses_decoder_checkpoint(tmp_path, mini_sd):
    enc = {k[len("image_encoder.") :]: v for k, v in mini_sd.items() if k.startswith("image_encoder.")}
    enc_path, full_path = tmp_path / "student.pth", tmp_path / "full.pth"
    torch.save(enc, enc_path)
    torch.save({"model_state_dict": mini_sd}, full_path)
    with pytest.raises(CheckpointError, match=r"image encoder only.*decoder_checkpoint"):
        volsam.build_model("sam_med3d_mini", checkpoint=enc_path)
    model = volsam.build_model("sam_med3d_mini", checkpoint=enc_path, decoder_checkpoint=full_path)
    assert _same(model, mini_sd)
    assert _same(volsam.load_checkpoint(enc_path, decoder_checkpoint=full_path), mini_sd)


def test_other_architecture_is_named(tmp_path, load_fixture):
    path = tmp_path / "fast.pth"
    torch.save({"model_state_dict": load_fixture("fastsam3d_mini")["state_dict"]}, path)
    with pytest.raises(CheckpointError, match="fits registered model fastsam3d_mini") as e:
        volsam.build_model("sam_med3d_mini", checkpoint=path)
    assert "\n" not in str(e.value)
    assert "missing" in str(e.value) and "image_encoder.blocks.0.attn" in str(e.value)


def test_partial_checkpoint_is_an_error_not_a_partial_load(tmp_path, mini_sd):
    sd = dict(mini_sd)
    sd.pop("mask_decoder.iou_token.weight")
    sd["image_encoder.extra"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing 1: mask_decoder.iou_token.weight.*unexpected 1"):
        volsam.build_model("sam_med3d_mini", checkpoint=path)
    with pytest.raises(CheckpointError, match="fits no registered model"):
        volsam.load_checkpoint(path)


def test_shape_mismatch_reported(tmp_path, mini_sd):
    sd = dict(mini_sd)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    path = tmp_path / "shape.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"shape mismatch 1: mask_decoder.iou_token.weight \(1, 7\)"):
        volsam.build_model("sam_med3d_mini", checkpoint=path)


def test_pickled_namespace_needs_explicit_trust(tmp_path, mini_sd):
    path = tmp_path / "old.pth"
    torch.save({"args": argparse.Namespace(lr=1e-4), "model_state_dict": mini_sd}, path)
    with pytest.raises(CheckpointError, match=r"full unpickling.*trust_checkpoint=True"):
        volsam.load_checkpoint(path)
    assert _same(volsam.load_checkpoint(path, trust_checkpoint=True), mini_sd)


def test_corrupt_and_truncated_files(tmp_path, mini_sd):
    good = tmp_path / "good.pth"
    torch.save(mini_sd, good)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[:5000])
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    for p in (trunc, junk):
        with pytest.raises(CheckpointError, match="not a readable checkpoint") as e:
            read_state_dict(p)
        assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def tiny_sd():
    """Weights of a registered architecture (random; what matters is keys, shapes and dtypes)."""
    return volsam.build_model("fastsam3d_mini").state_dict()


@pytest.mark.parametrize("content", [b"", b"abc", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage", b"PK\x03\x04"])
def test_bad_safetensors_is_a_one_line_checkpoint_error(tmp_path, content, capsys):
    from volsam.cli import main

    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as e:
        read_state_dict(path)
    assert "\n" not in str(e.value)
    img = tmp_path / "x.nii.gz"
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), img)
    assert main(["segment", str(img), "--point", "1,1,1", "--model", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("volsam: error:") and "safetensors" in err[0]


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.uint8, torch.bool, torch.float8_e4m3fn])
def test_non_floating_weights_are_refused(tmp_path, tiny_sd, dtype):
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tiny_sd.items()}
    path = tmp_path / "q.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=f"non-floating weights.*{str(dtype).split('.')[-1]}"):
        volsam.build_model("fastsam3d_mini", checkpoint=path)


def test_half_precision_weights_still_load(tmp_path, tiny_sd):
    path = tmp_path / "h.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in tiny_sd.items()}, path)
    assert volsam.load_checkpoint(path) is not None


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, tiny_sd, bad):
    sd = dict(tiny_sd)
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = bad
    path = tmp_path / "n.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=f"NaN or infinite weights in {key}"):
        volsam.load_checkpoint(path)


def test_pickled_code_is_named_as_code(tmp_path, tiny_sd):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": tiny_sd, "hook": Evil()}, path)
    with pytest.raises(CheckpointError, match=r"pickled code \(posix\.system\).*--trust-checkpoint") as e:
        read_state_dict(path)
    assert "corrupt" not in str(e.value)
