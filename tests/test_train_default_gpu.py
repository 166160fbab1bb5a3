"""scripts/train_default_gpu.py end to end on the CPU: pack a toy dataset, train volsam_fusion for a few
seconds from the shipped weights, validate the result (the steps the GPU call runs, at toy size)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests import SCRIPTS, load_script
from tests.train import one_thread, write_dataset


@pytest.fixture(scope="module")
def script():
    return load_script("train_default_gpu")


def test_pack_train_validate(script, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    data = write_dataset(tmp_path / "toy")
    pack = tmp_path / "pack.npz"
    with one_thread():
        assert script.main(["pack", str(data), str(pack), "--fg-samples", "16"]) == 0
        assert "6 targets" in capsys.readouterr().out
        out = tmp_path / "run"
        args = ["train", "--pack", str(pack), "--out", str(out), "--minutes", "0.08", "--probe-s", "1",
                "--batch-sizes", "1", "--window", "32", "--jitter", "8", "--max-corrections", "1",
                "--case-weight", "case0=0"]
        assert script.main(args) == 0
        assert "draws by source: case0 0.0%, case1 " in capsys.readouterr().out
        summary = json.loads((out / "summary.json").read_text())
        assert summary["batch_size"] == 1 and summary["steps"] >= 1 and summary["device"] == "cpu"
        capsys.readouterr()
        weights = str(out / "final.safetensors")
        assert script.main(["validate", str(data), weights, "--clicks", "2", "--seed", "0", "1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "6 targets, seed(s) 0,1, Dice at clicks 1..2:" in line and "mean of @1 and @2" in line


def test_train_refuses_a_file_that_is_not_a_pack(script, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    assert script.main(["train", "--pack", str(bad), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a volsam pack" in err and "pack_dataset" in err


@pytest.mark.parametrize("item", ["shapes_", "=2", "shapes_=x"])
def test_train_refuses_a_malformed_case_weight(script, tmp_path: Path, capsys: pytest.CaptureFixture[str], item: str):
    args = ["train", "--pack", str(tmp_path / "p.npz"), "--out", str(tmp_path / "o"), "--case-weight", item]
    assert script.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "PREFIX=WEIGHT" in err


@pytest.mark.parametrize("specs", [[], ["no options here"], ["ok:--lr 1e-3", "bad name:--lr 1e-3"]])
def test_sweep_script_refuses_malformed_variants(tmp_path: Path, specs: list[str]):
    sweep = SCRIPTS / "train_default_gpu_sweep.sh"
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    r = subprocess.run(["bash", str(sweep), *specs], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert ("NAME:OPTIONS" in r.stderr) and not (tmp_path / "out").exists()  # refused before anything ran
