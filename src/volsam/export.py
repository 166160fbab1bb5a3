"""ONNX export of a promptable model as two graphs, and an onnxruntime-backed stand-in.

SAM family (:class:`~volsam.modeling.Sam3D`):

``encoder.onnx``: ``image`` float32 [1, 1, S, S, S] -> ``image_embeddings`` float32 [1, C, G, G, G].

``decoder.onnx`` (prompt encoder + mask decoder, single-mask output):

- ``image_embeddings`` float32 [1, C, G, G, G]
- ``point_coords`` float32 [1, N, 3], voxel coordinates (a, b, c) of the window; N is dynamic
- ``point_labels`` int64 [1, N]: 1 positive, 0 negative, -1 padding
- ``mask_input`` float32 [1, 1, 4G, 4G, 4G]: previous low-res logits (any finite values, e.g. zeros, when unused)
- ``has_mask_input`` float32 [1]: 1 to use ``mask_input``, 0 for "no mask" (SAM's ONNX convention):
  ``dense = has_mask * mask_downscaling(mask_input) + (1 - has_mask) * no_mask_embed``

outputs ``low_res_logits`` float32 [1, 1, 4G, 4G, 4G] and ``iou_predictions`` float32 [1, 1].

Early fusion (:class:`~volsam.modeling.FusionSeg3D`): ``encoder.onnx`` is the identity (the "embedding" is
the window, [1, 1, S, S, S]); ``decoder.onnx`` is the whole network with the same inputs, ``mask_input`` and
``low_res_logits`` at [1, 1, S/2, S/2, S/2], plus ``prompt_channels`` float32 [1, C - 4, S, S, S]: the
dense prompt channels after the points (box, scribble, lasso; zeros when unused), in the order of
:data:`volsam.config.PROMPT_CHANNELS`; ``iou_predictions`` is NaN (the model predicts none).

``export.json`` records the model name, kind and config, the opset and the inputs/outputs with their shapes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from volsam.config import PROMPT_CHANNELS
from volsam.modeling import FusionSeg3D, PromptableModel, Sam3D
from volsam.modeling.common import upsample_mask
from volsam.modeling.fusion import render_points

ENCODER_INPUTS = ["image"]
ENCODER_OUTPUTS = ["image_embeddings"]
DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
DECODER_OUTPUTS = ["low_res_logits", "iou_predictions"]
FUSION_DECODER_INPUTS = [*DECODER_INPUTS, "prompt_channels"]


class EncoderWrapper(nn.Module):
    """image [1, 1, S, S, S] -> image_embeddings [1, C, G, G, G]."""

    def __init__(self, model: Sam3D) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class DecoderWrapper(nn.Module):
    """Prompt encoder + mask decoder as one graph with a ``has_mask_input`` switch instead of ``None``.

    The dense positional encoding is precomputed into a buffer (a constant of the graph).
    """

    def __init__(self, model: Sam3D) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        with torch.no_grad():
            self.register_buffer("image_pe", model.prompt_encoder.get_dense_pe().clone(), persistent=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """emb [1, C, G, G, G], coords [1, N, 3], labels [1, N] int64, mask [1, 1, 4G, 4G, 4G], has_mask [1]
        -> low_res_logits [1, 1, 4G, 4G, 4G], iou_predictions [1, 1]."""
        pe = self.prompt_encoder
        sparse = pe._embed_points(point_coords.float(), point_labels, pad=True)
        h = has_mask_input.reshape(1, 1, 1, 1, 1).to(image_embeddings.dtype)
        prior = pe.click_prior(point_coords.float(), point_labels)
        if prior is not None:  # as Sam3D.decode: the click map joins (or is) the mask prompt
            dense = pe.mask_downscaling(h * mask_input + prior)
        else:
            no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1, 1)
            dense = h * pe.mask_downscaling(mask_input) + (1 - h) * no_mask
        masks, iou = self.mask_decoder.predict_masks(image_embeddings, self.image_pe, sparse, dense)
        return masks[:, 0:1], iou[:, 0:1]


class FusionDecoderWrapper(nn.Module):
    """An early-fusion model's network with a ``has_mask_input`` switch and its dense prompt channels as one
    tensor (the points are rendered inside the graph)."""

    def __init__(self, model: FusionSeg3D) -> None:
        super().__init__()
        self.net = model.net
        self.sigma = model.config.point_sigma

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        prompt_channels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image [1, 1, S, S, S], coords [1, N, 3], labels [1, N], mask [1, 1, S/2, S/2, S/2], has_mask [1],
        prompt_channels [1, C - 4, S, S, S] -> low_res_logits [1, 1, S/2, S/2, S/2], iou NaN [1, 1]."""
        image = image_embeddings
        h = has_mask_input.reshape(1, 1, 1, 1, 1).to(image.dtype)
        prev = h * torch.sigmoid(F.interpolate(mask_input, size=image.shape[-3:], mode="trilinear"))
        pts = render_points(point_coords.float(), point_labels, image.shape[-1], self.sigma)
        low = self.net(torch.cat([image, prev, pts, prompt_channels], 1))
        return low, torch.full_like(low[:, 0, 0, 0, :1], float("nan"))


def _fusion_inputs(model: FusionSeg3D, n: int = 2) -> tuple[torch.Tensor, ...]:
    s, m = model.img_size, model.low_res_size
    coords = torch.linspace(4.0, s - 4.0, n * 3).reshape(1, n, 3)
    labels = torch.ones(1, n, dtype=torch.int64)
    rest = len(model.config.channels) - 4
    return (
        torch.randn(1, 1, s, s, s), coords, labels, torch.zeros(1, 1, m, m, m), torch.ones(1),
        torch.zeros(1, rest, s, s, s),
    )


def _example_inputs(model: Sam3D, n: int = 2) -> tuple[torch.Tensor, ...]:
    s = model.img_size
    g = model.prompt_encoder.image_embedding_size
    c = model.prompt_encoder.embed_dim
    m = model.prompt_encoder.mask_input_size
    coords = torch.linspace(10.0, s - 10.0, n * 3).reshape(1, n, 3)
    labels = torch.ones(1, n, dtype=torch.int64)
    return (torch.randn(1, c, g, g, g), coords, labels, torch.zeros(1, 1, m, m, m), torch.ones(1))


def _logaddexp_symbolic(g: Any, a: Any, b: Any) -> Any:
    """ONNX for ``aten::logaddexp`` (absent from the TorchScript exporter): max + log(1 + exp(-|a - b|))."""
    mx = g.op("Max", a, b)
    neg = g.op("Neg", g.op("Abs", g.op("Sub", a, b)))
    one = g.op("Constant", value_t=torch.tensor(1.0))
    return g.op("Add", mx, g.op("Log", g.op("Add", one, g.op("Exp", neg))))


def _export_graphs(model: PromptableModel, paths: dict[str, Path], opset: int) -> None:
    s = model.img_size
    fusion = isinstance(model, FusionSeg3D)
    decoder = FusionDecoderWrapper(model) if fusion else DecoderWrapper(model)
    inputs = _fusion_inputs(model) if fusion else _example_inputs(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
        torch.onnx.export(
            EncoderWrapper(model).eval(),
            (torch.randn(1, 1, s, s, s),),
            str(paths["encoder"]),
            input_names=ENCODER_INPUTS,
            output_names=ENCODER_OUTPUTS,
            opset_version=opset,
            dynamo=False,
        )
        torch.onnx.export(
            decoder.eval(),
            inputs,
            str(paths["decoder"]),
            input_names=FUSION_DECODER_INPUTS if fusion else DECODER_INPUTS,
            output_names=DECODER_OUTPUTS,
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            opset_version=opset,
            dynamo=False,
        )


def export_onnx(
    model: PromptableModel, out_dir: str | Path, *, opset: int = 17, name: str | None = None
) -> dict[str, Path]:
    """Write ``encoder.onnx``, ``decoder.onnx`` and ``export.json`` to ``out_dir``; returns their paths.

    Uses the TorchScript exporter (``dynamo=False``; ``aten::logaddexp`` gets a custom symbolic while it
    runs); the decoder's point axis N is dynamic. The model is put in eval mode on the CPU.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    paths = {"encoder": out / "encoder.onnx", "decoder": out / "decoder.onnx", "meta": out / "export.json"}
    torch.onnx.register_custom_op_symbolic("aten::logaddexp", _logaddexp_symbolic, opset)
    try:
        _export_graphs(model, paths, opset)
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::logaddexp", opset)
    s = model.img_size
    m = model.low_res_size
    if isinstance(model, FusionSeg3D):
        c, g = 1, s
    else:
        g = model.prompt_encoder.image_embedding_size
        c = model.prompt_encoder.embed_dim
    meta: dict[str, Any] = {
        "model": name,
        "kind": model.kind,
        "config": model.config.to_dict() if model.config is not None else None,
        "opset": opset,
        "torch": torch.__version__,
        "encoder": {
            "file": paths["encoder"].name,
            "inputs": {"image": {"shape": [1, 1, s, s, s], "dtype": "float32"}},
            "outputs": {"image_embeddings": {"shape": [1, c, g, g, g], "dtype": "float32"}},
        },
        "decoder": {
            "file": paths["decoder"].name,
            "inputs": {
                "image_embeddings": {"shape": [1, c, g, g, g], "dtype": "float32"},
                "point_coords": {"shape": [1, "N", 3], "dtype": "float32"},
                "point_labels": {"shape": [1, "N"], "dtype": "int64"},
                "mask_input": {"shape": [1, 1, m, m, m], "dtype": "float32"},
                "has_mask_input": {"shape": [1], "dtype": "float32"},
                **(
                    {"prompt_channels": {"shape": [1, len(model.config.channels) - 4, s, s, s], "dtype": "float32"}}
                    if isinstance(model, FusionSeg3D)
                    else {}
                ),
            },
            "outputs": {
                "low_res_logits": {"shape": [1, 1, m, m, m], "dtype": "float32"},
                "iou_predictions": {"shape": [1, 1], "dtype": "float32"},
            },
        },
    }
    paths["meta"].write_text(json.dumps(meta, indent=1))
    return paths


class OnnxModel:
    """The two exported graphs run by onnxruntime (CPU), with the part of the ``Sam3D`` interface a
    :class:`volsam.session.Session` uses: ``img_size``, ``image_encoder``, ``decode``, ``upsample_*``."""

    def __init__(self, directory: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        d = Path(directory)
        self.meta: dict[str, Any] = json.loads((d / "export.json").read_text())
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        prov = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(d / "encoder.onnx"), opts, providers=prov)
        self.decoder = ort.InferenceSession(str(d / "decoder.onnx"), opts, providers=prov)
        inputs = self.meta["decoder"]["inputs"]
        self._mask_shape = tuple(inputs["mask_input"]["shape"])
        self._channels_shape = tuple(inputs["prompt_channels"]["shape"]) if "prompt_channels" in inputs else None
        self.img_size: int = self.meta["encoder"]["inputs"]["image"]["shape"][-1]
        self.low_res_size: int = self._mask_shape[-1]
        self.kind: str = self.meta.get("kind", "sam")
        self.config = None

    def no_mask_prompt(self, batch: int, device: torch.device | str) -> torch.Tensor | None:
        """As the exported model's family: zero logits (SAM) or None (early fusion)."""
        if self.kind == "fusion":
            return None
        return torch.zeros(batch, *self._mask_shape[1:])

    def image_encoder(self, x: torch.Tensor) -> torch.Tensor:
        """image [1, 1, S, S, S] -> embedding [1, C, G, G, G]."""
        arr = x.detach().cpu().float().numpy()
        return torch.from_numpy(self.encoder.run(ENCODER_OUTPUTS, {"image": arr})[0])

    def decode(
        self,
        image_embeddings: torch.Tensor,
        coords: torch.Tensor,
        labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
        dense_prompts: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """emb [1, C, G, G, G], coords [1, N, 3], labels [1, N], mask [1, 1, g, g, g] or None
        -> (low_res_logits [1, 1, g, g, g], iou [1, 1]); ``dense_prompts`` (early fusion only) by channel name."""
        if multimask_output:
            raise ValueError("the exported decoder has the single-mask output only")
        if coords is None or labels is None:
            raise ValueError("the exported decoder needs at least one point")
        has = mask_input is not None
        mask = mask_input if has else torch.zeros(self._mask_shape)
        feeds = {
            "image_embeddings": image_embeddings.detach().cpu().float().numpy(),
            "point_coords": coords.detach().cpu().float().numpy(),
            "point_labels": labels.detach().cpu().long().numpy(),
            "mask_input": mask.detach().cpu().float().numpy(),
            "has_mask_input": torch.tensor([1.0 if has else 0.0]).numpy(),
        }
        if self._channels_shape is not None:
            rest = torch.zeros(self._channels_shape)
            for name, value in (dense_prompts or {}).items():
                if name not in PROMPT_CHANNELS[4:]:
                    valid = ", ".join(PROMPT_CHANNELS[4:])
                    raise ValueError(f"unknown prompt channel {name!r}; expected one of {valid}")
                rest[:, PROMPT_CHANNELS.index(name) - 4] = value.detach().cpu().float()[:, 0]
            feeds["prompt_channels"] = rest.numpy()
        elif dense_prompts:
            raise ValueError(f"this exported model takes clicks only, not {', '.join(dense_prompts)}")
        low, iou = self.decoder.run(DECODER_OUTPUTS, feeds)
        return torch.from_numpy(low), torch.from_numpy(iou)

    def upsample_logits(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits [B, M, g, g, g] -> [B, M, S, S, S] (trilinear, as the exported model)."""
        s = self.img_size
        return F.interpolate(low_res, size=(s, s, s), mode="trilinear", align_corners=False)

    def upsample_mask(self, low_res: torch.Tensor) -> torch.Tensor:
        """``upsample_logits(low_res) > 0`` for one mask -> bool [S, S, S] (as the exported model)."""
        return upsample_mask(low_res, self.img_size)
