"""Pure ``nn.Module`` networks: tensors in, tensors out, trainable, no file I/O."""

from volsam.modeling.image_encoder import ImageEncoderViT3D
from volsam.modeling.mask_decoder import MaskDecoder3D
from volsam.modeling.prompt_encoder import PromptEncoder3D
from volsam.modeling.sam3d import Sam3D

__all__ = ["ImageEncoderViT3D", "MaskDecoder3D", "PromptEncoder3D", "Sam3D"]
