"""Pure ``nn.Module`` networks: tensors in, tensors out, trainable, no file I/O.

Two families share one interface (:data:`PromptableModel`): SAM-style models encode a window once and decode
each interaction from the cached embedding; early-fusion models take the prompts as input channels and run
per interaction (their "embedding" is the window itself). Both have ``img_size``, ``low_res_size``,
``image_encoder``, ``decode(embedding, coords, labels, mask_input)`` -> (low-res logits, IoU),
``upsample_logits``, ``upsample_mask``, ``no_mask_prompt(batch, device)``, ``kind`` and ``config``.
"""

from volsam.modeling.fusion import FusionSeg3D
from volsam.modeling.image_encoder import ImageEncoderViT3D
from volsam.modeling.mask_decoder import MaskDecoder3D
from volsam.modeling.prompt_encoder import PromptEncoder3D
from volsam.modeling.sam3d import Sam3D

PromptableModel = Sam3D | FusionSeg3D
"""Any promptable model volsam builds (usable with ``isinstance``)."""

__all__ = ["FusionSeg3D", "ImageEncoderViT3D", "MaskDecoder3D", "PromptEncoder3D", "PromptableModel", "Sam3D"]
