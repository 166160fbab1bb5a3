"""Checkpoint reading, strict loading with readable reports, and saving.

Accepted layouts, as released: ``{'model_state_dict': ...}`` (SAM-Med3D, FastSAM3D training dicts),
``{'state_dict': ...}``, ``{'model': ...}``, a bare state_dict, keys prefixed ``module.`` (DDP),
encoder-only students (bare ``blocks.*`` / ``patch_embed.*`` keys) and ``.safetensors``.
Loading is always strict: a missing or unexpected key, or a shape mismatch, is an error that names
the keys and, where the file fits another registered variant, which one.

This module knows files and keys, not the model names: :mod:`volsam.registry` builds on it (one way)
and owns what asks the registry (:func:`~volsam.registry.matching_models`,
:func:`~volsam.registry.load_checkpoint`) and hands :func:`load_weights` the matcher for its hint.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from volsam.atomic import atomic_path
from volsam.modeling import PromptableModel

ENCODER_PREFIX = "image_encoder."
_WRAPPERS = ("model_state_dict", "state_dict", "model")
_ENCODER_ROOTS = ("patch_embed.", "pos_embed", "blocks.", "neck.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line."""


def read_state_dict(path: str | Path, *, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state_dict with official key names.

    ``weights_only=True`` unless ``trust_checkpoint``: older checkpoints that pickled Python objects
    (an ``argparse.Namespace``) need full unpickling, which can run arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                obj: Any = load_file(str(path))
            except Exception as e:  # SafetensorError (empty, truncated, not safetensors) subclasses Exception only
                raise CheckpointError(f"{path} is not a readable safetensors file: {_first_line(e)}") from None
        else:
            obj = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as e:
        # torch says "Unsupported GLOBAL posix.system whose module posix is blocked" (code), or "Unsupported
        # global: GLOBAL argparse.Namespace was not an allowed global" (an object it does not allow).
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found and "blocked" in str(e):
            raise CheckpointError(
                f"{path} holds pickled code ({found[1]}), which loading it would run; only for a file you "
                "trust, pass trust_checkpoint=True (CLI: --trust-checkpoint)"
            ) from None
        if found:
            raise CheckpointError(
                f"{path} holds pickled Python objects ({found[1]}) besides tensors and needs full unpickling; "
                "only for a file you trust, pass trust_checkpoint=True (CLI: --trust-checkpoint)"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated): {_first_line(e)}") from None
    return normalize_state_dict(obj, source=str(path))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def normalize_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap training dicts, strip ``module.`` and prefix bare encoder keys with ``image_encoder.``."""
    for _ in range(2):  # training dicts may nest once more (e.g. {'model': {'state_dict': ...}})
        if isinstance(obj, dict):
            for key in _WRAPPERS:
                if key in obj and isinstance(obj[key], dict):
                    obj = obj[key]
                    break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} holds no state_dict of tensors")
    sd = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}
    if all(k.startswith(_ENCODER_ROOTS) for k in sd):
        sd = {ENCODER_PREFIX + k: v for k, v in sd.items()}
    return sd


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def is_encoder_only(sd: dict[str, torch.Tensor]) -> bool:
    return all(k.startswith(ENCODER_PREFIX) for k in sd)


def mismatch_report(want: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]], limit: int = 4) -> str:
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    wrong = [f"{k} {got[k]} != {want[k]}" for k in want if k in got and got[k] != want[k]]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{label} {len(items)}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


Matcher = Callable[[dict[str, torch.Tensor]], list[str]]
"""Registered variants a state_dict fits (:func:`volsam.registry.matching_models`)."""


def _load_strict(
    model: torch.nn.Module,
    sd: dict[str, torch.Tensor],
    what: str,
    source: str,
    prefix: str = "",
    fits: Matcher | None = None,
) -> None:
    """Load strictly; ``prefix`` turns ``sd``'s keys back into whole-model keys for ``fits``' hint."""
    want = _shapes(model.state_dict())
    got = _shapes(sd)
    if want != got:
        hint = ""
        if fits is not None:
            found = fits({prefix + k: v for k, v in sd.items()})
            hint = f"; the file fits registered model {', '.join(found)}" if found else "; it fits no registered model"
        raise CheckpointError(f"{source} does not fit {what}: {mismatch_report(want, got)}{hint}")
    _check_values(model, sd, source)
    model.load_state_dict(sd, strict=True)


def _check_values(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, limit: int = 3) -> None:
    """Refuse what ``load_state_dict`` would silently cast: integer, bool or float8 weights where the model
    holds floats (quantised or corrupt files give empty or full masks), and NaN/inf weights."""
    own = model.state_dict()
    kinds = [
        f"{k} {v.dtype}"
        for k, v in sd.items()
        if own[k].is_floating_point() and (not v.is_floating_point() or v.element_size() < 2)
    ]
    if kinds:
        more = f" (+{len(kinds) - limit} more)" if len(kinds) > limit else ""
        raise CheckpointError(
            f"{source} holds non-floating weights ({', '.join(kinds[:limit])}{more}); expected float32, float16 "
            "or bfloat16 tensors (a quantised or corrupt file?)"
        )
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" (+{len(bad) - limit} more)" if len(bad) > limit else ""
        raise CheckpointError(
            f"{source} holds NaN or infinite weights in {', '.join(bad[:limit])}{more} (a diverged or corrupt file?)"
        )


def load_weights(
    model: PromptableModel,
    name: str,
    checkpoint: str | Path,
    *,
    decoder_checkpoint: str | Path | None = None,
    trust_checkpoint: bool = False,
    fits: Matcher | None = None,
) -> None:
    """Load a checkpoint into ``model`` (registered as ``name``) strictly; on a mismatch the error names
    the variants ``fits`` finds for the file."""
    sd = read_state_dict(checkpoint, trust_checkpoint=trust_checkpoint)
    if not is_encoder_only(sd):
        if decoder_checkpoint is not None:
            raise CheckpointError(
                f"{checkpoint} holds a whole model; decoder_checkpoint is only for encoder-only files"
            )
        _load_strict(model, sd, f"model {name!r}", str(checkpoint), fits=fits)
        return
    if decoder_checkpoint is None:
        raise CheckpointError(
            f"{checkpoint} holds an image encoder only; give decoder_checkpoint= (CLI: --decoder-checkpoint) "
            "with the prompt encoder and mask decoder to pair it with (e.g. sam_med3d_turbo.pth)"
        )
    enc = {k[len(ENCODER_PREFIX) :]: v for k, v in sd.items()}
    _load_strict(model.image_encoder, enc, f"the image encoder of {name!r}", str(checkpoint), ENCODER_PREFIX, fits)
    dec = read_state_dict(decoder_checkpoint, trust_checkpoint=trust_checkpoint)
    for part in ("prompt_encoder", "mask_decoder"):
        sub = {k[len(part) + 1 :]: v for k, v in dec.items() if k.startswith(part + ".")}
        _load_strict(getattr(model, part), sub, f"the {part} of {name!r}", str(decoder_checkpoint), part + ".", fits)


def save_checkpoint(model: PromptableModel, path: str | Path, **extra: Any) -> Path:
    """Write ``{'model_state_dict': ..., **extra}`` atomically (temporary file, then rename).

    The official SAM-Med3D code loads this layout; ``extra`` carries training state.
    """
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        else:
            torch.save({"model_state_dict": state, **extra}, tmp)
    return path
