"""Softmax forward and backward as compiled passes (float32): the formulas of npvit.kernels.softmax.

    forward:   y_i = 2^(k x_i - max(k x)) / sum_j 2^(k x_j - max(k x))     k = log2(e), or 1 when x is already
                                                                         in base 2 (the attention's scores)
    backward:  dx_i = y_i (dy_i - sum_j dy_j y_j)

Two layouts, both read as (matrices, R, C): over the last axis ("rows": each row reduced in registers), or
over axis -2 ("columns": the attention core's transposed scores, keys along axis -2; the reductions then run
across rows, a vector of C running maxima and sums, so every inner loop is a contiguous, vectorised one). An
attention matrix of 64 x 64 float32 is 16 KB: it stays in L1 between the passes. exp2 is approx.exp2_f32
(relative error <= 2e-7). The loops work in place on one array (the attention core's calls are in place; any
other call copies first): a loop that reads one array and writes another that is the same memory fails the
compiler's overlap check at run time, and runs scalar.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from .approx import FASTMATH, exp2_f32

Array = Any
F = np.float32
_OPTS = dict(fastmath=FASTMATH, nogil=True, cache=True, error_model="numpy")


@njit(**_OPTS)
def _forward_rows(y, k):  # pragma: no cover - compiled
    n, c = y.shape
    for r in range(n):
        m = y[r, 0]
        for j in range(1, c):
            m = max(m, y[r, j])
        s = F(0.0)
        for j in range(c):
            e = exp2_f32((y[r, j] - m) * k)
            y[r, j] = e
            s += e
        inv = F(1.0) / s
        for j in range(c):
            y[r, j] *= inv


@njit(**_OPTS)
def _forward_columns(y, k):  # pragma: no cover - compiled
    b, n, c = y.shape
    m = np.empty(c, F)
    s = np.empty(c, F)
    for i in range(b):
        for j in range(c):
            m[j] = y[i, 0, j]
            s[j] = F(0.0)
        for r in range(1, n):
            for j in range(c):
                m[j] = max(m[j], y[i, r, j])
        for r in range(n):
            for j in range(c):
                e = exp2_f32((y[i, r, j] - m[j]) * k)
                y[i, r, j] = e
                s[j] += e
        for j in range(c):
            s[j] = F(1.0) / s[j]
        for r in range(n):
            for j in range(c):
                y[i, r, j] *= s[j]


@njit(**_OPTS)
def _backward_rows(g, y):  # pragma: no cover - compiled
    n, c = y.shape
    for r in range(n):
        s = F(0.0)
        for j in range(c):
            s += g[r, j] * y[r, j]
        for j in range(c):
            g[r, j] = y[r, j] * (g[r, j] - s)


@njit(**_OPTS)
def _backward_columns(g, y):  # pragma: no cover - compiled
    b, n, c = y.shape
    s = np.empty(c, F)
    for i in range(b):
        for j in range(c):
            s[j] = F(0.0)
        for r in range(n):
            for j in range(c):
                s[j] += g[i, r, j] * y[i, r, j]
        for r in range(n):
            for j in range(c):
                g[i, r, j] = y[i, r, j] * (g[i, r, j] - s[j])


def last_axes(x: Array, axis: int) -> str | None:
    """"rows" (over the last axis), "columns" (over axis -2) or None (another axis: the NumPy kernel)."""
    axis = axis % x.ndim if x.ndim else axis
    if axis == x.ndim - 1:
        return "rows"
    if axis == x.ndim - 2:
        return "columns"
    return None


def softmax_forward(x: Array, layout: str, k: float, out: Array | None) -> Array:
    """The softmax of a C-contiguous float32 array over the layout's axis, into ``out`` (which may be x)."""
    y = x.copy() if out is None else out
    if y is not x:
        np.copyto(y, x)
    shape = (-1, x.shape[-1]) if layout == "rows" else (-1, *x.shape[-2:])
    (_forward_rows if layout == "rows" else _forward_columns)(y.reshape(shape), F(k))
    return y


def softmax_backward(dy: Array, y: Array, layout: str, out: Array | None) -> Array:
    """dx = y (dy - sum(dy y)) over the layout's axis, into ``out`` (which may be dy)."""
    dx = dy.copy() if out is None else out
    if dx is not dy:
        np.copyto(dx, dy)
    shape = (-1, y.shape[-1]) if layout == "rows" else (-1, *y.shape[-2:])
    (_backward_rows if layout == "rows" else _backward_columns)(dx.reshape(shape), y.reshape(shape))
    return dx
