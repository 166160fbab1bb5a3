from __future__ import annotations

import pytest
import torch

from volsam import build_model
from volsam.config import PROMPT_CHANNELS, FusionConfig
from volsam.modeling import FusionSeg3D, PromptableModel
from volsam.modeling.fusion import render_points


@pytest.fixture(scope="module")
def model() -> FusionSeg3D:
    torch.manual_seed(0)
    return build_model("volsam_fusion").eval()


def test_registered_as_fusion_model(model):
    assert isinstance(model, FusionSeg3D)
    assert isinstance(model, PromptableModel)
    assert model.kind == "fusion"
    assert model.config.channels == PROMPT_CHANNELS
    assert model.low_res_size == model.img_size // 2


def test_points_render_where_they_are_with_their_sign():
    coords = torch.tensor([[[3.0, 5.0, 7.0], [10.0, 2.0, 1.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 0, -1]])
    out = render_points(coords, labels, 12, sigma=1.0)
    assert out.shape == (1, 2, 12, 12, 12)
    pos, neg = out[0, 0], out[0, 1]
    assert pos[3, 5, 7] == pytest.approx(1.0) and neg[10, 2, 1] == pytest.approx(1.0)
    assert torch.argmax(pos).item() == (3 * 12 + 5) * 12 + 7
    assert pos[10, 2, 1] < 1e-6 and neg[3, 5, 7] < 1e-6
    assert pos[0, 0, 0] < 1e-6  # the padding point (label -1) is drawn nowhere
    assert pos[4, 5, 7] == pytest.approx(torch.exp(torch.tensor(-0.5)).item(), rel=1e-5)


def test_prompt_channels_layout(model):
    s = model.img_size
    img = torch.randn(1, 1, s, s, s)
    box = torch.zeros(1, 1, s, s, s)
    box[..., 10:20, 10:20, 30] = 1
    prev = torch.full((1, 1, s // 2, s // 2, s // 2), 3.0)
    x = model.prompt_channels(img, torch.tensor([[[20.0, 21.0, 22.0]]]), torch.tensor([[0]]), prev, {"box_pos": box})
    assert x.shape == (1, len(PROMPT_CHANNELS), s, s, s)
    ch = {name: x[0, i] for i, name in enumerate(PROMPT_CHANNELS)}
    assert torch.equal(ch["image"], img[0, 0])
    assert torch.allclose(ch["previous"], torch.sigmoid(torch.tensor(3.0)).expand(s, s, s))
    assert ch["point_neg"][20, 21, 22] == pytest.approx(1.0) and ch["point_pos"].max() == 0
    assert torch.equal(ch["box_pos"], box[0, 0])
    for name in ("box_neg", "scribble_pos", "scribble_neg", "lasso_pos", "lasso_neg"):
        assert ch[name].abs().max() == 0
    assert model.prompt_channels(img, None, None)[0, 1].abs().max() == 0  # no previous mask: probability 0


def test_unknown_prompt_channel_is_refused(model):
    s = model.img_size
    with pytest.raises(ValueError, match="unknown prompt channel 'circle'"):
        model.prompt_channels(torch.zeros(1, 1, s, s, s), None, None, None, {"circle": torch.zeros(1, 1, s, s, s)})


def test_a_click_changes_the_prediction_locally(model):
    """Early fusion: the prediction depends on the click, near the click more than far from it."""
    s = model.img_size
    img = torch.randn(1, 1, s, s, s, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, _ = model.decode(img, torch.tensor([[[16.0, 16.0, 16.0]]]), torch.tensor([[1]]))
        b, _ = model.decode(img, torch.tensor([[[48.0, 48.0, 48.0]]]), torch.tensor([[1]]))
    d = (a - b).abs()[0, 0]
    assert d.max() > 0
    assert d[6:10, 6:10, 6:10].mean() > d[0:2, 30:32, 0:2].mean()


def test_decode_shapes_and_fully_convolutional(model):
    for s in (48, 64):
        low, iou = model.decode(torch.randn(2, 1, s, s, s), torch.zeros(2, 1, 3), torch.ones(2, 1, dtype=torch.long))
        assert low.shape == (2, 1, s // 2, s // 2, s // 2)
        assert torch.isnan(iou).all() and iou.shape == (2, 1)
        assert model.upsample_logits(low).shape == (2, 1, s, s, s)


def test_upsample_mask_equals_thresholded_upsampled_logits(model):
    g = torch.Generator().manual_seed(3)
    low = torch.randn(1, 1, 32, 32, 32, generator=g) - 2.0
    assert torch.equal(model.upsample_mask(low), model.upsample_logits(low)[0, 0] > 0)


def test_multimask_and_attention_backend_are_refused(model):
    s = model.img_size
    with pytest.raises(ValueError, match="one mask"):
        model.decode(torch.zeros(1, 1, s, s, s), None, None, multimask_output=True)
    with pytest.raises(ValueError, match="without attention"):
        build_model("volsam_fusion", attention_backend="dilated")
    with pytest.raises(ValueError, match="no attention"):
        model.set_attention_backend("dilated")


def test_config_is_checked():
    with pytest.raises(ValueError, match="multiple of 16"):
        FusionConfig(img_size=40)
    with pytest.raises(ValueError, match="same non-zero length"):
        FusionConfig(widths=(8, 16), blocks=(1,))
