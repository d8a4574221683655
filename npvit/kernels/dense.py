"""Dense (fully connected) layer on the last axis.

    forward:   y = x W + b                       x (..., in), W (in, out), b (out,) -> y (..., out)
    backward:  dx = dy W^T,  dW = x^T dy,  db = sum(dy)   (sums over every leading axis of x)

Leading axes are flattened into one so that each product is a single large matrix multiply (GEMM), which is
where a BLAS library is fastest.
"""

from __future__ import annotations

from typing import Any

from ..backend import column_sum

Array = Any
DenseCache = Array  # the input x: all the backward pass needs besides W


def dense_forward(x: Array, w: Array, b: Array | None) -> tuple[Array, DenseCache]:
    """y = x @ w + b on the last axis of ``x``. Returns (y, cache)."""
    y = x.reshape(-1, x.shape[-1]) @ w
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], w.shape[1]), x


def dense_backward(dy: Array, cache: DenseCache, w: Array) -> tuple[Array, Array, Array]:
    """Gradients of dense_forward: returns (dx, dw, db)."""
    x = cache
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    dw = x2.T @ dy2
    db = column_sum(dy2)  # a two-stage sum on a GPU, x.sum(axis=0) on NumPy
    dx = (dy2 @ w.T).reshape(x.shape)
    return dx, dw, db
