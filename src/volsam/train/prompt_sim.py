"""Prompts simulated in torch for training, batched, on the device the model trains on (no host round trip):
a uniform random voxel of a mask (:func:`random_voxels`), its most interior voxel (:func:`interior_voxels`)
and a jittered bounding box as an input channel (:func:`box_channel`). Both training loops use them:
:func:`volsam.train.tasks.correction_loss` (``volsam train``) for boxes, :mod:`volsam.train.device_loop`
for every prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["box_channel", "interior_voxels", "random_voxels"]


def random_voxels(mask: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniform random voxel of each mask.

    Args:
        mask: [B, S, S, S] bool.
        generator: on ``mask``'s device.

    Returns:
        ([B, 3] long voxel indices, [B] bool: the mask had a voxel; index 0 otherwise).
    """
    score = torch.rand(mask.shape, generator=generator, device=mask.device) * mask
    return _unravel(score.flatten(1).argmax(1), mask.shape[1:]), mask.flatten(1).any(1)


def interior_voxels(mask: torch.Tensor, generator: torch.Generator, max_depth: int = 24) -> torch.Tensor:
    """A voxel of each mask that survives the most 3x3x3 erosions (the window border counts as outside),
    ties broken at random: [B, S, S, S] bool -> [B, 3] long (index 0 for an empty mask)."""
    m = mask[:, None].float()
    depth = m.clone()
    for _ in range(max_depth):
        m = 1.0 - F.max_pool3d(F.pad(1.0 - m, (1,) * 6, value=1.0), 3, 1)
        if not bool(m.any()):
            break
        depth += m
    score = depth[:, 0] + 0.5 * torch.rand(mask.shape, generator=generator, device=mask.device) * mask
    return _unravel(score.flatten(1).argmax(1), mask.shape[1:])


def _unravel(flat: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    _, y, z = shape
    return torch.stack([flat // (y * z), (flat // z) % y, flat % z], 1)


def box_channel(gt: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each target's bounding box as a filled mask, faces jittered by up to 2 voxels, half the time only its
    middle slice along a random axis: [B, S, S, S] bool (non-empty) -> [B, 1, S, S, S] float."""
    b, s = gt.shape[0], gt.shape[-1]
    dev = gt.device
    ar = torch.arange(s, device=dev)
    lo, hi = [], []
    for axis in range(3):
        dims = tuple(d for d in (1, 2, 3) if d != axis + 1)
        present = gt.any(dim=dims)  # [B, S]
        lo.append(torch.where(present, ar, s).amin(1))
        hi.append(torch.where(present, ar, -1).amax(1))
    lo_t, hi_t = torch.stack(lo, 1), torch.stack(hi, 1)
    jit = torch.randint(-2, 3, (2, b, 3), generator=generator, device=dev)
    lo_t, hi_t = (lo_t + jit[0]).clamp(0, s - 1), (hi_t + jit[1]).clamp(0, s - 1)
    lo_t, hi_t = torch.minimum(lo_t, hi_t), torch.maximum(lo_t, hi_t)
    flat = torch.rand(b, generator=generator, device=dev) < 0.5
    axis = torch.randint(0, 3, (b,), generator=generator, device=dev)
    mid = (lo_t + hi_t) // 2
    one = flat[:, None] & (torch.arange(3, device=dev)[None] == axis[:, None])
    lo_t, hi_t = torch.where(one, mid, lo_t), torch.where(one, mid, hi_t)
    inside = [(ar[None] >= lo_t[:, a, None]) & (ar[None] <= hi_t[:, a, None]) for a in range(3)]
    box = inside[0][:, :, None, None] & inside[1][:, None, :, None] & inside[2][:, None, None, :]
    return box[:, None].float()
