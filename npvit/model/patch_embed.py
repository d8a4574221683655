"""PatchEmbed: cut the image into patches and project each one linearly to the token width.

    patches = extract_patches(images)      (B, H, W, C) -> (B, N, P*P*C)
    tokens  = patches W + b                (B, N, dim)

This is the first half of the Keras example's ``PatchEncoder``; the position embedding (and the class token,
when used) are added by the VisionTransformer, which owns them. timm's ``PatchEmbed`` is a Conv2d of kernel and
stride P: the same map, its kernel (D, C, P, P) being this W (P*P*C, D) re-indexed (npvit.interop.timm_names).
"""

from __future__ import annotations

import math
from typing import Any

from ..config import ViTConfig
from ..kernels import patches_backward, patches_forward
from .init import uniform
from .module import Context, Dense, ParamSpecs

Array = Any


class PatchEmbed:
    """Patches -> Dense(dim)."""

    def __init__(self, prefix: str, cfg: ViTConfig) -> None:
        self.patch_size, self.overlap = cfg.patch_size, cfg.patch_overlap
        if cfg.arrangement == "timm":  # torch's Conv2d default, which timm keeps: U(+-1/sqrt(fan_in)), bias too
            bound = 1.0 / math.sqrt(cfg.patch_dim)
            self.proj = Dense(f"{prefix}.proj", cfg.patch_dim, cfg.dim, uniform(bound), uniform(bound))
        else:
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
