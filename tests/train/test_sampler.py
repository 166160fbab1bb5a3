"""Per-rank sample indices of each step (:mod:`volsam.train.sampler`)."""

from __future__ import annotations

from volsam.train.sampler import StepSampler


def test_step_sampler_shards_the_global_batch():
    one = list(StepSampler(1, 3, batch_size=4, accum=1))
    shards = [list(StepSampler(1, 3, batch_size=1, accum=2, rank=r, world=2)) for r in range(2)]
    for s in range(2):
        glob = set(one[s * 4 : (s + 1) * 4])
        assert glob == set(shards[0][s * 2 : (s + 1) * 2]) | set(shards[1][s * 2 : (s + 1) * 2])
    assert one == list(range(4, 12))
