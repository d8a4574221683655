"""ConvTokenizer: CCT's convolutional tokenizer (Hassani et al., 2021), images -> tokens.

    for each layer i, C_i = conv_channels[i]:
        x = max_pool2d(relu(conv2d(x, W_i)), kernel 3, stride 2, padding 1)     (B, S, S, C) -> (B, S', S', C_i)
    tokens = x as (B, S' S', C)                       the last map's pixels, row-major: the grid of tokens
    tokens = tokens W + b                             (B, N, dim), only when C differs from dim

Convolutions are 3x3, stride 1, same zero padding, no bias, He-normal kernels (CCT's: torch's
kaiming_normal_), stored (3, 3, C_in, C_out). The first layer's input is the image: its gradient is computed
only when asked for (``input_grad``), a product and a col2im the training step does not need.
"""

from __future__ import annotations

from typing import Any

from ..config import CONV_KERNEL, POOL_KERNEL, POOL_PADDING, POOL_STRIDE, ViTConfig
from ..kernels import (
    conv2d_backward,
    conv2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
    relu_backward,
    relu_forward,
)
from .init import he_normal
from .module import Context, Dense, ParamSpecs

Array = Any


class ConvTokenizer:
    """(conv 3x3 -> ReLU -> max-pool 3/2/1) per entry of ``conv_channels``, then Dense(dim) if needed."""

    def __init__(self, prefix: str, cfg: ViTConfig) -> None:
        chans = (cfg.channels, *cfg.conv_channels)
        k = CONV_KERNEL
        self.convs = [(f"{prefix}.conv{i}.w", (k, k, a, b)) for i, (a, b) in enumerate(zip(chans, chans[1:]))]
        self.proj = Dense(f"{prefix}.proj", chans[-1], cfg.dim) if cfg.tokenizer_projects else None

    def param_specs(self) -> ParamSpecs:
        specs: ParamSpecs = {name: (shape, he_normal(shape[0] * shape[1] * shape[2])) for name, shape in self.convs}
        if self.proj is not None:
            specs.update(self.proj.param_specs())
        return specs

    def forward(self, params: dict, images: Array, ctx: Context) -> tuple[Array, tuple]:
        x, caches = images, []
        for name, _ in self.convs:
            y, c_conv = conv2d_forward(x, params[name])                     # (B, S, S, C_out)
            y, c_relu = relu_forward(y, out=y)                              # (B, S, S, C_out), in place
            x, c_pool = max_pool2d_forward(y, POOL_KERNEL, POOL_STRIDE, POOL_PADDING)  # (B, S', S', C_out)
            caches.append((c_conv, c_relu, c_pool))
        b, gh, gw, c = x.shape
        t = x.reshape(b, gh * gw, c)                                        # (B, N, C): the map's pixels
        c_proj = None
        if self.proj is not None:
            t, c_proj = self.proj.forward(params, t, ctx)                   # (B, N, dim)
        return t, (caches, x.shape, c_proj)

    def backward(self, params: dict, grads: dict, dt: Array, cache: tuple, input_grad: bool = True
                 ) -> Array | None:
        caches, shape, c_proj = cache
        if self.proj is not None:
            dt = self.proj.backward(params, grads, dt, c_proj)              # (B, N, C)
        dx = dt.reshape(shape)                                              # (B, S', S', C)
        for i in reversed(range(len(self.convs))):
            c_conv, c_relu, c_pool = caches[i]
            name = self.convs[i][0]
            dy = relu_backward(max_pool2d_backward(dx, c_pool), c_relu)     # (B, S, S, C_out)
            dx, grads[name] = conv2d_backward(dy, c_conv, params[name], need_dx=i > 0 or input_grad)
        return dx                                                           # (B, H, W, C) or None
