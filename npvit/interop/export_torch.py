"""A model as a PyTorch state dict (``torch.save``): timm's names for a model timm's VisionTransformer holds,
else ``npvit.torch_reference.TorchViT``'s (the Keras arrangement): ``<layer>.weight`` / ``.bias``, Linear
weights (out, in), Conv2d weights (out, in, k, k), so that ``TorchViT(config).load_state_dict(torch.load(OUT))``
takes it strictly."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..config import ViTConfig
from .errors import require
from .timm_names import timm_expressible, to_timm


def torch_peer_name(name: str) -> str:
    """TorchViT's name of npvit parameter ``name``: ``.w``/``.gamma`` -> ``.weight``, ``.b``/``.beta`` -> ``.bias``."""
    prefix, _, last = name.rpartition(".")
    if last in ("w", "gamma"):
        return f"{prefix}.weight"
    if last in ("b", "beta"):
        return f"{prefix}.bias"
    return name  # cls_token, pos_embed


def torch_state(params: dict[str, Any], cfg: ViTConfig) -> dict[str, np.ndarray]:
    """The state dict's arrays, as NumPy."""
    host = {n: np.ascontiguousarray(to_numpy(p)) for n, p in params.items()}
    if timm_expressible(cfg):
        return to_timm(host, cfg)
    return {torch_peer_name(n): np.ascontiguousarray(torch_layout(n, p)) for n, p in host.items()}


def torch_layout(name: str, p: np.ndarray) -> np.ndarray:
    """npvit parameter ``name`` in TorchViT's layout: conv kernels (k, k, Ci, Co) -> (Co, Ci, k, k), dense
    kernels (in, out) -> (out, in), the rest as they are."""
    if name.startswith("tokenizer.conv"):
        return p.transpose(3, 2, 0, 1)
    return p.T if name.endswith(".w") else p


def torch_bytes(params: dict[str, Any], cfg: ViTConfig) -> bytes:
    torch = require("torch", "exporting .pt files", "pip install 'npvit[torch]'")
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in torch_state(params, cfg).items()}, buffer)
    return buffer.getvalue()
