"""torch.distributed helpers of the training loop: rank and world size, process-group set-up from torchrun's
environment, the device of this rank, the per-micro-batch loss under ``DistributedDataParallel`` and the mean
of logged values over ranks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:
    from volsam.train.tasks import Task

__all__ = ["data_parallel_loss", "dist_info", "init_distributed_from_env", "resolve_device"]

LossFn = Callable[[dict[str, Any], int], tuple[torch.Tensor, dict[str, float]]]
"""A task's loss on one micro-batch: (batch, step) -> (loss to backpropagate, logged values)."""


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_from_env(device: str | None = None) -> bool:
    """Initialise torch.distributed from torchrun's environment (gloo on CPU, NCCL on CUDA).

    Returns True when this call created the process group (the caller destroys it).
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def resolve_device(device: str | None) -> torch.device:
    import os

    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class _TaskStep(nn.Module):
    """What DDP wraps: the modules that hold a task's trained parameters, with the task's loss on one
    micro-batch as ``forward``, so that every use of those parameters runs inside DDP's forward."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.parts = nn.ModuleList(task.trained_modules())
        self.task = task  # not a Module: not registered, so DDP sees only the parts' parameters

    def forward(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.task.loss(batch, step)


def data_parallel_loss(task: Task, device: torch.device) -> LossFn:
    """``task.loss``, in a process group wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`.

    DDP broadcasts rank 0's parameters and buffers once, here, then averages the trained parameters'
    gradients over ranks during ``backward()`` (bucketed, overlapping the backward pass); gradient
    accumulation over micro-batches stays correct without ``no_sync`` (each all-reduce adds the same
    mean to every rank). The task's modules themselves are not changed, so checkpoints saved from
    ``task.model`` keep their keys. Without a process group (one process) this is ``task.loss``.
    """
    _, world = dist_info()
    if world <= 1:
        return task.loss
    step = _TaskStep(task)
    owned = {id(p) for p in step.parameters()}
    if any(id(p) not in owned for g in task.param_groups() for p in g["params"]):  # would train unaveraged
        raise ValueError(f"{type(task).__name__}.trained_modules() misses parameters that param_groups() trains")
    return DistributedDataParallel(
        step,
        device_ids=[device] if device.type == "cuda" else None,
        # Needed: interactive training never gives the SAM family's IoU head (the losses ignore the IoU
        # prediction) or its no-mask embedding (every round passes a mask prompt) a gradient.
        find_unused_parameters=True,
        # Buffers are constants (the prompt encoder's Fourier matrix, a Memorizing-SAM memory): the
        # broadcast at construction suffices; re-sending a memory's keys every step would not.
        broadcast_buffers=False,
    )


def _mean_over_ranks(values: list[float], world: int, device: torch.device) -> list[float]:
    if world <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world).tolist()
