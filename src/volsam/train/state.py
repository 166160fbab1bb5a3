"""What a training run resumes from: the RNG states saved in ``latest.pt``, reading that checkpoint back and
loading its weights into the model being trained."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volsam.checkpoint import CheckpointError
from volsam.modeling import PromptableModel

__all__ = ["load_model_state", "load_resume", "rng_state", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """torch (CPU, CUDA), numpy-global and python RNG states as tensors/ints (``weights_only``-loadable)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - the legacy global state itself
    py = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(py[0]), "state": list(py[1]), "gauss": py[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    legacy = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    np.random.set_state(legacy)  # noqa: NPY002 - the legacy global state itself
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume(path: Path) -> dict[str, Any] | None:
    """The training checkpoint at ``path`` (weights only), or None when there is none."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot resume from {path}: {msg}; remove it or pass --overwrite") from None


def load_model_state(model: PromptableModel, state: dict[str, torch.Tensor], source: Path) -> None:
    """Strictly load a saved state_dict, with a one-line error when it belongs to another model."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        raise CheckpointError(
            f"{source} holds another architecture than the model being trained; use another --out or --overwrite"
        )
    model.load_state_dict(state, strict=True)
