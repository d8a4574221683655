"""Mlp: a stack of Dense -> GELU -> Dropout layers.

The Keras example's ``mlp`` helper puts GELU and dropout after every dense layer, the last one included; it
serves both as the transformer block's feed-forward network and as the classifier head's hidden layers.
The paper's MLP (timm's ``Mlp``, the timm arrangement) has no GELU after its last layer: ``act_last=False``.
"""

from __future__ import annotations

from typing import Any

from ..kernels import dense_forward, dropout_backward, gelu_backward, gelu_forward
from ..kernels.device import bias_act_backward, bias_act_forward
from ..kernels.fused import on_device
from .init import Initializer
from .module import Context, Dense, ParamSpecs

Array = Any


class Mlp:
    """For each size u in ``units``: Dense(u) -> GELU -> Dropout(rate); no GELU after the last layer when
    ``act_last`` is False. ``w_init`` sets the kernels' initializer (default Glorot uniform)."""

    def __init__(self, prefix: str, in_dim: int, units: tuple[int, ...], rate: float, gelu: str,
                 act_last: bool = True, w_init: Initializer | None = None) -> None:
        sizes = (in_dim, *units)
        self.layers = [Dense(f"{prefix}.fc{i}", sizes[i], sizes[i + 1], w_init) for i in range(len(units))]
        self.drop_sites = [f"{prefix}.drop{i}" for i in range(len(units))]  # dropout layers' names
        self.rate, self.gelu = rate, gelu
        self.acts = [act_last or i < len(units) - 1 for i in range(len(units))]  # GELU after layer i?

    def param_specs(self) -> ParamSpecs:
        return {k: v for layer in self.layers for k, v in layer.param_specs().items()}

    def forward(self, params: dict, x: Array, ctx: Context, residual: Array | None = None) -> tuple[Array, list]:
        """The output (+ ``residual``, added in the last layer's kernel on CuPy) and the caches."""
        caches = []
        if on_device(x):  # CuPy: the product, then bias, GELU and dropout in one kernel (kernels/device.py)
            rate = self.rate if ctx.training else 0.0
            last = len(self.layers) - 1
            for i, (layer, site, act) in enumerate(zip(self.layers, self.drop_sites, self.acts)):
                h, c_dense = dense_forward(x, params[f"{layer.prefix}.w"], None)  # (..., units)
                x, c_act = bias_act_forward(h, params[f"{layer.prefix}.b"], self.gelu if act else "none", rate,
                                            ctx.dropout_key_for(site) if rate else None,
                                            residual if i == last else None)
                caches.append((c_dense, c_act, None))
            return x, caches
        for layer, site, act in zip(self.layers, self.drop_sites, self.acts):
            x, c_dense = layer.forward(params, x, ctx)
            x, c_gelu = gelu_forward(x, self.gelu) if act else (x, None)
            x, c_drop = ctx.dropout(x, self.rate, site)
            caches.append((c_dense, c_gelu, c_drop))
        if residual is not None:
            x = x + residual
        return x, caches

    def backward(self, params: dict, grads: dict, dy: Array, cache: list) -> Array:
        for layer, act, (c_dense, c_gelu, c_drop) in zip(reversed(self.layers), reversed(self.acts), reversed(cache)):
            if on_device(dy):  # CuPy: dropout's and GELU's backward in one kernel
                dy = layer.backward(params, grads, bias_act_backward(dy, c_gelu), c_dense)
                continue
            dy = dropout_backward(dy, c_drop)
            if act:
                dy = gelu_backward(dy, c_gelu)
            dy = layer.backward(params, grads, dy, c_dense)
        return dy
