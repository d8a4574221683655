"""PatchEmbed: cut the image into patches and project each one linearly to the token width.

    patches = extract_patches(images)      (B, H, W, C) -> (B, N, P*P*C)
    tokens  = patches W + b                (B, N, dim)

This is the first half of the Keras example's ``PatchEncoder``; the position embedding (and the class token,
when used) are added by the VisionTransformer, which owns them.
"""

from __future__ import annotations

from typing import Any

from ..config import ViTConfig
from ..kernels import patches_backward, patches_forward
from .module import Context, Dense, ParamSpecs

Array = Any


class PatchEmbed:
    """Patches -> Dense(dim)."""

    def __init__(self, prefix: str, cfg: ViTConfig) -> None:
        self.patch_size, self.overlap = cfg.patch_size, cfg.patch_overlap
        self.proj = Dense(f"{prefix}.proj", cfg.patch_dim, cfg.dim)

    def param_specs(self) -> ParamSpecs:
        return self.proj.param_specs()

    def forward(self, params: dict, images: Array, ctx: Context) -> tuple[Array, tuple]:
        x, c_patches = patches_forward(images, self.patch_size, self.overlap)
        x, c_proj = self.proj.forward(params, x, ctx)
        return x, (c_patches, c_proj)

    def backward(self, params: dict, grads: dict, dy: Array, cache: tuple) -> Array:
        c_patches, c_proj = cache
        return patches_backward(self.proj.backward(params, grads, dy, c_proj), c_patches)
