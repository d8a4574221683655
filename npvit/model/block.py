"""Block: one pre-norm transformer encoder layer.

    x = x + DropPath(Attention(LayerNorm(x)))
    x = x + DropPath(Mlp(LayerNorm(x)))

DropPath (stochastic depth) drops a sample's whole branch with the block's rate ``cfg.drop_path_rate(i)``
when training; at rate 0 (the presets) it is absent and draws nothing.

Backward runs the same two residual steps in reverse: the gradient reaching a residual sum flows both
through the branch and straight past it, so the two are added.
"""

from __future__ import annotations

from typing import Any

from ..config import ViTConfig
from ..kernels import drop_path_backward
from .attention import Attention
from .init import trunc_normal
from .mlp import Mlp
from .module import Context, LayerNorm, ParamSpecs
from ..kernels.fused import on_device

Array = Any


class Block:
    """LayerNorm -> Attention -> residual, LayerNorm -> Mlp -> residual.

    The timm arrangement (``cfg.arrangement``) has no GELU after the MLP's last layer, and timm's kernels
    (normal, std 0.02); the Keras one has both GELUs and Keras' Glorot kernels.
    """

    def __init__(self, prefix: str, cfg: ViTConfig, drop_path: float = 0.0) -> None:
        timm = cfg.arrangement == "timm"
        w_init = trunc_normal(0.02) if timm else None
        self.norm1 = LayerNorm(f"{prefix}.norm1", cfg.dim, cfg.ln_eps)
        self.attn = Attention(f"{prefix}.attn", cfg.dim, cfg.num_heads, cfg.key_dim, cfg.attention_dropout,
                              cfg.attention_fans, w_init)
        self.norm2 = LayerNorm(f"{prefix}.norm2", cfg.dim, cfg.ln_eps)
        self.mlp = Mlp(f"{prefix}.mlp", cfg.dim, cfg.mlp_units, cfg.dropout, cfg.gelu, act_last=not timm,
                       w_init=w_init)
        self.parts = (self.norm1, self.attn, self.norm2, self.mlp)
        self.drop_path = drop_path  # this block's stochastic depth rate
        self.drop_sites = (f"{prefix}.drop_path1", f"{prefix}.drop_path2")  # attention branch, MLP branch

    def param_specs(self) -> ParamSpecs:
        return {k: v for part in self.parts for k, v in part.param_specs().items()}

    def forward(self, params: dict, x: Array, ctx: Context) -> tuple[Array, tuple]:
        if on_device(x) and not (ctx.training and self.drop_path):  # CuPy: each residual sum in a bias kernel
            h, c_n1 = self.norm1.forward(params, x, ctx)
            x, c_attn = self.attn.forward(params, h, ctx, residual=x)
            h, c_n2 = self.norm2.forward(params, x, ctx)
            h, c_mlp = self.mlp.forward(params, h, ctx, residual=x)
            return h, (c_n1, c_attn, None, c_n2, c_mlp, None)
        h, c_n1 = self.norm1.forward(params, x, ctx)
        h, c_attn = self.attn.forward(params, h, ctx)
        h, c_dp1 = ctx.drop_path(h, self.drop_path, self.drop_sites[0])
        h += x  # the branch output is a fresh array, and no cache holds the block input x
        x = h
        h, c_n2 = self.norm2.forward(params, x, ctx)
        h, c_mlp = self.mlp.forward(params, h, ctx)
        h, c_dp2 = ctx.drop_path(h, self.drop_path, self.drop_sites[1])
        h += x  # the branch output is a fresh array: add the residual in place
        return h, (c_n1, c_attn, c_dp1, c_n2, c_mlp, c_dp2)

    def backward(self, params: dict, grads: dict, dy: Array, cache: tuple) -> Array:
        c_n1, c_attn, c_dp1, c_n2, c_mlp, c_dp2 = cache
        if on_device(dy):  # CuPy: each residual gradient added in the layer norm's backward kernel
            dh = self.mlp.backward(params, grads, drop_path_backward(dy, c_dp2), c_mlp)
            dx = self.norm2.backward(params, grads, dh, c_n2, residual=dy)
            dh = self.attn.backward(params, grads, drop_path_backward(dx, c_dp1), c_attn)
            return self.norm1.backward(params, grads, dh, c_n1, residual=dx)
        dh = self.mlp.backward(params, grads, drop_path_backward(dy, c_dp2), c_mlp)
        dx = dy + self.norm2.backward(params, grads, dh, c_n2)
        dh = self.attn.backward(params, grads, drop_path_backward(dx, c_dp1), c_attn)
        dx += self.norm1.backward(params, grads, dh, c_n1)
        return dx
