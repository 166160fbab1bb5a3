from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests.fakes import ThresholdModel
from volsam.eval.metrics import dice
from volsam.io import read_image
from volsam.session import MASK_PROMPT_LOGIT, PROMPT_CHANNELS, Session
from volsam.transforms import voxel_to_window, voxel_to_world, window_to_voxel, world_to_voxel


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
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflowing integer cast on the way to the error
        with pytest.raises(ValueError, match=r"scribble point \(1e\+300, 0.0, 0.0\) is outside the volume"):
            s.add_scribble(np.array([[2.0, 3.0, 4.0], [1e300, 0.0, 0.0]]))
        for world in (False, True):  # world: the affine overflows to inf/NaN, still "outside"
            with pytest.raises(ValueError, match="outside the volume"):
                s.add_click((0.0, 1e306, 1.79e306), world=world)
    with pytest.raises(ValueError, match="affine is only for arrays"):
        s.set_image("x.nii.gz", affine=np.eye(4))


def test_default_model_without_bundled_weights_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr("volsam.models.WEIGHTS_DIR", tmp_path)
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
    assert s.add_click((180, 20, 20), positive=False).sum() == 0 and not model.calls
    mask = s.add_click((20, 20, 20)).copy()
    calls = len(model.calls)
    first = np.zeros(img.shape, bool)
    first[20:40, 10:30, 10:30] = True
    assert dice(mask > 0, first) > 0.9 and not mask[200:].any()
    again = s.add_click((180, 20, 20), positive=False)
    assert np.array_equal(again, mask) and len(model.calls) == calls and s.num_clicks == 3
    assert np.array_equal(s.undo(), mask) and s.num_clicks == 2


# --------------------------------------------------------------------------- slice boxes, strokes, initial masks


def _ball_session(model=None, spacing=(1.5, 1.5, 1.5)):
    shape = (60, 64, 50)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ball = ((ii - 30) ** 2 + (jj - 32) ** 2 + (kk - 25) ** 2) <= 12**2
    img = (10 + 100 * ball + np.random.default_rng(0).normal(0, 1, shape)).astype(np.float32)
    s = Session(model or ThresholdModel(), "cpu")
    s.set_image(img, np.diag([*spacing, 1.0]))
    return s, ball


def test_a_box_on_one_slice_gives_the_3d_object_restricted_in_plane_only():
    s, ball = _ball_session()
    s.box_margin_mm = 0.0
    mask = s.add_box((18, 20, 25), (42, 44, 25))
    assert np.array_equal(mask, ball)  # 25 slices, not the one the box was drawn on
    s.reset()
    inplane = s.add_box((24, 20, 25), (36, 44, 25))  # narrower than the ball along i
    idx = np.argwhere(inplane)
    assert idx[:, 0].min() == 24 and idx[:, 0].max() == 36 and np.unique(idx[:, 2]).size == 25
    with pytest.raises(ValueError, match="at least two axes"):
        s.add_box((30, 32, 25), (30, 32, 25))


def test_a_negative_box_is_refused_in_one_line_by_the_sam_family():
    s, _ = _ball_session()
    with pytest.raises(ValueError, match=r"^ThresholdModel cannot take a negative box; it takes box\+, ") as e:
        s.add_box((18, 20, 25), (42, 44, 25), positive=False)
    assert "\n" not in str(e.value) and not s._history


def test_a_scribble_becomes_a_few_farthest_clicks_of_its_sign():
    model = ThresholdModel()
    s, ball = _ball_session(model)
    line = np.array([[i, 32, 25] for i in range(20, 41)])
    assert np.array_equal(s.add_scribble(line), ball)
    coords, labels = model.calls[-1]["coords"][0], model.calls[-1]["labels"][0]
    assert labels.tolist() == [1, 1, 1]
    window = s.windows[0][0]
    got = np.round(window_to_voxel(coords.numpy(), s.volume.affine, window)).astype(int).tolist()
    assert got == [[30, 32, 25], [20, 32, 25], [40, 32, 25]]  # the centre, then the two ends
    s.add_scribble(line[:1], positive=False)
    assert model.calls[-1]["labels"][0].tolist() == [1, 1, 1, 0]
    with pytest.raises(ValueError, match="outside the volume"):
        s.add_scribble(np.array([[0, 0, 0], [99, 0, 0]]))


def test_a_lasso_fills_its_polygon_and_clicks_at_its_deepest_voxel():
    model = ThresholdModel()
    s, ball = _ball_session(model)
    square = np.array([[25, 27], [35, 27], [35, 37], [25, 37]])  # (i, j) on slice k = 25
    assert np.array_equal(s.add_lasso(square, axis=2, index=25), ball)
    (p,) = s._current.prompts
    assert p.kind == "lasso" and p.voxels().shape == (11 * 11, 3) and set(p.voxels()[:, 2]) == {25}
    window = s.windows[0][0]
    click = window_to_voxel(model.calls[-1]["coords"][0].numpy(), s.volume.affine, window)
    assert np.round(click).astype(int).tolist() == [[30, 32, 25]]
    with pytest.raises(ValueError, match="axis 0, 1 or 2"):
        s.add_lasso(square, axis=3, index=25)


def test_an_initial_mask_is_kept_seeds_the_mask_prompt_and_undoes_exactly():
    model = ThresholdModel()
    s, ball = _ball_session(model)
    initial = np.zeros(ball.shape, np.uint8)
    initial[24:36, 26:38, 20:30] = 1
    assert np.array_equal(s.set_initial_mask(initial), initial) and not model.calls
    assert np.array_equal(s.mask, initial) and np.array_equal(s.label_map, initial)
    assert np.array_equal(s.add_click((30, 32, 25)), ball)
    prompt = model.calls[-1]["mask_input"][0, 0]  # low-res logits of the initial mask
    g = prompt.shape[0]
    assert prompt[g // 2, g // 2, g // 2] == pytest.approx(MASK_PROMPT_LOGIT) and prompt[0, 0, 0] < 0
    assert np.array_equal(s.undo(), initial)
    assert not s.undo().any()
    with pytest.raises(ValueError, match="shaped like the image"):
        s.set_initial_mask(initial[:-1])


def test_a_negative_click_on_the_initial_mask_opens_a_window():
    model = ThresholdModel()
    s, _ = _ball_session(model)
    initial = np.zeros((60, 64, 50), np.uint8)
    initial[2:8, 2:8, 2:8] = 1
    s.set_initial_mask(initial)
    s.add_click((50, 50, 40), positive=False)  # off the mask: nothing to edit
    assert not model.calls
    s.add_click((4, 4, 4), positive=False)
    assert model.calls and model.calls[-1]["labels"][0].tolist() == [0]


def test_prompt_channels_hold_each_prompt_in_window_coordinates():
    s, _ = _ball_session(spacing=(1.0, 1.0, 4.0))  # 4 mm slices, thicker than the window's 1.5 mm
    s.add_click((30, 32, 10))
    s.add_click((31, 32, 10), positive=False)
    s.add_lasso(np.array([[25, 27], [35, 27], [35, 37], [25, 37]]), axis=2, index=10)
    s.add_scribble(np.array([[i, 40, 12] for i in range(20, 41)]), positive=False)
    window = s.windows[0][0]
    ch = s.prompt_channels(window)
    assert ch.shape == (len(PROMPT_CHANNELS), *window.shape) and ch.dtype == np.float32
    n = dict(zip(PROMPT_CHANNELS, ch.reshape(len(PROMPT_CHANNELS), -1).sum(1), strict=True))
    assert n["box+"] == n["box-"] == n["lasso-"] == n["scribble+"] == 0
    # Filled prompts cover their volume in window voxels (11 x 11 x 4 mm of lasso / 1.5^3 mm^3 = 143);
    # thin ones are never lost: each voxel marks at least the window voxel its centre rounds to.
    assert 0.8 * 143 < n["lasso+"] < 1.3 * 143
    assert n["point+"] >= 1 and n["point-"] >= 1 and n["scribble-"] >= 20 / 1.5
    click = np.floor(voxel_to_window(np.array([30.0, 32, 10]), s.volume.affine, window) + 0.5).astype(int)
    assert ch[PROMPT_CHANNELS.index("point+")][tuple(click)] == 1
    assert s.initial_in_window(window) is None
    s.undo()
    assert s.prompt_channels(window)[PROMPT_CHANNELS.index("scribble-")].sum() == 0  # undo drops the record


def test_a_stroke_failing_half_way_leaves_the_session_as_it_was(monkeypatch):
    s, ball = _ball_session()
    s.add_click((30, 32, 25))
    before = (len(s._history), len(s._current.prompts), [len(ws.clicks) for ws in s._current.windows])

    def boom(ws):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(s, "_predict", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        s.add_scribble(np.array([[25, 32, 25], [35, 32, 25]]))
    assert (len(s._history), len(s._current.prompts), [len(ws.clicks) for ws in s._current.windows]) == before
    assert np.array_equal(s.mask, ball)


def _fusion_model():
    import torch

    from volsam.config import FusionConfig
    from volsam.modeling import FusionSeg3D

    torch.manual_seed(0)
    return FusionSeg3D.from_config(FusionConfig(img_size=32, widths=(4, 8), blocks=(1, 1))).eval()


def test_an_early_fusion_model_runs_a_session_with_its_box_channel_and_undo():
    model = _fusion_model()
    seen: list[dict] = []
    decode = model.decode

    def spy(emb, coords, labels, prev=None, **kw):
        seen.append({"n": labels.shape[1], "prev": prev, **kw})
        return decode(emb, coords, labels, prev, **kw)

    model.decode = spy  # type: ignore[method-assign]
    s, _ = _ball_session(model)
    m1 = s.add_click((30, 32, 25))
    assert seen[0]["prev"] is None and "dense_prompts" not in seen[0]  # first click: no previous mask
    before = len(seen)
    m2 = s.add_click((20, 32, 25), positive=False)
    assert seen[before]["n"] == 2 and seen[before]["prev"].shape == (1, 1, 16, 16, 16)
    assert np.array_equal(s.undo(), m1)
    s.new_object()
    before = len(seen)
    s.add_box((22, 24, 25), (38, 40, 25))  # drawn on one slice
    box = seen[before]["dense_prompts"]["box_pos"]  # the box's own window (grown ones may follow)
    assert box.shape == (1, 1, 32, 32, 32) and 0 < float(box.sum()) < 32**3
    assert box.sum(dim=(2, 3))[0, 0].nonzero().numel() == 1  # one slice thick in the window
    assert m2.shape == s.label_map.shape


def test_an_early_fusion_model_refuses_a_negative_box_in_one_line():
    s, _ = _ball_session(_fusion_model())
    with pytest.raises(ValueError, match="cannot take a negative box"):
        s.add_box((22, 24, 25), (38, 40, 25), positive=False)


# --------------------------------------------------------------------------- objects: select, delete, paint


def _two_blobs_session() -> tuple[Session, np.ndarray, np.ndarray]:
    """Two bright blocks 210 mm apart (farther than a 192 mm window): a click on one segments only it."""
    shape = (200, 40, 40)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[10:30, 10:30, 10:30] = True
    b[170:190, 12:28, 12:28] = True
    img = (10 + 100 * (a | b) + np.random.default_rng(0).normal(0, 1, shape)).astype(np.float32)
    s = Session(ThresholdModel(), "cpu")
    s.set_image(img, np.diag([1.5, 1.5, 1.5, 1.0]))
    return s, a, b


def test_select_object_then_prompts_paint_undo_and_delete_edit_that_object():
    s, a, b = _two_blobs_session()
    assert np.array_equal(s.add_click((20, 20, 20)), a)
    assert s.new_object() == 2
    assert np.array_equal(s.add_click((180, 20, 20)), b)
    s.select_object(1)
    assert s.current_label == 1 and s.num_clicks == 1 and np.array_equal(s.mask, a)
    s.add_click((15, 20, 20))  # goes to object 1
    assert s.num_clicks == 2 and s._objects[1].num_clicks == 1
    s.paint(np.array([[20, 20, 20], [21, 20, 20]]), erase=True)
    lm = s.label_map
    assert lm[20, 20, 20] == 0 and lm[21, 20, 20] == 0 and (lm == 1).sum() == a.sum() - 2
    assert np.array_equal(lm == 2, b)
    s.undo()  # the eraser stroke: object 1 whole again, still current
    assert s.current_label == 1 and np.array_equal(s.label_map == 1, a)
    before = s.label_map.copy()
    assert np.array_equal(s.delete_object(1), np.where(b, 2, 0))  # object 2 keeps its label
    assert s.num_objects == 2 and s.current_label == 1 and s.num_clicks == 0
    info = s.object_labels
    assert [(o.label, o.voxels, o.current) for o in info] == [(1, 0, True), (2, int(b.sum()), False)]
    assert info[1].volume_ml == pytest.approx(b.sum() * 1.5**3 / 1000)
    s.undo()
    assert np.array_equal(s.label_map, before) and s.num_clicks == 2
    s.select_object(2)
    s.delete_object(1)  # deleting another object leaves the current one current
    assert s.current_label == 2 and np.array_equal(s.mask, b)
    assert s.new_object() == 3  # labels are never reused
    for bad in (0, 3 + 1, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"1\.\.3"):
            s.select_object(bad)
    with pytest.raises(ValueError, match=r"1\.\.3"):
        s.delete_object(4)


def test_paint_is_an_edit_layer_on_top_of_every_later_prediction():
    s, ball = _ball_session()
    brush = np.array([[5, 5, k] for k in range(3, 9)])  # a stroke far outside the ball
    m = s.paint(brush)  # on an empty object: the stroke is the mask, no model call
    assert m.sum() == 6 and m[5, 5, 3:9].all() and s.num_clicks == 0
    s.add_click((30, 32, 25))
    s.paint(np.array([[30, 32, 25], [31, 32, 25]]), erase=True)
    m = s.add_click((28, 32, 25))  # a later prediction: brush and eraser still applied on top of it
    assert m[5, 5, 3:9].all() and m[30, 32, 25] == 0 and m[31, 32, 25] == 0
    assert m.sum() == ball.sum() - 2 + 6
    s.undo()
    m = s.undo()  # the eraser stroke undone: the ball whole again, the brush stroke still on
    assert m[30, 32, 25] == 1 and m.sum() == ball.sum() + 6
    world = voxel_to_world(np.array([40.0, 40.0, 40.0]), s.volume.affine)
    assert s.paint(world[None], world=True)[40, 40, 40] == 1
    s.paint(np.array([[40, 40, 40]]), erase=True)
    with pytest.raises(ValueError, match="outside the volume"):
        s.paint(np.array([[60, 0, 0]]))
    with pytest.raises(ValueError, match=r"paint stroke must be finite points \(N, 3\)"):
        s.paint(np.array([1, 2, 3]))
    assert s.mask[40, 40, 40] == 0


# --------------------------------------------------------------------------- multi-scale windows (early fusion)


class _BrightFusion:
    """An early-fusion model that segments the image's foreground (> 0; the background is exactly 0, which
    z-normalisation over the voxels > 0 puts far below) at half resolution, whatever the prompts; records
    each call's clicks, previous mask and dense prompts."""

    def __new__(cls):
        import torch

        model = _fusion_model()
        model.calls = []

        def decode(emb, coords, labels, mask_input=None, multimask_output=False, dense_prompts=None):
            model.calls.append({"labels": labels.clone(), "prev": mask_input, "dense": dense_prompts})
            low = torch.nn.functional.avg_pool3d((emb > -2.0).float(), 2)
            return 10.0 * (low - 0.5), torch.full((1, 1), float("nan"))

        model.decode = decode
        return model


def _big_ball_session(diameter_mm: float = 150.0, **kw):
    shape = (120, 120, 120)  # 180 mm at 1.5 mm
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r = diameter_mm / 2 / 1.5
    ball = ((ii - 60) ** 2 + (jj - 60) ** 2 + (kk - 60) ** 2) <= r**2
    img = (ball * (100 + np.random.default_rng(0).normal(0, 1, shape))).astype(np.float32)
    model = _BrightFusion()
    s = Session(model, "cpu", **kw)
    s.set_image(img, np.diag([1.5, 1.5, 1.5, 1.0]))
    return s, ball, model


def test_a_click_on_a_target_larger_than_the_window_zooms_out_then_refines_along_its_border():
    s, ball, model = _big_ball_session()  # a 150 mm ball; windows of 32 voxels: 48 / 96 / 192 mm
    m = s.add_click((60, 60, 60))
    assert dice(m > 0, ball) > 0.95
    spacings = [w.spacing for w, _ in s.windows]
    assert 6.0 in spacings and 2 <= len(model.calls) <= s.max_windows
    assert model.calls[0]["prev"] is None and model.calls[1]["prev"] is not None  # zoomed with the prior
    one, _, _ = _big_ball_session(scales=(1.0,))
    assert dice(one.add_click((60, 60, 60)) > 0, ball) < 0.2  # one 48 mm window: a fraction of the ball
    before = s.label_map.copy()
    s.add_click((60, 60, 100), positive=False)  # on the mask, far from the first click
    s.undo()
    assert np.array_equal(s.label_map, before)


def test_a_box_picks_the_finest_window_that_holds_it_with_a_margin():
    s, ball, model = _big_ball_session(diameter_mm=60.0)  # 40 voxels: fits 96 mm with margin, not 48 mm
    m = s.add_box((40, 40, 40), (80, 80, 80))
    assert s._current.windows[0].window.spacing == 3.0 and s._current.windows[0].level == 1
    assert dice(m > 0, ball) > 0.95
    box = model.calls[0]["dense"]["box_pos"][0, 0]
    assert box[0].sum() == 0 and box[:, 0].sum() == 0 and box.sum() > 0  # the box channel has a border
    n = len(model.calls)
    s.add_click((60, 60, 60), positive=False)  # inside the box's window: re-predicted, prior carried
    assert model.calls[n]["labels"].tolist() == [[1, 0]] and model.calls[n]["prev"].max() > 0


def test_a_negative_click_off_the_object_adds_nothing_and_one_on_it_opens_a_window():
    s, ball, model = _big_ball_session(diameter_mm=30.0)  # fits one 48 mm window
    s.add_click((60, 60, 60))
    assert len(model.calls) == 1  # no border touched: no zoom, no refinement
    s.add_click((5, 5, 5), positive=False)
    assert len(model.calls) == 1 and s.num_clicks == 2
    init = np.zeros(ball.shape, np.uint8)
    init[50:70, 50:70, 50:70] = 1
    s.new_object()
    s.set_initial_mask(init)
    s.add_click((57, 57, 57), positive=False)  # on the initial mask: a window, with it as prior
    assert len(model.calls) == 2 and model.calls[1]["prev"].max() > 0
    assert model.calls[1]["labels"].tolist() == [[1, 0]]  # a seed at the prior's deepest point, then the click
