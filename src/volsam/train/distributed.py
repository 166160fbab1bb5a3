"""torch.distributed helpers of the training loop: rank and world size, process-group set-up from torchrun's
environment, the device of this rank, and the mean of gradients and logged values over ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["dist_info", "init_distributed_from_env", "resolve_device"]


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


def _average_gradients(params: Sequence[nn.Parameter], world: int) -> None:
    """All-reduce (mean) the gradients that exist, in one flat buffer."""
    grads = [p.grad for p in params if p.grad is not None]
    if world <= 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def _mean_over_ranks(values: list[float], world: int, device: torch.device) -> list[float]:
    if world <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world).tolist()
