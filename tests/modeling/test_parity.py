"""volsam's networks compute the official functions: fixtures, and the fast path against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.modeling.reference import fixture_weights, reference_encoder, state_dict_sha256
from volsam import build_model
from volsam.registry import model_config

TOL = 1e-4
MINI = ["sam_med3d_mini", "fastsam3d_mini"]


def _image(seed: int) -> torch.Tensor:
    return torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=MINI)
def mini(request, load_fixture):
    fx = load_fixture(request.param)
    model = build_model(request.param)
    model.load_state_dict(fx["state_dict"], strict=True)
    with torch.no_grad():
        emb = model.image_encoder(_image(fx["image_seed"]))
    return request.param, fx, model, emb


def test_weights_rule_reproduces_fixture_weights(mini, manifest, parity_dir):
    """The rule remakes the original fixture weights bit for bit (their digest is stored with the outputs)."""
    name, _, _, _ = mini
    made = fixture_weights(manifest(name)["keys"])
    with np.load(parity_dir / f"{name}.npz") as z:
        want = str(z["state_dict_sha256"])
    assert state_dict_sha256(made) == want


def test_embedding_and_dense_pe(mini):
    _, fx, model, emb = mini
    assert (emb - fx["outputs"]["image_embedding"]).abs().max() <= TOL
    pe = model.prompt_encoder.get_dense_pe()
    assert (pe - fx["outputs"]["dense_pe"]).abs().max() <= TOL


@pytest.mark.parametrize("case", ["one_positive_zero_mask", "three_clicks_prev_logits", "two_points_no_mask"])
def test_prompt_and_decoder_outputs(mini, case):
    _, fx, model, emb = mini
    inp, out = fx["inputs"][case], {k.split("/", 1)[1]: v for k, v in fx["outputs"].items() if k.startswith(case)}
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=(inp["coords"], inp["labels"]), boxes=None, masks=inp["mask"])
        got = {"sparse": sparse, "dense": dense}
        pe = model.prompt_encoder.get_dense_pe()
        for multi, prefix in ((False, ""), (True, "multimask_")):
            logits, iou = model.mask_decoder(
                image_embeddings=emb,
                image_pe=pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multi,
            )
            got[prefix + "low_res_logits"], got[prefix + "iou"] = logits, iou
    assert set(got) == set(out)
    for k, v in got.items():
        assert v.shape == out[k].shape, k
        assert (v - out[k]).abs().max() <= TOL, k


@pytest.mark.parametrize("name", MINI)
def test_fast_encoder_matches_padded_reference_mini(name, load_fixture):
    fx = load_fixture(name)
    model = build_model(name)
    model.load_state_dict(fx["state_dict"])
    x = _image(fx["image_seed"] + 1)
    with torch.no_grad():
        fast = model.image_encoder(x)
        ref = reference_encoder(fx["state_dict"], model_config(name).encoder, x)
    assert (fast - ref).abs().max() <= TOL


def test_fast_attention_is_differentiable_like_reference(load_fixture):
    """Gradients of the collapsed padded window equal those of the real padding."""
    fx = load_fixture("sam_med3d_mini")
    model = build_model("sam_med3d_mini")
    model.load_state_dict(fx["state_dict"])
    x = _image(3)
    model.image_encoder(x).square().mean().backward()
    got = model.image_encoder.blocks[0].attn.rel_pos_h.grad.clone()
    sd = {k: v.clone().requires_grad_(True) for k, v in fx["state_dict"].items()}
    reference_encoder(sd, model_config("sam_med3d_mini").encoder, x).square().mean().backward()
    want = sd["image_encoder.blocks.0.attn.rel_pos_h"].grad
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sam_med3d", "fastsam3d"])
def test_full_size_fast_encoder_matches_reference(name, manifest):
    """Full-size check with the fixture README's weights rule: no shortcut that holds only when small."""
    sd = fixture_weights(manifest(f"{name}_full")["keys"])
    model = build_model(name)
    model.load_state_dict(sd, strict=True)
    x = _image(7)
    with torch.no_grad():
        fast = model.image_encoder(x)
        ref = reference_encoder(sd, model_config(name).encoder, x)
    assert fast.shape == (1, 384, 8, 8, 8)
    assert (fast - ref).abs().max() <= TOL
