"""Block: one pre-norm transformer encoder layer.

    x = x + Attention(LayerNorm(x))
    x = x + Mlp(LayerNorm(x))

Backward runs the same two residual steps in reverse: the gradient reaching a residual sum flows both
through the branch and straight past it, so the two are added.
"""

from __future__ import annotations

from typing import Any

from ..config import ViTConfig
from .attention import Attention
from .mlp import Mlp
from .module import Context, LayerNorm, ParamSpecs

Array = Any


class Block:
    """LayerNorm -> Attention -> residual, LayerNorm -> Mlp -> residual."""

    def __init__(self, prefix: str, cfg: ViTConfig) -> None:
        self.norm1 = LayerNorm(f"{prefix}.norm1", cfg.dim, cfg.ln_eps)
        self.attn = Attention(f"{prefix}.attn", cfg.dim, cfg.num_heads, cfg.key_dim, cfg.attention_dropout)
        self.norm2 = LayerNorm(f"{prefix}.norm2", cfg.dim, cfg.ln_eps)
        self.mlp = Mlp(f"{prefix}.mlp", cfg.dim, cfg.mlp_units, cfg.dropout, cfg.gelu)
        self.parts = (self.norm1, self.attn, self.norm2, self.mlp)

    def param_specs(self) -> ParamSpecs:
        return {k: v for part in self.parts for k, v in part.param_specs().items()}

    def forward(self, params: dict, x: Array, ctx: Context) -> tuple[Array, tuple]:
        h, c_n1 = self.norm1.forward(params, x, ctx)
        h, c_attn = self.attn.forward(params, h, ctx)
        h += x  # the attention output is a fresh array, and no cache holds the block input x
        x = h
        h, c_n2 = self.norm2.forward(params, x, ctx)
        h, c_mlp = self.mlp.forward(params, h, ctx)
        h += x  # the MLP output is a fresh array: add the residual in place
        return h, (c_n1, c_attn, c_n2, c_mlp)

    def backward(self, params: dict, grads: dict, dy: Array, cache: tuple) -> Array:
        c_n1, c_attn, c_n2, c_mlp = cache
        dh = self.norm2.backward(params, grads, self.mlp.backward(params, grads, dy, c_mlp), c_n2)
        dx = dy + dh
        dh = self.norm1.backward(params, grads, self.attn.backward(params, grads, dx, c_attn), c_n1)
        dx += dh
        return dx
