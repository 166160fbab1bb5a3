"""Which sample indices each process reads at each optimizer step (:class:`StepSampler`), and the
DataLoader over them (:func:`make_loader`)."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["StepSampler", "make_loader"]


class StepSampler(Sampler[int]):
    """Sample indices of steps ``[start_step, end_step)`` for one rank.

    Step ``s`` consumes the global samples ``[s * G, (s + 1) * G)`` with ``G = batch_size * accum * world``;
    micro-step ``m`` of rank ``r`` gets ``s * G + m * batch_size * world + r * batch_size + [0, batch_size)``.
    Any process count with the same global batch therefore sees the same samples at the same step.
    """

    def __init__(self, start_step: int, end_step: int, batch_size: int, accum: int = 1, rank: int = 0, world: int = 1):
        if batch_size < 1 or accum < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"invalid sampler setup: batch {batch_size}, accum {accum}, rank {rank}/{world}")
        self.start, self.end = int(start_step), int(end_step)
        self.batch_size, self.accum, self.rank, self.world = batch_size, accum, rank, world

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.accum * self.world

    def __iter__(self) -> Iterator[int]:
        g, b = self.global_batch, self.batch_size
        for s in range(self.start, self.end):
            for m in range(self.accum):
                base = s * g + m * b * self.world + self.rank * b
                yield from range(base, base + b)

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.accum * self.batch_size


def make_loader(dataset: Dataset, sampler: StepSampler, workers: int = 0) -> DataLoader:
    """DataLoader yielding the per-rank micro-batches of ``sampler`` in order (``workers`` processes)."""
    return DataLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        num_workers=int(workers),
        drop_last=False,
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False,
    )
