"""A model as a ``.safetensors`` file, written with ``safetensors.numpy`` (no torch).

A model timm's VisionTransformer can hold (npvit.interop.timm_names.timm_expressible) is written under timm's
names and layouts, so that ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=OUT))``
loads it strictly; any other (the Keras arrangement) under npvit's own names. Either way the header's metadata
holds "npvit": the config, the preprocessing, the class names (JSON), and, when one fits, "npvit.timm_arch".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_numpy
from ..config import TIMM_ARCHS, TIMM_SIZES, ViTConfig
from .errors import require
from .timm_names import timm_expressible, to_timm


def timm_arch_of(cfg: ViTConfig) -> str | None:
    """The timm architecture name of a timm-expressible config (width, heads and patch; the arch at that patch
    size whose image side is the config's, else the 224 one), or None."""
    if not timm_expressible(cfg):
        return None
    names = [a for a in TIMM_ARCHS if TIMM_SIZES[a.split("_")[1]][0::2] == (cfg.dim, cfg.num_heads)
             and a.split("_")[2] == f"patch{cfg.patch_size}" and cfg.mlp_units[0] == 4 * cfg.dim]
    exact = [a for a in names if a.endswith(f"_{cfg.image_size}")]
    return (exact or names or [None])[0]


def safetensors_arrays(params: dict[str, Any], cfg: ViTConfig) -> dict[str, np.ndarray]:
    """The arrays the file holds: timm's state dict, or npvit's parameters."""
    host = {n: np.ascontiguousarray(to_numpy(p)) for n, p in params.items()}
    return to_timm(host, cfg) if timm_expressible(cfg) else host


def safetensors_bytes(params: dict[str, Any], cfg: ViTConfig, metadata: dict[str, str]) -> bytes:
    require("safetensors", "exporting .safetensors files")
    from safetensors.numpy import save

    meta = dict(metadata, format="pt")  # "pt": what Hugging Face readers expect of a state dict
    arch = timm_arch_of(cfg)
    if arch:
        meta["npvit.timm_arch"] = arch
    return save(safetensors_arrays(params, cfg), metadata=meta)
