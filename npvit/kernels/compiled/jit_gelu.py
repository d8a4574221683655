"""The tanh GELU forward and backward as one compiled pass each (float32): the formulas of
npvit.kernels.gelu, whose NumPy form makes eight passes forward and ten backward.

    forward:   u = sqrt(2/pi) (x + 0.044715 x^3),  t = tanh(u),  y = x (1 + t) / 2 = x sigmoid(2 u)  (y, t)
    backward:  dx = dy ((1 + t) / 2 + x (1 - t^2) sqrt(2/pi) (1 + 3 0.044715 x^2) / 2)

The cache is the NumPy kernel's (x, t). t and sigmoid(2 u) come from approx.tanh_sigmoid_f32 (relative error
<= 4e-7 each): y is computed as x sigmoid(2 u), precise to a few float32 roundings also for x << 0, where
NumPy's x (1 + t) / 2 loses its digits to the cancellation of 1 + t.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from .approx import FASTMATH, tanh_sigmoid_f32

Array = Any
F = np.float32
_S = F(math.sqrt(2.0 / math.pi))
_C = F(0.044715)
_C3 = F(3 * 0.044715)
_HALF, _ONE = F(0.5), F(1.0)
_OPTS = dict(fastmath=FASTMATH, nogil=True, cache=True, error_model="numpy")


@njit(**_OPTS)
def _forward(x, y, t):  # pragma: no cover - compiled
    for i in range(x.size):
        xi = x[i]
        th, sig = tanh_sigmoid_f32(_S * (xi + _C * xi * xi * xi))
        t[i] = th
        y[i] = xi * sig  # x (1 + t) / 2, without the cancellation of 1 + t for x << 0


@njit(**_OPTS)
def _backward(dy, x, t, dx):  # pragma: no cover - compiled
    for i in range(x.size):
        xi = x[i]
        th = t[i]
        dudx = (xi * xi * _C3 + _ONE) * _S
        dx[i] = ((_ONE - th * th) * xi * dudx + (_ONE + th)) * _HALF * dy[i]


def gelu_tanh_forward(x: Array) -> tuple[Array, Array]:
    """(y, tanh(u)) of the tanh GELU of a C-contiguous float32 array."""
    y, t = np.empty_like(x), np.empty_like(x)
    _forward(x.reshape(-1), y.reshape(-1), t.reshape(-1))
    return y, t


def gelu_tanh_backward(dy: Array, x: Array, t: Array) -> Array:
    """dy times the tanh GELU's derivative at x (t = tanh(u) from the forward pass)."""
    dx = np.empty_like(x)
    _backward(dy.reshape(-1), x.reshape(-1), t.reshape(-1), dx.reshape(-1))
    return dx
