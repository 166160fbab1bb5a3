"""``train_log.csv`` (:mod:`volsam.train.log`)."""

from __future__ import annotations

from pathlib import Path

from volsam.train.log import LOG_COLUMNS, TrainLog


def test_log_truncates_steps_after_the_checkpoint(tmp_path: Path):
    log = TrainLog(tmp_path)
    for step in (1, 2, 3):
        log.write({"phase": "train", "phase_index": 0, "step": step, "samples": step, "loss": 0.5})
    TrainLog(tmp_path, resume_at=(0, 2))
    rows = TrainLog.read(tmp_path / "train_log.csv")
    assert [r["step"] for r in rows] == ["1", "2"] and list(rows[0]) == list(LOG_COLUMNS)
