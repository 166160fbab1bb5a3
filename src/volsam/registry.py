"""Named model variants and their builders (timm-style registry).

A variant is a :class:`~volsam.config.ModelConfig`; adding one (a smaller student, say) is one
``register_model`` call, never a copy of a module. What asks the registry about a checkpoint file
(which variants it fits, building the one it fits) lives here too; :mod:`volsam.checkpoint` reads and
loads files without knowing the names, so the dependency runs one way (registry -> checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from volsam import checkpoint as ckpt
from volsam.config import FusionConfig, ModelConfig, make_config
from volsam.modeling import FusionSeg3D, PromptableModel, Sam3D

AnyConfig = ModelConfig | FusionConfig


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    config: Callable[[], AnyConfig]

    @property
    def kind(self) -> str:
        """``"sam"`` (encode once, decode per click) or ``"fusion"`` (prompts as input channels)."""
        return "fusion" if isinstance(self.config(), FusionConfig) else "sam"


_REGISTRY: dict[str, ModelSpec] = {}

DEFAULT_MODEL = "volsam_fusion"


def register_model(name: str, description: str) -> Callable[[Callable[[], AnyConfig]], Callable[[], AnyConfig]]:
    """Decorator registering a zero-argument function that returns the variant's config."""

    def wrap(fn: Callable[[], AnyConfig]) -> Callable[[], AnyConfig]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, description, fn)
        return fn

    return wrap


@register_model("sam_med3d", "SAM-Med3D vit_b_ori: 12 blocks x 768, window 14 + global 2/5/8/11 (sam_med3d_turbo.pth)")
def _sam_med3d() -> ModelConfig:
    return make_config(embed_dim=768, depth=12, num_heads=12, prompt_dim=384, global_attn_indexes=(2, 5, 8, 11))


@register_model("fastsam3d", "FastSAM3D student: 6 blocks x 768, 6 heads, blocks 0-1 MLP-only, global (FastSAM3D.pth)")
def _fastsam3d() -> ModelConfig:
    return make_config(
        embed_dim=768, depth=6, num_heads=6, prompt_dim=384, window_size=0, mlp_only_blocks=2, block_style="fastsam"
    )


@register_model("sam_med3d_mini", "parity-fixture configuration of SAM-Med3D: 4 blocks x 96")
def _sam_med3d_mini() -> ModelConfig:
    return make_config(embed_dim=96, depth=4, num_heads=4, prompt_dim=96, global_attn_indexes=(1, 3))


@register_model("fastsam3d_mini", "parity-fixture configuration of FastSAM3D: 4 blocks x 96, 2 heads")
def _fastsam3d_mini() -> ModelConfig:
    return make_config(
        embed_dim=96, depth=4, num_heads=2, prompt_dim=96, window_size=0, mlp_only_blocks=2, block_style="fastsam"
    )


@register_model("volsam_small", "volsam's CPU student: 6 blocks x 384, 6 heads, global, decoder width 384")
def _volsam_small() -> ModelConfig:
    return make_config(embed_dim=384, depth=6, num_heads=6, prompt_dim=384, window_size=0, block_style="sam")


@register_model(
    "volsam_tiny",
    "SAM-style CPU student: 6 blocks x 256, 8 heads, global; decoder width 192; click prior 6 vox (volsam's v1 "
    "default model; its weights are no longer shipped)",
)
def _volsam_tiny() -> ModelConfig:
    return make_config(
        embed_dim=256,
        depth=6,
        num_heads=8,
        prompt_dim=192,
        window_size=0,
        block_style="sam",
        decoder_mlp_dim=1024,
        click_prior_sigma=6.0,
    )


@register_model(
    "volsam_fusion",
    "volsam's default model: early-fusion residual-encoder U-Net (image, previous mask and prompts as input "
    "channels), 64^3 windows at 1.5 mm, widths 16-128",
)
def _volsam_fusion() -> FusionConfig:
    return FusionConfig()


def from_config(cfg: AnyConfig) -> PromptableModel:
    """The (randomly initialised) network a config describes."""
    return FusionSeg3D.from_config(cfg) if isinstance(cfg, FusionConfig) else Sam3D.from_config(cfg)


def list_models() -> list[str]:
    """Names of the registered variants."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(list_models())}")
    return _REGISTRY[name]


def model_config(name: str) -> AnyConfig:
    return model_spec(name).config()


def build_model(
    name: str | None = None,
    checkpoint: str | Path | None = None,
    *,
    decoder_checkpoint: str | Path | None = None,
    trust_checkpoint: bool = False,
    device: str | torch.device | None = None,
    attention_backend: str | None = None,
) -> PromptableModel:
    """Build a registered variant, optionally loading weights strictly.

    Args:
        name: registered variant; None infers it from ``checkpoint``'s keys and shapes.
        checkpoint: official or volsam checkpoint (see :func:`volsam.checkpoint.read_state_dict`).
        decoder_checkpoint: where the prompt encoder and decoder come from when ``checkpoint`` holds an
            encoder only (FastSAM3D's distilled students).
        trust_checkpoint: allow full unpickling (only for files you trust).
        device: where to put the model.
        attention_backend: override the variant's encoder attention (``dense`` or ``dilated``); the
            weights are the same, so any checkpoint of the variant loads (needs ``name``).
    """
    if name is None:
        if checkpoint is None:
            raise ValueError("give a model name or a checkpoint to infer it from")
        if attention_backend is not None:
            raise ValueError("attention_backend needs a model name (the variant whose config it changes)")
        return load_checkpoint(
            checkpoint, decoder_checkpoint=decoder_checkpoint, trust_checkpoint=trust_checkpoint, device=device
        )
    cfg = model_config(name)
    if attention_backend is not None:
        if isinstance(cfg, FusionConfig):
            raise ValueError(f"{name} is an early-fusion model without attention; attention_backend does not apply")
        cfg = cfg.with_encoder(attention_backend=attention_backend)
    model = from_config(cfg)
    if checkpoint is not None:
        ckpt.load_weights(
            model,
            name,
            checkpoint,
            decoder_checkpoint=decoder_checkpoint,
            trust_checkpoint=trust_checkpoint,
            fits=matching_models,
        )
    model.eval()
    return model.to(device) if device is not None else model


def key_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """state_dict key -> shape of a variant, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = from_config(model_config(name))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def matching_models(sd: dict[str, torch.Tensor]) -> list[str]:
    """Registered variants whose keys and shapes the state_dict fits exactly (encoder part only for an
    encoder-only file)."""
    got = {k: tuple(v.shape) for k, v in sd.items()}
    enc_only = ckpt.is_encoder_only(sd)
    out = []
    for name in list_models():
        want = key_shapes(name)
        if enc_only:
            want = {k: v for k, v in want.items() if k.startswith(ckpt.ENCODER_PREFIX)}
        if want == got:
            out.append(name)
    return out


def load_checkpoint(
    path: str | Path,
    *,
    decoder_checkpoint: str | Path | None = None,
    trust_checkpoint: bool = False,
    device: str | torch.device | None = None,
) -> PromptableModel:
    """Build the registered variant a checkpoint fits (inferred from keys and shapes) and load it."""
    sd = ckpt.read_state_dict(path, trust_checkpoint=trust_checkpoint)
    fits = matching_models(sd)
    if not fits:
        got = {k: tuple(v.shape) for k, v in sd.items()}
        near = min(list_models(), key=lambda n: len(set(key_shapes(n).items()) ^ set(got.items())))
        report = ckpt.mismatch_report(key_shapes(near), got)
        raise ckpt.CheckpointError(f"{path} fits no registered model (nearest {near!r}: {report})")
    return build_model(
        fits[0], path, decoder_checkpoint=decoder_checkpoint, trust_checkpoint=trust_checkpoint, device=device
    )
