"""ReLU, the activation of CCT's convolutional tokenizer.

    forward:   y = max(x, 0)
    backward:  dx = dy [y > 0]          (the derivative at 0 taken as 0, as PyTorch's)

Only the output is cached: y > 0 exactly where x > 0, and the output is what the next layer (max-pooling)
keeps anyway, so the mask costs no memory of its own until the backward pass.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from .compiled import use_compiled

Array = Any
ReluCache = Array  # the output y


def relu_forward(x: Array, out: Array | None = None) -> tuple[Array, ReluCache]:
    """max(x, 0), elementwise. ``out=x`` computes it in place (a convolution's fresh output). Returns (y, cache)."""
    y = get_array_module(x).maximum(x, x.dtype.type(0), out=out)
    return y, y


def relu_backward(dy: Array, cache: ReluCache) -> Array:
    """Gradient of relu_forward: dy where the output was positive, 0 elsewhere."""
    if use_compiled(dy, cache):  # float32 on the CPU: one pass instead of compare, cast, multiply
        from .compiled import jit_conv
        return jit_conv.relu_backward(dy, cache)
    return dy * (cache > 0)
