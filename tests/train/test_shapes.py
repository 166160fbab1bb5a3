"""Procedural training volumes: every shape a connected target whose border is an image edge."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from volsam.train.shapes import MIN_SHAPE_VOXELS, shapes_volume


def test_shapes_volume_targets_are_visible_connected_objects():
    image, lab = shapes_volume(np.random.default_rng(3), size=64, shapes=8)
    assert image.shape == lab.shape == (64, 64, 64) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert set(np.unique(lab[lab < 0]).tolist()) <= {-3, -2, -1}  # tissue filler, never a target
    shapes = np.unique(lab[lab > 0])
    assert len(shapes) >= 3 and shapes.tolist() == list(range(1, len(shapes) + 1))
    for v in shapes:
        m = lab == v
        _, pieces = ndimage.label(m, structure=np.ones((3, 3, 3)))
        assert pieces == 1 and m.sum() >= MIN_SHAPE_VOXELS
        ring = ndimage.binary_dilation(m, iterations=2) & ~m & (lab < 0)
        if ring.sum() > 50:  # a border with tissue is an edge: the shape's mean differs from its surroundings
            assert abs(float(image[m].mean()) - float(image[ring].mean())) > 0.05
