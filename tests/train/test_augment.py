from __future__ import annotations

import torch

from volsam.train.augment import BatchAugmentConfig, augment_batch


def _batch(b: int = 3, s: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.randn(b, 1, s, s, s, generator=torch.Generator().manual_seed(0))
    tgt = torch.zeros(b, 2, s, s, s)
    tgt[:, 0, 8:16, 9:15, 10:14] = 1
    tgt[:, 1, 2:6, 2:6, 2:6] = 1
    return img, tgt


def test_shapes_binary_targets_and_seeded():
    img, tgt = _batch()
    a = augment_batch(img, tgt, torch.Generator().manual_seed(5))
    b = augment_batch(img, tgt, torch.Generator().manual_seed(5))
    c = augment_batch(img, tgt, torch.Generator().manual_seed(6))
    assert a[0].shape == img.shape and a[1].shape == tgt.shape
    assert set(torch.unique(a[1]).tolist()) <= {0.0, 1.0}
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_identity_settings_leave_the_batch_unchanged():
    img, tgt = _batch()
    cfg = BatchAugmentConfig(
        spatial_prob=1.0, rotate_deg=0.0, scale=(1.0, 1.0), flip_prob=0.0, elastic_prob=0.0, gamma_std=0.0,
        contrast=(1.0, 1.0), brightness_std=0.0, noise_max=0.0,
    )
    out_img, out_tgt = augment_batch(img, tgt, torch.Generator().manual_seed(0), cfg)
    assert torch.allclose(out_img, img, atol=1e-5)
    assert torch.equal(out_tgt, tgt)


def test_a_flip_mirrors_image_and_target_along_the_first_axis_together():
    img, tgt = _batch()
    cfg = BatchAugmentConfig(
        spatial_prob=1.0, rotate_deg=0.0, scale=(1.0, 1.0), flip_prob=1.0, elastic_prob=0.0, gamma_std=0.0,
        contrast=(1.0, 1.0), brightness_std=0.0, noise_max=0.0,
    )
    out_img, out_tgt = augment_batch(img, tgt, torch.Generator().manual_seed(0), cfg)
    assert torch.allclose(out_img, img.flip(2), atol=1e-5)
    assert torch.equal(out_tgt, tgt.flip(2))


def test_rotation_keeps_target_volume_roughly():
    img, tgt = _batch()
    cfg = BatchAugmentConfig(spatial_prob=1.0, scale=(1.0, 1.0), elastic_prob=1.0)
    _, out = augment_batch(img, tgt, torch.Generator().manual_seed(1), cfg)
    v0, v1 = tgt[:, 0].sum().item(), out[:, 0].sum().item()
    assert 0.7 * v0 < v1 < 1.3 * v0


def test_thick_slices_blur_one_axis_only():
    from volsam.train.augment import thick_slices

    g = torch.Generator().manual_seed(0)
    image = torch.randn(6, 1, 32, 32, 32, generator=g)
    spacing = torch.tensor([1.5, 1.5, 1.5, 1.5, 1.5, 6.0])
    out = thick_slices(image, spacing, torch.Generator().manual_seed(1), prob=1.0)
    assert out.shape == image.shape
    assert torch.equal(out[5], image[5])  # 6 mm windows: a 3-7 mm slab is at most ~1 voxel, unchanged
    for j in range(5):
        diff = (out[j] - image[j]).abs()
        assert diff.mean() > 0.1
        # white noise averaged over slabs along one axis: that axis's neighbours become alike, the others not
        corr = []
        for a in range(3):
            v = out[j].movedim(a + 1, 0)
            corr.append(torch.corrcoef(torch.stack([v[:-1].flatten(), v[1:].flatten()]))[0, 1])
        assert sum(c > 0.5 for c in corr) == 1 and sum(c < 0.2 for c in corr) == 2
    none = thick_slices(image, spacing, torch.Generator().manual_seed(1), prob=0.0)
    assert torch.equal(none, image)
