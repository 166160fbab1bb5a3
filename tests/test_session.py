from __future__ import annotations

import numpy as np
import pytest

from tests.fakes import ThresholdModel
from volsam.eval.metrics import dice
from volsam.io import read_image
from volsam.session import Session
from volsam.transforms import voxel_to_world, world_to_voxel


def _scene(affine: np.ndarray, shape=(90, 100, 60), centre_mm=(5.0, -10.0, 8.0), half_mm=(18.0, 12.0, 15.0)):
    """Dark volume with a bright box of known world extent; returns image, truth, centre voxel."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    xyz = voxel_to_world(ijk, affine).reshape(*shape, 3)
    truth = np.all(np.abs(xyz - np.asarray(centre_mm)) <= np.asarray(half_mm), axis=-1)
    rng = np.random.default_rng(0)
    img = (10 + 100 * truth + rng.normal(0, 1, shape)).astype(np.float32)
    return img, truth, world_to_voxel(np.asarray(centre_mm), affine)


def _affine(kind: str) -> np.ndarray:
    if kind == "anisotropic":
        a = np.diag([0.8, 1.1, 2.5, 1.0])
    elif kind == "flipped":
        a = np.diag([-0.9, -1.0, 2.0, 1.0])
        a[:3, :3] = a[:3, [1, 0, 2]]  # axis permutation too
    else:  # oblique
        t = np.deg2rad(25)
        rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
        a = np.eye(4)
        a[:3, :3] = rot @ np.diag([1.0, 1.2, 1.8])
    a[:3, 3] = -a[:3, :3] @ (np.array([90, 100, 60]) / 2)
    return a


@pytest.mark.parametrize("kind", ["anisotropic", "flipped", "oblique"])
def test_click_returns_structure_in_place(kind):
    affine = _affine(kind)
    img, truth, centre = _scene(affine)
    s = Session(ThresholdModel())
    s.set_image(img, affine)
    mask = s.add_click(tuple(np.round(centre)))
    assert mask.shape == img.shape and mask.dtype == np.uint8
    assert dice(mask > 0, truth) > 0.95


def test_world_click_equals_voxel_click():
    affine = _affine("oblique")
    img, _, centre = _scene(affine)
    s = Session(ThresholdModel())
    s.set_image(img, affine)
    a = s.add_click(tuple(np.round(centre)))
    s.reset()
    b = s.add_click(tuple(voxel_to_world(np.round(centre), affine)), world=True)
    assert np.array_equal(a, b)


def test_refinement_passes_all_clicks_and_previous_logits():
    affine = _affine("anisotropic")
    img, _, c = _scene(affine)
    model = ThresholdModel()
    s = Session(model)
    s.set_image(img, affine)
    s.add_click(tuple(np.round(c)))
    assert s.timings.windows_encoded == 1
    s.add_click(tuple(np.round(c) + 3), positive=False)
    assert s.timings.windows_encoded == 0  # cached embedding
    first, second = model.calls
    assert not first["mask_input"].any()  # zeros before the first click
    assert second["labels"].tolist() == [[1, 0]]
    assert np.allclose(second["coords"][0, 0].numpy(), [64, 64, 64], atol=0.5)  # window centred on click 1
    assert second["mask_input"].abs().sum() > 0  # previous low-res logits fed back


def test_target_longer_than_window_grows_windows():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    shape = (420, 60, 60)
    img, truth, c = _scene(affine, shape=shape, centre_mm=(210.0, 30.0, 30.0), half_mm=(200.0, 20.0, 20.0))
    one = Session(ThresholdModel(), max_windows=1)
    one.set_image(img, affine)
    m1 = one.add_click(tuple(np.round(c)))
    many = Session(ThresholdModel(), max_windows=6)
    many.set_image(img, affine)
    m6 = many.add_click(tuple(np.round(c)))
    assert dice(m1 > 0, truth) < 0.7  # 192 mm window covers under half of a 400 mm bar
    assert dice(m6 > 0, truth) > 0.95
    assert 2 <= len(many.windows) <= 6


def test_undo_reset_and_objects_policy():
    affine = _affine("anisotropic")
    img, _, c = _scene(affine)
    s = Session(ThresholdModel())
    s.set_image(img, affine)
    m1 = s.add_click(tuple(np.round(c)))
    s.add_click(tuple(np.round(c) + 2))
    assert np.array_equal(s.undo(), m1) and s.num_clicks == 1
    label = s.new_object()
    assert label == 2
    m2 = s.add_click(tuple(np.round(c)))  # same structure: earlier object keeps its voxels
    assert m2.sum() == 0
    assert set(np.unique(s.label_map)) == {0, 1}
    s.undo()
    s.undo()  # back past new_object to object 1 with one click
    assert np.array_equal(s.mask, m1)
    s.reset()
    assert s.label_map.sum() == 0 and s.num_clicks == 0
    with pytest.raises(ValueError, match="nothing to undo"):
        s.undo()

    w = Session(ThresholdModel(), overwrite=True)
    w.set_image(img, affine)
    w.add_click(tuple(np.round(c)))
    w.new_object()
    w.add_click(tuple(np.round(c)))
    assert set(np.unique(w.label_map)) == {0, 2}


def test_box_restricts_the_result():
    affine = _affine("anisotropic")
    img, _, c = _scene(affine)
    s = Session(ThresholdModel(), box_margin_mm=0.0)
    s.set_image(img, affine)
    lo, hi = np.round(c) - 4, np.round(c) + 4
    mask = s.add_box(tuple(lo), tuple(hi))
    idx = np.argwhere(mask)
    assert idx.min(0).tolist() >= lo.tolist() and idx.max(0).tolist() <= hi.tolist()
    assert mask.sum() == np.prod(hi - lo + 1)  # the box lies inside the bright structure


def test_bad_clicks_are_value_errors():
    s = Session(ThresholdModel())
    with pytest.raises(ValueError, match="no image set"):
        s.add_click((1, 2, 3))
    s.set_image(np.zeros((10, 12, 14), np.float32))
    with pytest.raises(ValueError, match=r"outside the volume of shape \(10, 12, 14\)"):
        s.add_click((10, 0, 0))
    with pytest.raises(ValueError, match="3 finite numbers"):
        s.add_click((1, 2))
    with pytest.raises(ValueError, match="affine is only for arrays"):
        s.set_image("x.nii.gz", affine=np.eye(4))


def test_default_model_without_bundled_weights_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr("volsam.session.WEIGHTS_DIR", tmp_path)
    with pytest.raises(ValueError, match="default model's weights are not bundled"):
        Session()


def test_real_model_on_colin27(mricron_dir, tmp_path):
    s = Session("fastsam3d_mini", random_weights=True)
    s.set_image(mricron_dir / "ch2.nii.gz")
    mask = s.add_click((90, 108, 90))
    mask = s.add_click((60, 108, 90), positive=False)
    assert mask.shape == (181, 217, 181) and mask.dtype == np.uint8
    out = s.save(tmp_path / "m.nii.gz")
    back = read_image(out, dtype=None)
    assert np.array_equal(back.array, s.label_map) and np.allclose(back.affine, s.volume.affine)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
def test_compiled_session_gives_the_eager_masks_as_the_click_count_grows():
    """compile=True (encoder and decoder through torch.compile, ~80 s on 2 CPU cores): the second click
    count recompiles, the third runs on the now-dynamic graph; each click's mask is the eager one."""
    import torch

    torch.manual_seed(0)
    img = np.zeros((64, 64, 64), np.float32)
    img[20:40, 20:40, 20:40] = 100
    compiled = Session("fastsam3d_mini", "cpu", compile=True, random_weights=True)
    eager = Session(compiled.model, "cpu")
    assert compiled.runtime.compile and not eager.runtime.compile
    for s in (compiled, eager):
        s.set_image(img)
    for point, positive in (((30, 30, 30), True), ((22, 38, 30), False), ((36, 24, 25), True)):
        want = eager.add_click(point, positive=positive).copy()
        got = compiled.add_click(point, positive=positive)
        assert want.sum() > 0
        # Fused kernels may round differently; a voxel whose logit is within rounding of 0 can flip.
        assert np.count_nonzero(got != want) <= 1e-3 * want.sum()


def test_negative_click_outside_every_window_adds_nothing():
    img = np.random.default_rng(0).normal(10, 1, (300, 40, 40)).astype(np.float32)  # 300 mm > a 192 mm window
    img[20:40, 10:30, 10:30] += 100
    img[260:280, 10:30, 10:30] += 100  # bright, so a window opened there would segment it
    model = ThresholdModel()
    s = Session(model)
    s.set_image(img)
    assert s.add_click((270, 20, 20), positive=False).sum() == 0 and not model.calls
    mask = s.add_click((30, 20, 20)).copy()
    calls = len(model.calls)
    first = np.zeros(img.shape, bool)
    first[20:40, 10:30, 10:30] = True
    assert dice(mask > 0, first) > 0.9 and not mask[200:].any()
    again = s.add_click((270, 20, 20), positive=False)
    assert np.array_equal(again, mask) and len(model.calls) == calls and s.num_clicks == 3
    assert np.array_equal(s.undo(), mask) and s.num_clicks == 2
