"""The small layer objects a model is built from, and the protocol they share.

A module owns no arrays. It knows the names, shapes and initializers of its parameters (``param_specs``) and
runs kernels on a ``params`` dict it is handed:

    y, cache = module.forward(params, x, ctx)
    dx = module.backward(params, grads, dy, cache)      # writes grads[name] for each of its parameters

Parameter names are dotted paths such as ``blocks.3.attn.qkv.w``, as in timm, so a checkpoint is a flat dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..kernels import (
    DropoutKey,
    dense_backward,
    dense_forward,
    drop_path_forward,
    dropout_forward,
    layernorm_backward,
    layernorm_forward,
)
from .init import Initializer, glorot_uniform, ones, zeros
from ..kernels.device import layernorm_backward_device
from ..kernels.fused import dense_backward_into, on_device

Array = Any
ParamSpecs = dict[str, tuple[tuple[int, ...], Initializer]]


@dataclass
class Context:
    """Settings of one forward pass: training mode (dropout on, caches kept) and where dropout masks come from.

    ``dropout_key`` names the masks of this pass (the step's dropout seed and the global index of the first
    image of the batch); each dropout layer asks for its own site's key, so masks are a pure function of
    (seed, layer, image) however the batch is cut.
    """

    training: bool = False
    dropout_key: DropoutKey | None = None
    keep_attention: bool = False  # record each block's attention probabilities (for inspection) ...
    attention_maps: list = field(default_factory=list)  # ... here, one (B, heads, T, T) array per block

    def dropout_key_for(self, site: str) -> DropoutKey:
        """The key of dropout layer ``site`` in this pass."""
        if self.dropout_key is None:
            raise ValueError("a training forward pass with dropout needs a dropout key (Context.dropout_key)")
        return self.dropout_key.at(site)

    def dropout(self, x: Array, rate: float, site: str) -> tuple[Array, Any]:
        """Inverted dropout of layer ``site`` when training, identity otherwise."""
        if not self.training or rate == 0.0:
            return x, None
        return dropout_forward(x, rate, self.dropout_key_for(site))

    def drop_path(self, x: Array, rate: float, site: str) -> tuple[Array, Any]:
        """Drop path (whole samples of a residual branch) of site ``site`` when training, identity otherwise."""
        if not self.training or rate == 0.0:
            return x, None
        return drop_path_forward(x, rate, self.dropout_key_for(site))

    def shifted(self, offset: int) -> "Context":
        """The context of the images from ``offset`` on (a piece ``x[offset:]`` of this pass's batch), sharing
        this one's list of attention maps."""
        key = None if self.dropout_key is None else self.dropout_key.shifted(offset)
        return Context(self.training, key, self.keep_attention, self.attention_maps)


class Dense:
    """y = x W + b with Glorot-uniform W and zero b (Keras ``Dense`` defaults) unless told otherwise."""

    def __init__(self, prefix: str, in_dim: int, out_dim: int, w_init: Initializer | None = None,
                 b_init: Initializer | None = None) -> None:
        self.prefix, self.in_dim, self.out_dim = prefix, in_dim, out_dim
        self.w_init, self.b_init = w_init or glorot_uniform(), b_init or zeros

    def param_specs(self) -> ParamSpecs:
        return {
            f"{self.prefix}.w": ((self.in_dim, self.out_dim), self.w_init),
            f"{self.prefix}.b": ((self.out_dim,), self.b_init),
        }

    def forward(self, params: dict, x: Array, ctx: Context) -> tuple[Array, Any]:
        return dense_forward(x, params[f"{self.prefix}.w"], params[f"{self.prefix}.b"])

    def backward(self, params: dict, grads: dict, dy: Array, cache: Any) -> Array:
        w, b = f"{self.prefix}.w", f"{self.prefix}.b"
        if on_device(dy) and hasattr(grads, "flat"):  # CuPy: written into the flat gradient buffer, no copies
            return dense_backward_into(dy, cache, params[w], grads[w], grads[b])
        dx, grads[w], grads[b] = dense_backward(dy, cache, params[w])
        return dx


class LayerNorm:
    """Layer normalization over the last axis with learned scale (gamma = 1) and shift (beta = 0)."""

    def __init__(self, prefix: str, dim: int, eps: float) -> None:
        self.prefix, self.dim, self.eps = prefix, dim, eps

    def param_specs(self) -> ParamSpecs:
        return {f"{self.prefix}.gamma": ((self.dim,), ones), f"{self.prefix}.beta": ((self.dim,), zeros)}

    def forward(self, params: dict, x: Array, ctx: Context) -> tuple[Array, Any]:
        p = self.prefix
        return layernorm_forward(x, params[f"{p}.gamma"], params[f"{p}.beta"], self.eps)

    def backward(self, params: dict, grads: dict, dy: Array, cache: Any, residual: Array | None = None) -> Array:
        """dx (+ ``residual``, a gradient added in the same kernel on CuPy); writes gamma's and beta's."""
        p = self.prefix
        if on_device(dy):  # CuPy: four kernels, summed into the flat gradient buffer when gamma and beta are neighbours
            xhat, rstd = cache
            names = (f"{p}.gamma", f"{p}.beta")
            pair = grads.span(*names) if hasattr(grads, "span") else None  # (2 D,) or None
            dx, dgamma, dbeta = layernorm_backward_device(dy, xhat, rstd, params[names[0]],
                                                          None if pair is None else pair.reshape(2, -1), residual)
            if pair is None:
                grads[names[0]], grads[names[1]] = dgamma, dbeta
            return dx
        dx, grads[f"{p}.gamma"], grads[f"{p}.beta"] = layernorm_backward(dy, cache, params[f"{p}.gamma"])
        return dx if residual is None else dx + residual
