"""npvit's parameters under timm's names and layouts, both ways, for the timm arrangement.

    npvit (this package)              timm (VisionTransformer.state_dict())
    patch_embed.proj.w  (P*P*C, D)    patch_embed.proj.weight  (D, C, P, P)   a Conv2d kernel
    patch_embed.proj.b  (D,)          patch_embed.proj.bias    (D,)
    cls_token           (D,)          cls_token                (1, 1, D)
    pos_embed           (T, D)        pos_embed                (1, T, D)
    blocks.i.norm1.gamma / .beta      blocks.i.norm1.weight / .bias             (and norm2, norm, fc_norm)
    blocks.i.attn.qkv.w (D, 3 D)      blocks.i.attn.qkv.weight (3 D, D)         a Linear kernel: transposed
    blocks.i.attn.proj.w              blocks.i.attn.proj.weight
    blocks.i.mlp.fc0.w / fc1.w        blocks.i.mlp.fc1.weight / fc2.weight      timm counts from 1
    head.out.w          (D, K)        head.weight              (K, D)

npvit flattens a patch in (row, column, channel) order, so row (i P + j) C + c of its kernel is timm's
weight[:, c, i, j]. The fused qkv columns are ordered (q|k|v, head, feature) on both sides (timm reshapes the
projection to (B, N, 3, heads, d)), so they need no reordering.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from ..config import ViTConfig

Array = Any


def timm_expressible(cfg: ViTConfig) -> bool:
    """Whether timm's VisionTransformer can hold this model: the timm arrangement, side-by-side patches, a
    two-layer MLP, erf GELU, heads that split the width, a linear classifier."""
    return (cfg.arrangement == "timm" and cfg.patch_overlap == 0 and len(cfg.mlp_units) == 2
            and cfg.gelu == "erf" and cfg.head_units == () and cfg.num_heads * cfg.key_dim == cfg.dim
            and cfg.pool in ("cls", "gap"))


def timm_name(name: str) -> str:
    """timm's name of npvit parameter ``name`` (``blocks.0.mlp.fc0.w`` -> ``blocks.0.mlp.fc1.weight``)."""
    if name in ("cls_token", "pos_embed"):
        return name
    prefix, _, last = name.rpartition(".")
    if prefix == "head.out":
        prefix = "head"
    elif ".mlp.fc" in prefix:
        stem, _, index = prefix.rpartition(".fc")
        prefix = f"{stem}.fc{int(index) + 1}"
    return f"{prefix}.{'weight' if last in ('w', 'gamma') else 'bias'}"


def _patch_to_timm(w: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    p, c = cfg.patch_size, cfg.channels
    return w.reshape(p, p, c, cfg.dim).transpose(3, 2, 0, 1)  # (D, C, P, P)


def _patch_from_timm(w: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    return w.transpose(2, 3, 1, 0).reshape(cfg.patch_dim, cfg.dim)  # (P*P*C, D)


def _layouts(cfg: ViTConfig) -> dict[str, tuple[Callable, Callable]]:
    """npvit name -> (to timm's layout, from timm's layout) for every parameter that is not stored alike."""
    d = cfg.dim
    return {
        "patch_embed.proj.w": (lambda w: _patch_to_timm(w, cfg), lambda w: _patch_from_timm(w, cfg)),
        "cls_token": (lambda w: w.reshape(1, 1, d), lambda w: w.reshape(d)),
        "pos_embed": (lambda w: w.reshape(1, -1, d), lambda w: w.reshape(-1, d)),
    }


def to_timm(params: Mapping[str, Array], cfg: ViTConfig) -> dict[str, np.ndarray]:
    """timm's state dict (names and layouts; float arrays as given) of npvit parameters of config ``cfg``."""
    layouts = _layouts(cfg)
    out = {}
    for name, value in params.items():
        w = np.asarray(value)
        if name in layouts:
            w = layouts[name][0](w)
        elif name.endswith(".w"):
            w = w.T
        out[timm_name(name)] = np.ascontiguousarray(w)
    return out


def from_timm(state: Mapping[str, np.ndarray], names: list[str], cfg: ViTConfig) -> dict[str, np.ndarray]:
    """npvit parameters ``names`` (in npvit's layouts) read from timm's state dict. The caller has checked
    that every timm name is there with its shape (npvit.interop.load)."""
    layouts = _layouts(cfg)
    out = {}
    for name in names:
        w = np.asarray(state[timm_name(name)])
        if name in layouts:
            w = layouts[name][1](w)
        elif name.endswith(".w"):
            w = w.T
        out[name] = np.ascontiguousarray(w)
    return out


def timm_shape(name: str, shape: tuple[int, ...], cfg: ViTConfig) -> tuple[int, ...]:
    """The shape timm stores npvit parameter ``name`` of npvit shape ``shape`` with."""
    return tuple(to_timm({name: np.empty(shape, dtype=np.float32)}, cfg)[timm_name(name)].shape)
