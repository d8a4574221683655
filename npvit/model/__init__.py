"""The Vision Transformer and the layer objects it is built from."""

from .attention import Attention
from .block import Block
from .mlp import Mlp
from .module import Context, Dense, LayerNorm
from .patch_embed import PatchEmbed
from .vit import VisionTransformer, ViT

__all__ = ["Attention", "Block", "Context", "Dense", "LayerNorm", "Mlp", "PatchEmbed", "ViT", "VisionTransformer"]
