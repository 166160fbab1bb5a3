from __future__ import annotations

import pytest
import torch
from torch import nn

from volsam import build_model
from volsam.modeling.common import PatchConvTranspose3d


@pytest.mark.parametrize("seed", range(40))
def test_cropped_mask_upsampling_equals_full(seed):
    model = build_model("fastsam3d_mini")
    g = torch.Generator().manual_seed(seed)
    if seed % 2:
        low = torch.randn(1, 1, 32, 32, 32, generator=g) - 2.5
    else:  # one blob, possibly at the border
        low = torch.full((1, 1, 32, 32, 32), -2.0)
        a = torch.randint(0, 30, (3,), generator=g)
        low[0, 0, a[0] : a[0] + 3, a[1] : a[1] + 5, a[2] : a[2] + 2] = 0.5 + torch.rand(1, generator=g)
    assert torch.equal(model.upsample_mask(low), model.upsample_logits(low)[0, 0] > 0)


def test_empty_low_res_gives_empty_mask():
    model = build_model("fastsam3d_mini")
    assert not model.upsample_mask(torch.full((1, 1, 32, 32, 32), -1.0)).any()


def test_patch_transposed_convolution_equals_torch_one():
    torch.manual_seed(0)
    c, d = nn.ConvTranspose3d(96, 48, 2, 2), PatchConvTranspose3d(96, 48, 2, 2)
    d.load_state_dict(c.state_dict())
    x = torch.randn(2, 96, 8, 8, 8)
    assert torch.allclose(c(x), d(x), atol=1e-5)
