"""Attention: the multi-head self-attention layer of a transformer block (Keras ``MultiHeadAttention``).

Parameters: ``qkv.w`` (dim, 3 * heads * key_dim) and ``qkv.b``: Keras' separate query, key and value
projections stored side by side so that one GEMM computes all three; ``proj.w`` (heads * key_dim, dim) and
``proj.b``: the output projection. The math is in ``npvit.kernels.attention``.
"""

from __future__ import annotations

from typing import Any

from ..kernels import mha_backward, mha_forward
from ..kernels.fused import on_device
from .init import Initializer, concat_columns, glorot_uniform, zeros
from .module import Context, ParamSpecs

Array = Any


class Attention:
    """Multi-head self-attention with ``num_heads`` heads of width ``key_dim`` and dropout on the weights."""

    def __init__(self, prefix: str, dim: int, num_heads: int, key_dim: int, attention_dropout: float,
                 fans: str = "receptive", w_init: Initializer | None = None) -> None:
        self.prefix, self.dim, self.num_heads, self.key_dim = prefix, dim, num_heads, key_dim
        self.attention_dropout = attention_dropout
        self.fans = fans  # ViTConfig.attention_fans (same default): how Keras counts the fans of its 3-D kernels
        self.w_init = w_init  # one initializer for both kernels (timm's), instead of Keras' Glorot

    def param_specs(self) -> ParamSpecs:
        p, d, h, k = self.prefix, self.dim, self.num_heads, self.key_dim
        if self.w_init is not None:  # timm: the fused qkv kernel and the output kernel, each drawn whole
            return {f"{p}.qkv.w": ((d, 3 * h * k), self.w_init), f"{p}.qkv.b": ((3 * h * k,), zeros),
                    f"{p}.proj.w": ((h * k, d), self.w_init), f"{p}.proj.b": ((d,), zeros)}
        # Keras initialises each of query/key/value as an EinsumDense kernel (D, H, d), the output kernel as
        # (H, d, D). Keras 3.15+ gives Glorot their input and output axes ("axes"); older Keras counted every
        # axis but the last two as a receptive field ("receptive").
        if self.fans == "axes":  # fans (D, H d) and (H d, D)
            q_init, out_init = glorot_uniform((d, h, k), (0,), (1, 2)), glorot_uniform((h, k, d), (0, 1), (2,))
        else:  # fans (H D, d D) and (H d, H D)
            q_init, out_init = glorot_uniform((d, h, k)), glorot_uniform((h, k, d))
        return {
            f"{p}.qkv.w": ((d, 3 * h * k), concat_columns(*[(q_init, h * k)] * 3)),
            f"{p}.qkv.b": ((3 * h * k,), zeros),
            f"{p}.proj.w": ((h * k, d), out_init),
            f"{p}.proj.b": ((d,), zeros),
        }

    def forward(self, params: dict, x: Array, ctx: Context, residual: Array | None = None) -> tuple[Array, Any]:
        """y (+ ``residual``, added in the projection's bias kernel on CuPy) and the cache."""
        p = self.prefix
        rate = self.attention_dropout if ctx.training else 0.0
        y, cache, probs = mha_forward(
            x, params[f"{p}.qkv.w"], params[f"{p}.qkv.b"], params[f"{p}.proj.w"], params[f"{p}.proj.b"],
            self.num_heads, rate, ctx.dropout_key_for(f"{p}.attn_drop") if rate else None,
            return_probs=ctx.training or ctx.keep_attention, residual=residual,
        )
        if ctx.keep_attention:
            ctx.attention_maps.append(probs)
        return y, cache

    def backward(self, params: dict, grads: dict, dy: Array, cache: Any) -> Array:
        p = self.prefix
        names = (f"{p}.qkv.w", f"{p}.qkv.b", f"{p}.proj.w", f"{p}.proj.b")
        if on_device(dy) and hasattr(grads, "flat"):  # CuPy: written into the flat gradient buffer, no copies
            return mha_backward(dy, cache, params[names[0]], params[names[2]], out=tuple(grads[k] for k in names))[0]
        dx, *weights = mha_backward(dy, cache, params[names[0]], params[names[2]])
        for name, g in zip(names, weights):
            grads[name] = g
        return dx
