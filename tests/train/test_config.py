"""Training settings (:mod:`volsam.train.config`)."""

from __future__ import annotations

import pytest

from volsam.train.config import TrainConfig


def test_correction_ramp():
    cfg = TrainConfig(steps=10, max_corrections=8, correction_ramp_steps=100)
    assert [cfg.corrections_at(s) for s in (0, 49, 99, 500)] == [1, 4, 8, 8]
    assert TrainConfig(steps=10, max_corrections=8).corrections_at(0) == 8
    with pytest.raises(ValueError, match="recipe"):
        TrainConfig(steps=1, recipe="other")
