"""The Vision Transformer (``ViT``) and the layer objects it is built from."""

import warnings
from typing import Any

from .attention import Attention
from .block import Block
from .conv_tokenizer import ConvTokenizer
from .mlp import Mlp
from .module import Context, Dense, LayerNorm
from .patch_embed import PatchEmbed
from .vit import ViT

__all__ = ["Attention", "Block", "Context", "ConvTokenizer", "Dense", "LayerNorm", "Mlp", "PatchEmbed", "ViT"]


def __getattr__(name: str) -> Any:
    if name == "VisionTransformer":  # the model's second name, kept for one release
        warnings.warn("npvit.model.VisionTransformer is deprecated: use npvit.ViT", DeprecationWarning, stacklevel=2)
        return ViT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
