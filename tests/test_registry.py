from __future__ import annotations

import pytest
import torch

import volsam
from volsam.registry import key_shapes

MANIFESTS = {
    "sam_med3d": "sam_med3d_full",
    "fastsam3d": "fastsam3d_full",
    "sam_med3d_mini": "sam_med3d_mini",
    "fastsam3d_mini": "fastsam3d_mini",
}


def test_registry_lists_required_variants():
    assert set(MANIFESTS) | {volsam.DEFAULT_MODEL} <= set(volsam.list_models())


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_state_dict_keys_and_shapes_equal_manifest(name, manifest):
    want = [(k, tuple(s)) for k, s in manifest(MANIFESTS[name])["keys"]]
    assert list(key_shapes(name).items()) == want


def test_full_sam_med3d_parameter_count(manifest):
    total = sum(torch.Size(s).numel() for _, s in manifest("sam_med3d_full")["keys"])
    assert total == 100_509_616
    assert sum(torch.Size(s).numel() for s in key_shapes("sam_med3d").values()) == total


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match=r"expected one of .*sam_med3d"):
        volsam.build_model("sam_med4d")


@pytest.mark.parametrize("name", ["sam_med3d_mini", "fastsam3d_mini", "volsam_small"])
def test_forward_shapes_and_trainable(name):
    model = volsam.build_model(name).train()
    x = torch.randn(1, 1, 128, 128, 128)
    coords = torch.tensor([[[64.0, 60.0, 70.0]]])
    labels = torch.ones(1, 1, dtype=torch.long)
    logits, iou = model(x, coords, labels)
    assert logits.shape == (1, 1, 32, 32, 32) and iou.shape == (1, 1)
    logits.mean().backward()
    assert model.image_encoder.patch_embed.proj.weight.grad is not None
    assert model.upsample_logits(logits).shape == (1, 1, 128, 128, 128)


@pytest.mark.parametrize(
    "bad",
    [
        torch.randn(1, 128, 128, 128),
        torch.randn(1, 2, 128, 128, 128),
        torch.randn(1, 1, 128, 128, 120),
        torch.zeros(1, 1, 128, 128, 128, dtype=torch.int32),
        torch.randn(1, 1, 120, 120, 120),
    ],
)
def test_bad_image_input_names_expected_shape(bad):
    model = volsam.build_model("fastsam3d_mini")
    with pytest.raises(ValueError, match=r"\[B, 1, 128, 128, 128\]"):
        model.image_encoder(bad)


def test_bad_points_and_mask_prompt():
    pe = volsam.build_model("fastsam3d_mini").prompt_encoder
    with pytest.raises(ValueError, match=r"coords \[B, N, 3\]"):
        pe(points=(torch.zeros(1, 2), torch.ones(1, 2)))
    with pytest.raises(ValueError, match=r"\[B, 1, 32, 32, 32\]"):
        pe(points=(torch.zeros(1, 1, 3), torch.ones(1, 1)), masks=torch.zeros(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="no box embedding"):
        pe(points=None, boxes=torch.zeros(1, 6))


def test_larger_input_interpolates_positions():
    """Inputs larger than 128^3 run (windowed blocks split into several windows)."""
    model = volsam.build_model("sam_med3d_mini")
    with torch.no_grad():
        out = model.image_encoder(torch.randn(1, 1, 256, 256, 256))
    assert out.shape == (1, 96, 16, 16, 16) and torch.isfinite(out).all()


def test_attention_backend_override_keeps_the_weights(tmp_path):
    import torch

    from volsam import save_checkpoint
    from volsam.registry import build_model

    torch.manual_seed(0)
    dense = build_model("fastsam3d_mini")
    ckpt = save_checkpoint(dense, tmp_path / "m.pt")
    dilated = build_model("fastsam3d_mini", ckpt, attention_backend="dilated")
    assert dilated.image_encoder.cfg.attention_backend == "dilated"
    a, b = dense.state_dict(), dilated.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="attention_backend must be 'dense' or 'dilated', got 'sparse'"):
        build_model("fastsam3d_mini", attention_backend="sparse")
    with pytest.raises(ValueError, match="needs a model name"):
        build_model(None, ckpt, attention_backend="dilated")


def test_set_attention_backend_in_place_equals_building_with_it(tmp_path):
    import torch

    from volsam import save_checkpoint
    from volsam.models import resolve_model
    from volsam.registry import build_model

    torch.manual_seed(0)
    dense = build_model("fastsam3d_mini")
    ckpt = save_checkpoint(dense, tmp_path / "m.pt")
    built = build_model("fastsam3d_mini", ckpt, attention_backend="dilated").eval()
    switched = resolve_model(ckpt, "cpu", attention_backend="dilated")  # checkpoint path: variant inferred
    x = torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(1))
    assert switched.config.encoder.attention_backend == "dilated"  # what checkpoints and exports record
    with torch.no_grad():
        want, got, plain = built.image_encoder(x), switched.image_encoder(x), dense.eval().image_encoder(x)
        switched.set_attention_backend("dense")
        back = switched.image_encoder(x)
    assert torch.equal(got, want) and not torch.allclose(got, plain, atol=1e-4)
    assert torch.equal(back, plain) and switched.image_encoder.cfg.attention_backend == "dense"
    assert switched.config.encoder.attention_backend == "dense"
    with pytest.raises(ValueError, match="attention_backend must be 'dense' or 'dilated'"):
        switched.set_attention_backend("flash")
