"""ONNX export of a :class:`~volsam.modeling.Sam3D` as two graphs, and an onnxruntime-backed stand-in.

``encoder.onnx``: ``image`` float32 [1, 1, S, S, S] -> ``image_embeddings`` float32 [1, C, G, G, G].

``decoder.onnx`` (prompt encoder + mask decoder, single-mask output):

- ``image_embeddings`` float32 [1, C, G, G, G]
- ``point_coords`` float32 [1, N, 3], voxel coordinates (a, b, c) of the window; N is dynamic
- ``point_labels`` int64 [1, N]: 1 positive, 0 negative, -1 padding
- ``mask_input`` float32 [1, 1, 4G, 4G, 4G]: previous low-res logits (any finite values, e.g. zeros, when unused)
- ``has_mask_input`` float32 [1]: 1 to use ``mask_input``, 0 for "no mask" (SAM's ONNX convention):
  ``dense = has_mask * mask_downscaling(mask_input) + (1 - has_mask) * no_mask_embed``

outputs ``low_res_logits`` float32 [1, 1, 4G, 4G, 4G] and ``iou_predictions`` float32 [1, 1].

``export.json`` records the model name and config, the opset and the inputs/outputs with their shapes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from volsam.modeling import Sam3D

ENCODER_INPUTS = ["image"]
ENCODER_OUTPUTS = ["image_embeddings"]
DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
DECODER_OUTPUTS = ["low_res_logits", "iou_predictions"]


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


def _export_graphs(model: Sam3D, paths: dict[str, Path], opset: int) -> None:
    s = model.img_size
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
            DecoderWrapper(model).eval(),
            _example_inputs(model),
            str(paths["decoder"]),
            input_names=DECODER_INPUTS,
            output_names=DECODER_OUTPUTS,
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            opset_version=opset,
            dynamo=False,
        )


def export_onnx(model: Sam3D, out_dir: str | Path, *, opset: int = 17, name: str | None = None) -> dict[str, Path]:
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
    g = model.prompt_encoder.image_embedding_size
    c = model.prompt_encoder.embed_dim
    m = model.prompt_encoder.mask_input_size
    meta: dict[str, Any] = {
        "model": name,
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
        self._mask_shape = tuple(self.meta["decoder"]["inputs"]["mask_input"]["shape"])
        self.img_size: int = self.meta["encoder"]["inputs"]["image"]["shape"][-1]

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """emb [1, C, G, G, G], coords [1, N, 3], labels [1, N], mask [1, 1, 4G, 4G, 4G] or None
        -> (low_res_logits [1, 1, 4G, 4G, 4G], iou [1, 1])."""
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
        low, iou = self.decoder.run(DECODER_OUTPUTS, feeds)
        return torch.from_numpy(low), torch.from_numpy(iou)

    def upsample_logits(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits [B, M, S/4, S/4, S/4] -> [B, M, S, S, S] (trilinear, as ``Sam3D``)."""
        return Sam3D.upsample_logits(self, low_res)  # type: ignore[arg-type]

    def upsample_mask(self, low_res: torch.Tensor) -> torch.Tensor:
        """``upsample_logits(low_res) > 0`` for one mask -> bool [S, S, S] (as ``Sam3D``)."""
        return Sam3D.upsample_mask(self, low_res)  # type: ignore[arg-type]
