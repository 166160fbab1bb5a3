"""Prompt geometry of the session (volsam.prompt_geometry): strokes to clicks, lassos filled, prompts in windows."""

from __future__ import annotations

import numpy as np
import pytest

from volsam.prompt_geometry import (
    box_prompt,
    deepest_points,
    farthest_points,
    fill_polygon,
    prompt_in_window,
    to_voxel,
    voxel_set,
)
from volsam.transforms import Window, voxel_to_world


def test_farthest_points_start_at_the_centroid_then_go_to_the_ends():
    line = np.stack([np.arange(11), np.zeros(11), np.zeros(11)], -1).astype(np.int64)
    pts = farthest_points(line, np.array([1.0, 1.0, 1.0]), 3)
    assert [p.tolist() for p in pts] == [[5, 0, 0], [0, 0, 0], [10, 0, 0]]
    # Spacing counts: along a 2 mm axis the same voxel count is twice as far.
    cross = np.array([[0, 0, 0], [3, 0, 0], [0, 2, 0]])
    assert farthest_points(cross, np.array([1.0, 2.0, 1.0]), 2)[1].tolist() == [0, 2, 0]


def test_deepest_points_of_two_squares_on_one_slice():
    m = np.zeros((1, 30, 12), bool)  # one slice: the distance transform is in-plane
    m[0, 2:11, 2:11] = True  # 9 x 9, centre (6, 6)
    m[0, 18:25, 3:10] = True  # 7 x 7, centre (21, 6): deeper than half the first
    pts = deepest_points(m, np.ones(3), 3)
    assert pts.tolist() == [[0, 6, 6], [0, 21, 6]]


def test_a_box_prompt_covers_its_window_voxels_on_a_coarser_window():
    p = box_prompt(np.array([10.0, 10.0, 10.0]), np.array([13.0, 13.0, 10.0]), True)
    assert p.voxels().shape == (16, 3)
    affine = np.eye(4)
    win = Window(voxel_to_world(np.array([12.0, 12.0, 10.0]), affine), size=8, spacing=2.0)
    inside = prompt_in_window(p, affine, win)
    assert 2 <= inside.sum() <= 9 and inside[:, :, 4].any()  # the one-voxel-thin slab is never lost


def test_points_outside_the_volume_are_refused_in_one_line():
    with pytest.raises(ValueError, match="outside the volume"):
        to_voxel((0, 0, 10), np.eye(4), (5, 5, 5), False)
    assert to_voxel((4.4, 0, -0.4), np.eye(4), (5, 5, 5), False).tolist() == [4.4, 0, -0.4]
    with pytest.raises(ValueError, match=r"point \(5.0, 0.0, 0.0\) is outside"):
        voxel_set(np.array([[1, 1, 1], [5, 0, 0]]), np.eye(4), (5, 5, 5), False, "scribble")
    got = voxel_set(np.array([[1, 1, 1], [1.2, 1, 1]]), np.eye(4), (5, 5, 5), False, "scribble")
    assert got.tolist() == [[1, 1, 1]]


@pytest.mark.parametrize("far", [1e3, 1e9])
def test_a_lasso_vertex_far_outside_the_slice_costs_nothing_and_clips(far: float):
    # A triangle whose far corners lie outside a 40 x 30 slice: it covers every voxel with u, v >= 2 there.
    # The outline of an edge 1e9 voxels long was once sampled every half voxel (32 GB: a MemoryError or the
    # OOM killer); only its part inside the slice is sampled now. Farther vertices are refused.
    got = fill_polygon(np.array([[2.0, 2.0], [far, 2.0], [2.0, far]]), (40, 30))
    uu, vv = np.meshgrid(np.arange(2, 40), np.arange(2, 30), indexing="ij")
    assert np.array_equal(got, np.stack([uu.ravel(), vv.ravel()], -1))
    thin = fill_polygon(np.array([[-far, 5.0], [far, 5.0], [far, 5.0]]), (40, 30))  # a line across the slice
    assert np.array_equal(thin, np.stack([np.arange(40), np.full(40, 5)], -1))
    with pytest.raises(ValueError, match="within 1e"):
        fill_polygon(np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 9.2e18]]), (40, 30))
