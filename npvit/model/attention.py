"""Attention: the multi-head self-attention layer of a transformer block (Keras ``MultiHeadAttention``).

Parameters: ``qkv.w`` (dim, 3 * heads * key_dim) and ``qkv.b``: Keras' separate query, key and value
projections stored side by side so that one GEMM computes all three; ``proj.w`` (heads * key_dim, dim) and
``proj.b``: the output projection. The math is in ``npvit.kernels.attention``.
"""

from __future__ import annotations

from typing import Any

from ..kernels import mha_backward, mha_forward
from .init import concat_columns, glorot_uniform, zeros
from .module import Context, ParamSpecs

Array = Any


class Attention:
    """Multi-head self-attention with ``num_heads`` heads of width ``key_dim`` and dropout on the weights."""

    def __init__(self, prefix: str, dim: int, num_heads: int, key_dim: int, attention_dropout: float) -> None:
        self.prefix, self.dim, self.num_heads, self.key_dim = prefix, dim, num_heads, key_dim
        self.attention_dropout = attention_dropout

    def param_specs(self) -> ParamSpecs:
        p, d, h, k = self.prefix, self.dim, self.num_heads, self.key_dim
        # Keras initialises each of query/key/value as an EinsumDense kernel (D, H, d), with the fans of that
        # 3-D shape, and the output kernel as (H, d, D).
        qkv_init = concat_columns(*[(glorot_uniform((d, h, k)), h * k)] * 3)
        return {
            f"{p}.qkv.w": ((d, 3 * h * k), qkv_init),
            f"{p}.qkv.b": ((3 * h * k,), zeros),
            f"{p}.proj.w": ((h * k, d), glorot_uniform((h, k, d))),
            f"{p}.proj.b": ((d,), zeros),
        }

    def forward(self, params: dict, x: Array, ctx: Context) -> tuple[Array, Any]:
        p = self.prefix
        rate = self.attention_dropout if ctx.training else 0.0
        y, cache, probs = mha_forward(
            x, params[f"{p}.qkv.w"], params[f"{p}.qkv.b"], params[f"{p}.proj.w"], params[f"{p}.proj.b"],
            self.num_heads, rate, ctx.dropout_key_for(f"{p}.attn_drop") if rate else None,
            keep=ctx.training or ctx.keep_attention,
        )
        if ctx.keep_attention:
            ctx.attention_maps.append(probs)
        return y, cache

    def backward(self, params: dict, grads: dict, dy: Array, cache: Any) -> Array:
        p = self.prefix
        dx, grads[f"{p}.qkv.w"], grads[f"{p}.qkv.b"], grads[f"{p}.proj.w"], grads[f"{p}.proj.b"] = (
            mha_backward(dy, cache, params[f"{p}.qkv.w"], params[f"{p}.proj.w"])
        )
        return dx
