"""Softmax over the last axis.

    forward:   y_i = exp(x_i - max(x)) / sum_j exp(x_j - max(x))      (subtracting the max avoids overflow)
    backward:  dx_i = y_i * (dy_i - sum_j dy_j y_j)

Only the output is cached: the Jacobian diag(y) - y y^T is written in terms of y alone (docs/math.md).
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module

Array = Any
SoftmaxCache = Array  # the output y


def softmax_forward(x: Array, out: Array | None = None) -> tuple[Array, SoftmaxCache]:
    """Softmax of ``x`` along its last axis. Returns (y, cache). ``out=x`` computes it in place."""
    xp = get_array_module(x)
    y = xp.subtract(x, x.max(axis=-1, keepdims=True), out=out)
    xp.exp(y, out=y)
    y /= y.sum(axis=-1, keepdims=True)
    return y, y


def softmax_backward(dy: Array, cache: SoftmaxCache, out: Array | None = None) -> Array:
    """Gradient of softmax_forward with respect to its input. ``out=dy`` computes it in place."""
    y = cache
    xp = get_array_module(y)
    dx = xp.subtract(dy, (dy * y).sum(axis=-1, keepdims=True), out=out)
    dx *= y
    return dx
