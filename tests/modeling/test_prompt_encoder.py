from __future__ import annotations

import torch


def test_click_prior_by_hand_and_in_decode():
    from dataclasses import replace

    from volsam.modeling import Sam3D
    from volsam.modeling.prompt_encoder import click_prior
    from volsam.registry import model_config

    coords = torch.tensor([[[65.5, 9.5, 30.0], [1.5, 1.5, 1.5], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 0, -1]])
    m = click_prior(coords, labels, 32, 128, 6.0, 8.0)
    assert m.shape == (1, 1, 32, 32, 32)
    # cell (16, 2, 7) has centre (65.5, 9.5, 29.5): 0.5 voxel from the positive click
    assert torch.isclose(m[0, 0, 16, 2, 7], 8.0 * torch.exp(torch.tensor(-0.25 / 72)), atol=1e-3)
    assert torch.isclose(m[0, 0, 0, 0, 0], torch.tensor(-8.0), atol=1e-3)  # the negative click's cell
    # the padding point contributes nothing: same map without it
    assert torch.allclose(m, click_prior(coords[:, :2], labels[:, :2], 32, 128, 6.0, 8.0))
    # decode with the prior == decode without it, given the prior as the mask prompt
    cfg = model_config("fastsam3d_mini")
    with_prior = replace(cfg, prompt=replace(cfg.prompt, click_prior_sigma=6.0))
    torch.manual_seed(0)
    a = Sam3D.from_config(with_prior).eval()
    b = Sam3D.from_config(cfg).eval()
    b.load_state_dict(a.state_dict())
    emb = torch.randn(1, cfg.encoder.out_chans, 8, 8, 8)
    zeros = torch.zeros(1, 1, 32, 32, 32)
    with torch.no_grad():
        la, _ = a.decode(emb, coords, labels, zeros)
        lb, _ = b.decode(emb, coords, labels, m)
    assert torch.allclose(la, lb, atol=1e-5)
