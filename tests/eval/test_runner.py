from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from volsam.cli import main
from volsam.eval import runner
from volsam.eval.datasets import load_dataset, validate_case
from volsam.eval.runner import evaluate
from volsam.io import Volume

# Small enough (43 x 48 x 48 mm) that a 192 mm window covers it whatever the random model predicts, so
# the Session never opens extra windows: keeps the real-model runs fast.
SHAPE = (48, 48, 24)
AFFINE = np.array(
    [
        [-0.9, 0.0, 0.0, 40.0],
        [0.0, 1.0, 0.0, -30.0],
        [0.0, 0.0, 2.0, -50.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
CLICKS = 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ellipsoid(center: tuple[float, float, float], radii: tuple[float, float, float]) -> np.ndarray:
    i, j, k = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return ((i - center[0]) / radii[0]) ** 2 + ((j - center[1]) / radii[1]) ** 2 + (
        (k - center[2]) / radii[2]
    ) ** 2 <= 1.0


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _case(shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (background 0, target 1 = 100, target 2 = 200) and its label map."""
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[_ellipsoid((14 + shift, 16, 8), (7, 6, 4))] = 1
    lab[_ellipsoid((33, 30 - shift, 15), (6, 8, 4))] = 2
    return (lab.astype(np.float32) * 100.0), lab


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nnU-Net raw folder: two good cases and one whose label grid differs from its image."""
    root = tmp_path_factory.mktemp("data") / "Dataset900_Blobs"
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "left": 1, "right": 2}, "file_ending": ".nii.gz"}
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for n, shift in ((1, 0), (2, 4)):
        img, lab = _case(shift)
        _save(root / "imagesTr" / f"blob_{n:03d}_0000.nii.gz", img)
        _save(root / "labelsTr" / f"blob_{n:03d}.nii.gz", lab)
    img, lab = _case(2)
    _save(root / "imagesTr" / "blob_003_0000.nii.gz", img)
    _save(root / "labelsTr" / "blob_003.nii.gz", lab[:, :, :20])  # grid mismatch
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _numbers(rows: list[dict[str, str]]) -> list[tuple[str, ...]]:
    """Everything but the timings."""
    return [tuple(v for k, v in r.items() if not k.endswith("_ms")) for r in rows]


@pytest.fixture(scope="module")
def cli_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("out_serial")
    argv = ["evaluate", "--data", str(dataset), "--model", "fastsam3d_mini", "--random-weights"]
    argv += ["--protocol", "sam_med3d"]
    argv += ["--clicks", str(CLICKS), "-o", str(out), "--device", "cpu", "--no-progress", "--window-metrics"]
    return main(argv), out


def test_cli_evaluate(cli_run: tuple[int, Path], capsys: pytest.CaptureFixture[str]):
    code, out = cli_run
    assert code == 1  # one case skipped
    names = ("per_click.csv", "summary.json", "summary.md", "dice_vs_clicks.png", "best_case.png", "worst_case.png")
    for name in names:
        assert (out / name).is_file(), name
    for name in names[3:]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    rows = _rows(out / "per_click.csv")
    assert len(rows) == 2 * 2 * CLICKS  # cases x targets x steps
    assert {r["case"] for r in rows} == {"blob_001", "blob_002"}
    assert [r["step"] for r in rows[:CLICKS]] == ["1", "2", "3"]
    assert rows[0]["click_kind"] == "positive" and len(rows[0]["click_voxel"].split()) == 3
    assert all(0.0 <= float(r["dice"]) <= 1.0 and 0.0 <= float(r["window_dice"]) <= 1.0 for r in rows)
    assert all(float(r["encode_ms"]) >= 0 and float(r["click_ms"]) > 0 for r in rows if r["click_kind"] != "none")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["protocol"] == "sam_med3d" and summary["config"]["grid"] == "original+window"
    assert summary["config"]["nsd_tolerance_mm"] == 1.0 and summary["config"]["volsam_version"]
    assert [s["case"] for s in summary["skipped"]] == ["blob_003"]
    assert "grid mismatch" in summary["skipped"][0]["reason"]
    assert set(summary["per_target"]) == {"left", "right"}
    assert len(summary["per_target"]["left"]["dice"]) == CLICKS and summary["per_target"]["left"]["n"] == 2
    assert len(summary["cases"]) == 2 and summary["cases"][0]["encode_ms"] > 0
    md = (out / "summary.md").read_text()
    assert "| left |" in md and "mean NSD (1 mm)" in md and "blob_003" in md and "original image grid" in md


def _key(records) -> list[tuple]:
    """Records without their timings."""
    return [(r.case, r.target_name, r.step, r.kind, r.voxel, r.dice, r.nsd, r.hd95, r.window_dice) for r in records]


def test_serial_equals_parallel(dataset: Path, tmp_path: Path):
    """Two independent runs, one serial and one in 2 worker processes, give identical numbers.

    Workers use cores // 2 torch threads; the serial run uses as many, since float rounding in the model's
    kernels depends on the thread count.
    """
    common = dict(labels=["left"], device="cpu", progress=False, window_metrics=True, write=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, runner._cores() // 2))
    try:
        serial = evaluate(dataset, "fastsam3d_mini", "sam_med3d", CLICKS, tmp_path, random_weights=True, **common)
    finally:
        torch.set_num_threads(threads)
    par = evaluate(dataset, "fastsam3d_mini", "sam_med3d", CLICKS, tmp_path, workers=2, random_weights=True, **common)
    assert len(serial.records) == 2 * CLICKS
    assert _key(par.records) == _key(serial.records)
    assert par.skipped == serial.skipped and len(par.skipped) == 1
    assert par.overall == serial.overall


def test_cvpr25_protocol(dataset: Path, tmp_path: Path):
    kw = {"labels": ["right"], "device": "cpu", "progress": False, "random_weights": True}
    s = evaluate(dataset, "fastsam3d_mini", "cvpr25", 2, tmp_path, **kw)
    assert s.steps == [0, 1, 2]
    rows = _rows(s.files["per_click.csv"])
    assert len(rows) == 2 * 1 * 3
    assert rows[0]["click_kind"] == "box" and len(rows[0]["click_voxel"].split()) == 6
    assert all(float(r["nsd"]) == 0.0 for r in rows if float(r["dice"]) <= 0.2)  # challenge rule
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["nsd_tolerance_mm"] == 2.0
    scores = summary["per_target"]["right"]["cvpr25"]
    assert set(scores) == {"DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final"}
    assert 0.0 <= scores["DSC_AUC"] <= 1.0  # 2 click steps: AUC over one unit
    assert "DSC_AUC" in (tmp_path / "summary.md").read_text()


# ---------------------------------------------------------------------------------------------------
# metrics independent of the model: fake sessions


class OracleSession:
    """Returns the region of the clicked intensity: exactly the target in the synthetic images."""

    def set_image(self, image: Volume) -> None:
        self.image = np.asarray(image.array)

    def reset(self) -> None:
        pass

    def add_click(self, point, positive: bool = True) -> np.ndarray:
        v = tuple(round(c) for c in point)
        return (self.image == self.image[v]).astype(np.uint8)

    def add_box(self, lo, hi) -> np.ndarray:
        return self.add_click(tuple((a + b) / 2 for a, b in zip(lo, hi, strict=True)))


class EmptySession(OracleSession):
    """Never segments anything."""

    def add_click(self, point, positive: bool = True) -> np.ndarray:
        return np.zeros(self.image.shape, dtype=np.uint8)


@pytest.mark.parametrize("protocol", ["sam_med3d", "cvpr25"])
def test_oracle_session_scores_one(dataset: Path, tmp_path: Path, protocol: str):
    s = evaluate(dataset, None, protocol, CLICKS, tmp_path, session_factory=OracleSession, progress=False)
    assert len(s.results) == 4 and [c for c, _ in s.skipped] == ["blob_003"]
    for r in s.records:
        assert (r.dice, r.nsd, r.hd95) == (1.0, 1.0, 0.0)
    first = 0 if protocol == "cvpr25" else 1
    # perfect after the first prompt: the simulators have nothing left, later steps repeat it
    assert {r.kind for r in s.records if r.step > first} == {"none"}
    assert s.overall["dice"] == [1.0] * len(s.steps)
    if protocol == "cvpr25":
        assert s.overall["cvpr25"] == {
            "DSC_AUC": CLICKS - 1.0,
            "NSD_AUC": CLICKS - 1.0,
            "DSC_Final": 1.0,
            "NSD_Final": 1.0,
        }
    assert s.config["model"] == "injected session"


def test_empty_session_scores_zero(dataset: Path, tmp_path: Path):
    s = evaluate(dataset, None, "sam_med3d", CLICKS, tmp_path, session_factory=EmptySession, progress=False)
    for r in s.records:
        assert (r.dice, r.nsd, r.hd95, r.kind) == (0.0, 0.0, float("inf"), "positive")
    md = s.markdown()
    assert "0.000" in md
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["per_target"]["left"]["hd95"] == [None] * CLICKS  # no finite value


def test_clicks_stay_on_the_error(dataset: Path, tmp_path: Path):
    """While the prediction is empty every click is a positive click on the target (FN)."""
    s = evaluate(dataset, None, "sam_med3d", CLICKS, tmp_path, session_factory=EmptySession, progress=False, seed=3)
    case = load_dataset(dataset)[0]
    lab = np.asarray(nib.load(str(case.label)).dataobj)
    for r in s.records:
        if r.case == case.name:
            assert lab[r.voxel] == r.target_value


def test_targets_have_their_own_clicks(dataset: Path, tmp_path: Path):
    """Each (case, target) has its own generator: a run on one target repeats its rows of the full run;
    another seed gives other clicks."""
    kw = dict(session_factory=EmptySession, progress=False, write=False)
    full = evaluate(dataset, None, "sam_med3d", CLICKS, tmp_path, **kw)
    part = evaluate(dataset, None, "sam_med3d", CLICKS, tmp_path, labels=["right"], **kw)
    assert _key(part.records) == [k for k in _key(full.records) if k[1] == "right"]
    other = evaluate(dataset, None, "sam_med3d", CLICKS, tmp_path, seed=1, **kw)
    assert [r.voxel for r in other.records] != [r.voxel for r in full.records]


def test_usage_errors(dataset: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="protocol"):
        evaluate(dataset, None, "nope", 1, tmp_path, session_factory=OracleSession, write=False)
    with pytest.raises(ValueError, match="clicks"):
        evaluate(dataset, None, "cvpr25", 0, tmp_path, session_factory=OracleSession, write=False)
    with pytest.raises(ValueError, match="unknown label"):
        evaluate(dataset, None, "cvpr25", 1, tmp_path, labels=["liver"], session_factory=OracleSession)
    assert main(["evaluate", "--data", str(tmp_path / "missing"), "-o", str(tmp_path), "--no-progress"]) == 2


def test_colin27_cases_validate(mricron_dir: Path):
    cases = load_dataset("colin27-aal", ["Thalamus_L", "Brain"])
    assert [t.name for t in cases[0].targets] == ["Thalamus_L", "Brain"]
    assert all(validate_case(c) is None for c in cases)


def test_encoder_attention_on_an_onnx_export_is_refused(dataset: Path, tmp_path: Path):
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    (export_dir / "export.json").write_text("{}")
    with pytest.raises(ValueError, match="ONNX export has its attention fixed at export time"):
        evaluate(dataset, export_dir, "sam_med3d", 1, tmp_path / "r", attention_backend="dilated", progress=False)


@pytest.mark.parametrize("protocol", ["sam_med3d", "cvpr25"])
def test_baselines_replay_the_prompts_on_a_zero_image(dataset: Path, tmp_path: Path, protocol: str):
    s = evaluate(
        dataset, None, protocol, CLICKS, tmp_path, session_factory=OracleSession, progress=False, baselines=True
    )
    for r in s.results:
        gt = r.steps[0]
        assert gt.zero_dice is not None and gt.sphere_dice is not None
        # the oracle on an all-zero image returns the whole grid: Dice 2|T| / (|T| + N), far below 1
        assert all(st.zero_dice < 0.3 for st in r.steps)
        # a ball of the target's volume at a voxel inside the target overlaps it, but not exactly
        assert 0.1 < gt.sphere_dice < 1.0
        assert len({st.sphere_dice for st in r.steps}) == 1
    assert s.overall["dice"] == [1.0] * len(s.steps)
    assert len(s.overall["zero_dice"]) == len(s.steps)
    md = (tmp_path / "summary.md").read_text()
    assert "baseline: zero image" in md and "baseline: sphere" in md
    header = (tmp_path / "per_click.csv").read_text().splitlines()[0]
    assert header.endswith("zero_dice,sphere_dice")


def test_sphere_mask_has_the_volume_asked_for():
    from volsam.eval.interaction import sphere_mask

    ball = sphere_mask((40, 40, 20), (20, 20, 10), 4000.0, (1.0, 1.0, 2.0))
    assert abs(ball.sum() * 2.0 - 4000.0) / 4000.0 < 0.1
    assert ball[20, 20, 10] and not ball[0, 0, 0]
