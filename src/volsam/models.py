"""Model resolution: a registered name, official weights by name, a checkpoint path, an ONNX export folder,
an instance, or None (the shipped default) -> a ready :class:`~volsam.modeling.PromptableModel` in eval mode.

Below the session: :class:`volsam.session.Session` calls :func:`resolve_model` for what its ``model``
argument names; the CLI, evaluation and benchmarks call it to share one instance between sessions.
"""

from __future__ import annotations

from pathlib import Path

import torch

from volsam.hub import is_official, list_weights, weights_info, weights_path
from volsam.modeling import PromptableModel
from volsam.registry import DEFAULT_MODEL, build_model, list_models, load_checkpoint

__all__ = ["WEIGHTS_DIR", "default_weights_path", "resolve_model"]

WEIGHTS_DIR = Path(__file__).parent / "weights"


def default_weights_path() -> Path:
    """Bundled weights of the default model."""
    return WEIGHTS_DIR / f"{DEFAULT_MODEL}.safetensors"


# Where the official weights of the registered architectures come from (named in the error for a bare name).
_OFFICIAL_WEIGHTS = {
    "sam_med3d": ("sam_med3d_turbo.pth", "the SAM-Med3D release (github.com/uni-medical/SAM-Med3D)", "sam_med3d_turbo"),
    "fastsam3d": ("FastSAM3D.pth", "the FastSAM3D release (github.com/arcadelab/FastSAM3D)", "fastsam3d_official"),
}


def _named_model(name: str, random_weights: bool) -> PromptableModel:
    """A registered name: the default model with its bundled weights, random weights only when asked
    (tests, benchmarks), else a one-line error saying which weights file to give."""
    if random_weights:
        return build_model(name)
    if name == DEFAULT_MODEL and default_weights_path().is_file():
        return build_model(name, default_weights_path())
    if name in _OFFICIAL_WEIGHTS:
        file, source, hub_name = _OFFICIAL_WEIGHTS[name]
        how = (
            f"give its weights file (e.g. --model {file}; official weights: {source}), "
            f"or `volsam weights fetch {hub_name}` then --model {hub_name}"
        )
    else:
        how = f"give a weights file trained for it (no official weights exist; `volsam train --model {name}` makes one)"
    raise ValueError(
        f"model {name!r} is an architecture without weights and would segment at random: {how}; "
        "random weights only with --random-weights (random_weights=True), for tests and benchmarks"
    )


def resolve_model(
    model: str | Path | PromptableModel | None,
    device: str | torch.device | None = None,
    *,
    decoder_checkpoint: str | Path | None = None,
    trust_checkpoint: bool = False,
    attention_backend: str | None = None,
    random_weights: bool = False,
) -> PromptableModel:
    """A model from a registered name, official weights by name (:mod:`volsam.hub`, once fetched), a
    checkpoint path, an ONNX export folder (``volsam export``, run
    by onnxruntime on the CPU), an instance, or None (the shipped default).

    A registered name carries no weights: only the default model's resolves (to its bundled weights);
    others are a ValueError naming the weights file to give, unless ``random_weights`` (tests, benchmarks).
    ``attention_backend`` (``"dense"`` or ``"dilated"``) switches the encoder's global attention, same
    weights (:meth:`~volsam.modeling.sam3d.Sam3D.set_attention_backend`); an instance
    passed in is switched in place."""
    if model is not None and not isinstance(model, PromptableModel) and (Path(model) / "export.json").is_file():
        from volsam.export import OnnxModel

        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"an ONNX export runs on the CPU here, got device {device}")
        if attention_backend is not None:
            raise ValueError("an ONNX export has its attention fixed at export time; export the model with it")
        return OnnxModel(model)  # type: ignore[return-value]
    if isinstance(model, PromptableModel):
        net = model
    elif model is None:
        path = default_weights_path()
        if not path.is_file():
            raise ValueError(
                f"the default model's weights are not bundled in this build ({path}); "
                f"name a checkpoint or one of {', '.join(list_models())}"
            )
        net = build_model(DEFAULT_MODEL, path)
    elif isinstance(model, str) and model in list_models():
        net = _named_model(model, random_weights)
    elif isinstance(model, str) and is_official(model):
        # Official weights by name (`volsam weights list`): the fetched file, or a one-line "fetch it" error.
        net = build_model(weights_info(model).architecture, weights_path(model), trust_checkpoint=trust_checkpoint)
    else:
        path = Path(model)
        if not path.exists():
            official = ", ".join(w.name for w in list_weights())
            raise ValueError(
                f"model must be one of {', '.join(list_models())}, official weights ({official}) "
                f"or a checkpoint file; got {model}"
            )
        net = load_checkpoint(path, decoder_checkpoint=decoder_checkpoint, trust_checkpoint=trust_checkpoint)
    if attention_backend is not None:
        net.set_attention_backend(attention_backend)
    net.eval()
    return net.to(device) if device is not None else net
