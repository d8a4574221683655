"""Bridges to other libraries: timm's and Google's pretrained ViTs in, safetensors, ONNX and PyTorch out.

    model = npvit.load_timm("model.safetensors", "vit_base_patch16_224")   # timm / Google weights -> ViT
    npvit.export(model, "model.onnx")                                      # .safetensors, .onnx, .pt

Every bridge is checked in tests/interop against the other side's own code (timm's model and its readers,
onnxruntime, torch autograd). safetensors and onnx come from the ``interop`` extra.
"""

from .errors import InteropError, MissingInteropExtra
from .export import export
from .load import load_timm
from .preprocess import Preprocess, imagenet_class_names
from .resample import resample_pos_embed

__all__ = ["InteropError", "MissingInteropExtra", "Preprocess", "export", "imagenet_class_names", "load_timm",
           "resample_pos_embed"]
