from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from volsam.modeling import Sam3D
from volsam.modeling.attention import dilated_attention
from volsam.registry import key_shapes, model_config

BRANCHES = ((4, 1), (8, 2), (16, 4))


def test_one_branch_covering_the_sequence_is_dense_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 6, 512, 16).unbind(0)
    bias = torch.randn(2, 6, 512, 512)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.25)
    assert torch.allclose(dilated_attention(q, k, v, bias, ((512, 1),), 0.25), dense, atol=1e-5)


def test_outputs_return_to_their_own_positions():
    """Distinct tokens that attend only to themselves must come back where they were."""
    n, nh, hd = 512, 4, 512
    keys = torch.eye(n)[None, None].expand(1, nh, n, hd) * 50.0  # token i only matches itself
    v = torch.randn(1, nh, n, 8)
    out = dilated_attention(keys, keys, v, None, BRANCHES, 1.0)
    assert torch.allclose(out, v, atol=1e-4)


def test_segments_equal_dense_attention_with_cross_segment_logits_blocked():
    """Segment-local attention (4, 1) is dense attention whose cross-segment logits are -inf."""
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 1, 1, 8, 4).unbind(0)
    bias = torch.zeros(1, 1, 8, 8)
    bias[..., :4, 4:] = float("-inf")
    bias[..., 4:, :4] = float("-inf")
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    got = dilated_attention(q, k, v, bias, ((4, 1),), 0.5)
    assert torch.allclose(got, want, atol=1e-5)


def test_dilated_backend_keeps_checkpoint_layout_and_runs():
    cfg = model_config("fastsam3d_mini").with_encoder(attention_backend="dilated")
    model = Sam3D.from_config(cfg).eval()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == key_shapes("fastsam3d_mini")
    dense = Sam3D.from_config(model_config("fastsam3d_mini")).eval()
    dense.load_state_dict(model.state_dict())
    x = torch.randn(1, 1, 128, 128, 128)
    with torch.no_grad():
        a, b = model.image_encoder(x), dense.image_encoder(x)
    assert a.shape == b.shape == (1, 96, 8, 8, 8) and torch.isfinite(a).all()
    assert not torch.allclose(a, b)  # sparse attention is an approximation


def test_bad_branches_rejected():
    with pytest.raises(ValueError, match="segment % dilation"):
        Sam3D.from_config(
            model_config("fastsam3d_mini").with_encoder(attention_backend="dilated", dilated_branches=((6, 4),))
        )


def test_gathered_relative_bias_equals_the_full_bias():
    """The dilated path gathers its bias from the per-axis terms; same result as slicing the [N, N] bias."""
    from volsam.modeling.attention import RelPosAttention, _real_key_bias

    torch.manual_seed(2)
    attn = RelPosAttention(32, 4, use_rel_pos=True).eval()
    with torch.no_grad():
        for p in (attn.rel_pos_d, attn.rel_pos_h, attn.rel_pos_w):
            p.normal_(0, 0.5)
    g, nh, hd = 8, 4, 8
    q, k, v = torch.randn(3, 1, nh, g**3, hd).unbind(0)
    terms = attn._rel_terms(q, torch.zeros(1, nh, 1, hd), g, g)
    full = dilated_attention(q, k, v, _real_key_bias(*terms, g), BRANCHES, 0.3)
    gathered = dilated_attention(q, k, v, None, BRANCHES, 0.3, rel=terms, grid=g)
    assert torch.allclose(full, gathered, atol=1e-5)
