"""How a model runs: device, precision, attention kernel and compilation, chosen once per session.

``choose_runtime`` turns a request (``"auto"`` or an explicit choice) into what the device can run, and
falls back with one warning line when it cannot:

- precision ``auto``: bf16 autocast on a CUDA GPU that supports it (Ampere, Hopper), else fp32. bf16 or
  fp16 asked for on a CPU falls back to fp32 (on the CPUs volsam targets bf16 is ~100x slower).
- attention ``auto``: SDPA picks its kernel. ``flash`` restricts SDPA to the flash kernel: only on CUDA
  with bf16/fp16, otherwise it falls back to ``auto``. Blocks with decomposed relative-position bias
  (SAM-Med3D, FastSAM3D) pass that bias as an additive mask, which flash kernels do not take, so SDPA
  uses its memory-efficient kernel there even when ``flash`` is asked for.
- compile: off unless asked for (``compile=True``). ``torch.compile`` costs seconds to tens of seconds
  per encoder and again for the decoder at its first shapes, which an interactive session opened for a
  few clicks does not win back; long-running servers and benchmarks turn it on. The decoder is compiled
  without CUDA graphs: its point count grows with every click, and the default mode makes that
  dimension dynamic after one recompilation instead of recording a graph per click count.

Outputs are not bit-identical to fp32 under bf16 (about 1e-2 on logits); fp32 keeps volsam's exactness.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ATTENTION", "PRECISIONS", "Runtime", "RuntimeFallbackWarning", "choose_runtime"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ATTENTION = ("auto", "flash", "math")


class RuntimeFallbackWarning(UserWarning):
    """A requested precision, kernel or compilation the device cannot run; says what was used instead."""


@dataclass(frozen=True)
class Runtime:
    """What :func:`choose_runtime` settled on."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    attention: str  # auto | flash | math
    compile: bool

    @property
    def dtype(self) -> torch.dtype | None:
        """Autocast dtype, None for fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @contextmanager
    def context(self) -> Iterator[None]:
        """Inference mode, autocast and SDPA kernel selection for one forward pass."""
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self.dtype is not None:
                stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype))
            if self.attention != "auto":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                kernels = {
                    "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
                    "math": [SDPBackend.MATH],
                }[self.attention]
                stack.enter_context(sdpa_kernel(kernels))
            yield

    def maybe_compile(self, fn: Callable[..., Any], *, mode: str | None = None) -> Callable[..., Any]:
        return torch.compile(fn, mode=mode) if self.compile else fn


def _warn(text: str) -> None:
    warnings.warn(text, RuntimeFallbackWarning, stacklevel=3)


def choose_runtime(
    device: str | torch.device | None = None,
    precision: str = "auto",
    attention: str = "auto",
    compile: bool | None = None,
) -> Runtime:
    """Settle device, precision, attention kernel and compilation (see the module docstring).

    Raises ValueError for an unknown precision or attention name; a valid choice the device cannot run
    gives a :class:`RuntimeFallbackWarning` naming the replacement.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    elif precision != "fp32" and not cuda:
        _warn(f"{precision} on {dev.type} is far slower than fp32 here (~100x on this class of CPU); using fp32")
        precision = "fp32"
    elif precision == "bf16" and not torch.cuda.is_bf16_supported():
        _warn("this GPU has no bf16; using fp16")
        precision = "fp16"
    if attention == "flash" and not (cuda and precision in ("bf16", "fp16")):
        why = "a CUDA GPU" if not cuda else "bf16 or fp16"
        _warn(f"flash attention needs {why}; using SDPA's default kernel choice on {dev.type} ({precision})")
        attention = "auto"
    if compile is None:
        compile = False
    return Runtime(dev, precision, attention, bool(compile))
