"""CVPR 2025 challenge format: reading cases, the inference contract, and evaluation of .npz folders."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from volsam import challenge
from volsam.cli import main
from volsam.eval.metrics import cvpr25_case_scores

SHAPE = (20, 36, 32)  # (D, H, W)
SPACING = (2.5, 1.0, 1.25)  # mm per array axis (D, H, W)


def _gts() -> np.ndarray:
    g = np.zeros(SHAPE, dtype=np.uint8)
    g[5:13, 8:20, 6:16] = 1
    g[8:16, 22:32, 18:28] = 2
    return g


def _box(mask: np.ndarray) -> dict[str, int]:
    """The challenge's box of a (D, H, W) mask without the random enlargement (get_boxes.py's rule)."""
    z = np.nonzero(mask)[0]
    zm = int(z[len(z) // 2])
    yy, xx = np.nonzero(mask[zm])
    return {
        "z_min": int(z.min()),
        "z_max": int(z.max()),
        "z_mid": zm,
        "z_mid_x_min": int(xx.min()),
        "z_mid_y_min": int(yy.min()),
        "z_mid_x_max": int(xx.max()),
        "z_mid_y_max": int(yy.max()),
    }


def _write_case(path, *, boxes=True, clicks=None, clicks_order=None, prev_pred=None, gts=True) -> None:
    g = _gts()
    rng = np.random.default_rng(0)
    imgs = (rng.integers(0, 40, SHAPE) + 150 * (g > 0)).astype(np.uint8)
    data = {"imgs": imgs, "spacing": np.array(SPACING)}
    if gts:
        data["gts"] = g
    if boxes:
        data["boxes"] = [_box(g == 1), _box(g == 2)]
    if clicks is not None:
        data["clicks"] = clicks
        data["clicks_order"] = _objects(clicks_order)  # ragged per class; equal lengths give a 2D str array
    if prev_pred is not None:
        data["prev_pred"] = prev_pred
    np.savez_compressed(path, **data)


def _objects(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, v in enumerate(items):
        out[i] = v
    return out


class FakeSession:
    """Records prompts in volsam voxel order and paints them: a box fills its voxels, a positive click a
    3^3 cube, a negative click clears one; objects share one label map like volsam's Session."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def set_image(self, vol) -> None:
        self.vol = vol
        self.lm = np.zeros(vol.shape, dtype=np.uint8)
        self.label = 1

    def new_object(self) -> int:
        self.label += 1
        self.calls.append(("new",))
        return self.label

    def add_box(self, lo, hi):
        self.calls.append(("box", tuple(lo), tuple(hi)))
        sl = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
        self.lm[sl][self.lm[sl] == 0] = self.label
        return self.lm == self.label

    def add_click(self, point, positive=True):
        self.calls.append(("click", tuple(point), positive))
        i, j, k = (int(v) for v in point)
        if positive:
            sl = (slice(i - 1, i + 2), slice(j - 1, j + 2), slice(k - 1, k + 2))
            self.lm[sl][self.lm[sl] == 0] = self.label
        elif self.lm[i, j, k] == self.label:
            self.lm[i, j, k] = 0
        return self.lm == self.label

    @property
    def label_map(self):
        return self.lm


def test_volume_is_the_image_in_volsam_voxel_order(tmp_path):
    _write_case(tmp_path / "c.npz")
    case = challenge.read_case(tmp_path / "c.npz")
    vol = challenge.case_volume(case)
    assert vol.shape == (SHAPE[2], SHAPE[1], SHAPE[0])
    assert vol.array[7, 11, 3] == case.imgs[3, 11, 7]
    assert vol.spacing == pytest.approx((1.25, 1.0, 2.5))
    lo, hi = challenge.box_prompt(case.boxes[0])
    assert lo == (6, 8, 5) and hi == (15, 19, 12)  # class 1 occupies z 5..12, y 8..19, x 6..15
    assert challenge.click_prompt([3, 11, 7]) == (7.0, 11.0, 3.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("spacing"), "needs keys 'imgs' and 'spacing'"),
        (lambda d: d.update(spacing=np.array([1.0, 0.0, 1.0])), "3 positive numbers"),
        (lambda d: d.update(imgs=np.zeros((4, 4), np.uint8)), "must be 3D"),
        (lambda d: d.update(boxes=[{"z_min": 1}]), "box 0 must be a dict with keys"),
        (lambda d: d.update(clicks=[{"fg": []}]), "prompt lists differ in length"),
        (lambda d: d.update(gts=np.zeros((3, 3, 3), np.uint8)), "'gts' has shape"),
    ],
)
def test_read_case_names_what_is_wrong(tmp_path, change, message):
    _write_case(tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=True) as z:
        data = {k: z[k] for k in z.files}
    change(data)
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(ValueError, match=message):
        challenge.read_case(tmp_path / "bad.npz")


def test_predict_replays_box_then_clicks_in_order_and_keeps_prev_pred_for_unprompted(tmp_path):
    g = _gts()
    prev = np.zeros(SHAPE, np.uint8)
    prev[0:2, 0:2, 0:2] = 3  # a third class with no prompt at all this step
    clicks = [{"fg": [[9, 14, 11], [6, 9, 7]], "bg": [[12, 19, 15]]}, {"fg": [[12, 27, 23]], "bg": []}, {}]
    order = [["fg", "bg", "fg"], ["fg"], []]
    np.savez(
        tmp_path / "c.npz",
        imgs=g * 100,
        spacing=np.array(SPACING),
        clicks=np.array(clicks, dtype=object),
        clicks_order=np.array(order, dtype=object),
        prev_pred=prev,
    )
    # Three classes, no boxes: prompts are clicks only; class 3 has none and keeps prev_pred's voxels.
    case = challenge.read_case(tmp_path / "c.npz")
    fake = FakeSession()
    segs = challenge.predict_case(fake, case)
    assert fake.calls == [
        ("click", (11.0, 14.0, 9.0), True),
        ("click", (15.0, 19.0, 12.0), False),
        ("click", (7.0, 9.0, 6.0), True),
        ("new",),
        ("click", (23.0, 27.0, 12.0), True),
        ("new",),
    ]
    assert segs.dtype == np.uint8 and segs.shape == SHAPE
    assert segs[9, 14, 11] == 1 and segs[12, 27, 23] == 2
    assert np.array_equal(segs == 3, prev == 3)


def test_challenge_predict_round_trip_with_the_shipped_model(tmp_path, capsys):
    src, dst = tmp_path / "inputs", tmp_path / "outputs"
    src.mkdir()
    clicks = [{"fg": [[9, 14, 11]], "bg": [[12, 19, 15]]}, {"fg": [[12, 27, 23]], "bg": []}]
    order = [["fg", "bg"], ["fg"]]
    prev = _gts()
    _write_case(src / "case_a.npz", clicks=clicks, clicks_order=order, prev_pred=prev, gts=False)
    (src / "broken.npz").write_bytes(b"not an npz")
    before = (src / "case_a.npz").read_bytes()
    rc = main(["challenge-predict", "--input", str(src), "--output", str(dst), "--no-progress"])
    assert rc == 1  # the broken file fails, the good case is still written
    err = capsys.readouterr().err
    assert "failed broken" in err and "wrote 1 of 2" in err
    assert (src / "case_a.npz").read_bytes() == before  # input untouched
    with np.load(dst / "case_a.npz") as z:
        assert z.files == ["segs"]
        segs = z["segs"]
    assert segs.dtype == np.uint8 and segs.shape == SHAPE
    assert set(np.unique(segs)) <= {0, 1, 2}
    g = _gts()
    for c in (1, 2):  # the shipped model finds each bright block from its box + clicks
        inter = np.logical_and(segs == c, g == c).sum()
        assert 2 * inter / ((segs == c).sum() + (g == c).sum()) > 0.5, c
    assert not (dst / "broken.npz").exists()


def test_case_scores_average_classes_per_step_and_threshold_the_mean():
    # two classes, box + 2 clicks (n_clicks=2 -> AUC over the last 2 steps)
    dscs = [[0.1, 0.5, 0.9], [0.1, 0.3, 0.7]]
    nsds = [[0.0, 0.6, 1.0], [0.0, 0.4, 0.8]]
    s = cvpr25_case_scores(dscs, nsds, n_clicks=2)
    assert s["DSC_Final"] == pytest.approx(0.8)
    assert s["NSD_Final"] == pytest.approx(0.9)
    assert s["DSC_AUC"] == pytest.approx((0.4 + 0.8) / 2)
    assert s["NSD_AUC"] == pytest.approx((0.5 + 0.9) / 2)
    low = cvpr25_case_scores([[0.1, 0.3], [0.1, 0.05]], [[0.5, 0.9], [0.5, 0.9]], n_clicks=2)
    assert low["NSD_Final"] == 0.0  # mean DSC 0.175 <= 0.2


def test_evaluate_reads_challenge_cases_uses_their_boxes_and_skips_a_missing_box(tmp_path, capsys):
    data = tmp_path / "npz"
    data.mkdir()
    _write_case(data / "with_box.npz")
    _write_case(data / "no_box.npz", boxes=False)
    out = tmp_path / "report"
    rc = main(["evaluate", "--data", str(data), "--clicks", "2", "-o", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["protocol"] == "cvpr25"  # chosen for a challenge folder
    ch = summary["overall"]["cvpr25_cases"]
    assert ch["n_cases"] == 2 and set(ch) >= {"DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final"}
    by_case = {c["case"]: c["cvpr25"] for c in summary["cases"]}
    assert set(by_case) == {"with_box", "no_box"}
    assert 0.0 <= ch["DSC_Final"] <= 1.0 and 0.0 <= ch["DSC_AUC"] <= 1.0  # AUC over 2 click steps: max 1
    rows = list(csv.DictReader((out / "per_click.csv").open()))
    step0 = {(r["case"], int(r["target_value"])): r for r in rows if r["step"] == "0"}
    g = _gts()
    for value in (1, 2):  # the box given in the file, in volsam voxel order
        lo, hi = challenge.box_prompt(_box(g == value))
        assert step0[("with_box", value)]["click_kind"] == "box"
        assert step0[("with_box", value)]["click_voxel"] == " ".join(str(v) for v in (*lo, *hi))
        assert step0[("no_box", value)]["click_kind"] == "none"  # skipped, scored 0, as the challenge does
        assert float(step0[("no_box", value)]["dice"]) == 0.0
    assert "challenge (per case)" in (out / "summary.md").read_text()


def test_predict_sh_runs_the_contract_in_a_workspace(tmp_path):
    """docker/challenge/predict.sh as the evaluator calls it (`sh predict.sh`), with /workspace moved to tmp."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ws = tmp_path / "workspace"
    (ws / "inputs").mkdir(parents=True)
    (ws / "outputs").mkdir()
    _write_case(ws / "inputs" / "case_b.npz", gts=False)
    shim = tmp_path / "bin"
    shim.mkdir()
    py = shim / "python3"  # the image's python3; here this interpreter (a wrapper keeps its virtualenv)
    py.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    py.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(root / "src"),
        "VOLSAM_WORKSPACE": str(ws),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("VOLSAM_MODEL", None)
    proc = subprocess.run(
        ["sh", str(root / "docker" / "challenge" / "predict.sh")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(ws / "outputs" / "case_b.npz") as z:
        assert z["segs"].shape == SHAPE and z["segs"].dtype == np.uint8
        assert set(np.unique(z["segs"])) == {0, 1, 2}  # both boxed classes segmented


@pytest.mark.parametrize("random_weights", [False, True])
def test_challenge_predict_passes_random_weights_to_the_model(tmp_path, capsys, random_weights):
    """challenge-predict accepts --random-weights and hands it to each case's session (it was once dropped)."""
    src, dst = tmp_path / "inputs", tmp_path / "outputs"
    src.mkdir()
    _write_case(src / "case_a.npz", gts=False)
    argv = ["challenge-predict", "--input", str(src), "--output", str(dst), "--no-progress"]
    argv += ["--model", "sam_med3d_mini"] + (["--random-weights"] if random_weights else [])
    rc = main(argv)
    err = capsys.readouterr().err
    if random_weights:
        assert rc == 0 and (dst / "case_a.npz").is_file()
    else:  # every case fails with the one-line refusal
        assert rc != 0 and "--random-weights" in err and not (dst / "case_a.npz").exists()
