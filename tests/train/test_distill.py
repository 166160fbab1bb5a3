from __future__ import annotations

from pathlib import Path

import pytest
import torch

from volsam import build_model
from volsam.cli import main
from volsam.config import make_config
from volsam.modeling import Sam3D
from volsam.train.data import TrainDataset
from volsam.train.distill import copy_from_teacher, distill, layer_map
from volsam.train.loop import TrainConfig, TrainLog

from . import write_dataset


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("toy"), n=2)


def test_layer_map():
    assert layer_map(12, 6) == [1, 3, 5, 7, 9, 11]  # the paper's 12 -> 6: student i learns teacher 2i + 1
    assert layer_map(4, 4) == [0, 1, 2, 3]
    assert layer_map(6, 6) == list(range(6))
    assert layer_map(12, 5) == [1, 4, 6, 9, 11]
    assert layer_map(4, 2) == [1, 3]
    assert layer_map(2, 4) == [0, 0, 1, 1]
    assert layer_map(7, 1) == [6]
    for t in range(1, 13):
        for s in range(1, 13):
            m = layer_map(t, s)
            assert m[-1] == t - 1 and m == sorted(m) and all(0 <= j < t for j in m)
    with pytest.raises(ValueError):
        layer_map(0, 3)


def _narrow_student() -> Sam3D:
    """2 blocks x 48 wide (teacher sam_med3d_mini is 4 x 96): projections, embeddings and neck trained."""
    torch.manual_seed(1)
    return Sam3D.from_config(make_config(embed_dim=48, depth=2, num_heads=2, prompt_dim=96, window_size=0))


def test_copy_from_teacher():
    torch.manual_seed(0)
    teacher = build_model("sam_med3d_mini")
    same = build_model("fastsam3d_mini")  # 96 wide: embeddings, neck, prompt encoder and decoder fit
    assert copy_from_teacher(teacher, same) == ["patch_embed", "pos_embed", "neck", "prompt_encoder", "mask_decoder"]
    assert torch.equal(same.image_encoder.patch_embed.proj.weight, teacher.image_encoder.patch_embed.proj.weight)
    assert copy_from_teacher(teacher, _narrow_student()) == ["prompt_encoder", "mask_decoder"]


def test_distillation_lowers_feature_distance_stage_by_stage(toy_data: Path, tmp_path: Path):
    torch.manual_seed(0)
    teacher = build_model("sam_med3d_mini")
    student = _narrow_student()
    data = TrainDataset.from_dataset(toy_data, seed=0)
    cfg = TrainConfig(batch_size=1, lr=1e-3, encoder_lr=1e-4, rounds=1, mask_only_rounds=0, save_every=100)
    res = distill(teacher, student, data, tmp_path, cfg, steps_per_stage=12, decoder_steps=1, student_name="")
    assert res.mapping == [1, 3] and res.copied == ["prompt_encoder", "mask_decoder"]
    d = res.distances  # per-block MSE on a fixed probe window after 0, 1, 2 stages
    assert sorted(d) == [0, 1, 2]

    def mean(v: list[float]) -> float:
        return sum(v) / len(v)

    assert d[1][0] < 0.7 * d[0][0]  # stage 1 trains block 0 on its teacher block
    assert mean(d[2]) < mean(d[1]) < mean(d[0])  # the whole student gets closer stage after stage
    assert d[2][1] < 0.7 * d[1][1]  # stage 2 adds block 1
    rows = TrainLog.read(tmp_path / "train_log.csv")
    assert [r["phase"] for r in rows] == ["stage_1"] * 12 + ["stage_2"] * 12 + ["decoder"]
    sd = torch.load(tmp_path / "student.pt", weights_only=True)["model_state_dict"]
    assert sd.keys() == student.state_dict().keys()  # the projections are not part of the student


def test_cli_distill_and_resume(toy_data: Path, tmp_path: Path, capsys):
    out = tmp_path / "d"
    args = [
        "distill", "--teacher", "sam_med3d_mini", "--student", "fastsam3d_mini", "--data", str(toy_data),
        "--out", str(out), "--steps-per-stage", "1", "--decoder-steps", "1", "--rounds", "2",
        "--mask-only-rounds", "1", "--workers", "0", "--no-progress", "--no-augment",
    ]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "random weights" in err and "layer map (student block -> teacher block, 0-based): [0, 1, 2, 3]" in err
    model = build_model("fastsam3d_mini", checkpoint=out / "student.pt")
    assert model.image_encoder.cfg.depth == 4
    phases = [r["phase"] for r in TrainLog.read(out / "train_log.csv")]
    assert phases == ["stage_1", "stage_2", "stage_3", "stage_4", "decoder"]
    args[args.index("--decoder-steps") + 1] = "2"  # extend the last stage: resumes there
    assert main(args) == 0
    assert "resuming" in capsys.readouterr().err
    phases = [r["phase"] for r in TrainLog.read(out / "train_log.csv")]
    assert phases == ["stage_1", "stage_2", "stage_3", "stage_4", "decoder", "decoder"]
    assert main([*args[:4], "volsam_small", *args[5:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("volsam: error: ") and "is a checkpoint of 'fastsam3d_mini', not 'volsam_small'" in err
