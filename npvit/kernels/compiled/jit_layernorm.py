"""Layer norm over the last axis as one compiled pass per row (float32): the formulas of
npvit.kernels.layernorm, whose NumPy form makes eleven passes over the array.

    forward:   mu = mean(x),  var = mean((x - mu)^2),  rstd = 1 / sqrt(var + eps)
               xhat = (x - mu) rstd,  y = gamma xhat + beta                  per row, the row in L1
    backward:  g = dy gamma,  dx = rstd (g - mean(g) - xhat mean(g xhat))    per row
               dgamma = sum(dy xhat),  dbeta = sum(dy)                      summed over rows in float64

The cache is the NumPy kernel's, (xhat, rstd), so either tier's backward pass reads either tier's forward.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from .approx import FASTMATH

Array = Any
F = np.float32
_OPTS = dict(fastmath=FASTMATH, nogil=True, cache=True, error_model="numpy")


@njit(**_OPTS)
def _forward(x, gamma, beta, eps, y, xhat, rstd):  # pragma: no cover - compiled
    rows, d = x.shape
    inv_d = F(1.0) / F(d)
    for r in range(rows):
        s = F(0.0)
        for j in range(d):
            s += x[r, j]
        mu = s * inv_d
        v = F(0.0)
        for j in range(d):
            c = x[r, j] - mu
            v += c * c
        rs = F(1.0) / np.sqrt(v * inv_d + eps)
        rstd[r] = rs
        for j in range(d):
            h = (x[r, j] - mu) * rs
            xhat[r, j] = h
            y[r, j] = h * gamma[j] + beta[j]


@njit(**_OPTS)
def _backward(dy, xhat, rstd, gamma, dx, dgamma, dbeta):  # pragma: no cover - compiled
    rows, d = dy.shape
    inv_d = F(1.0) / F(d)
    dg = np.zeros(d, np.float64)
    db = np.zeros(d, np.float64)
    for r in range(rows):
        sg = F(0.0)
        sgx = F(0.0)
        for j in range(d):
            g = dy[r, j] * gamma[j]
            sg += g
            sgx += g * xhat[r, j]
            dg[j] += dy[r, j] * xhat[r, j]
            db[j] += dy[r, j]
        mg = sg * inv_d
        mgx = sgx * inv_d
        rs = rstd[r]
        for j in range(d):
            dx[r, j] = (dy[r, j] * gamma[j] - mg - xhat[r, j] * mgx) * rs
    for j in range(d):
        dgamma[j] = dg[j]
        dbeta[j] = db[j]


def layernorm_forward(x: Array, gamma: Array, beta: Array, eps: float) -> tuple[Array, tuple[Array, Array]]:
    """npvit.kernels.layernorm_forward for a C-contiguous float32 array: (y, (xhat, rstd))."""
    d = x.shape[-1]
    x2 = x.reshape(-1, d)  # (rows, D)
    y, xhat = np.empty_like(x2), np.empty_like(x2)  # (rows, D) each
    rstd = np.empty((x2.shape[0], 1), dtype=x.dtype)  # (rows, 1)
    _forward(x2, np.ascontiguousarray(gamma, F), np.ascontiguousarray(beta, F), F(eps), y, xhat, rstd[:, 0])
    return y.reshape(x.shape), (xhat.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1))


def layernorm_backward(dy: Array, xhat: Array, rstd: Array, gamma: Array) -> tuple[Array, Array, Array]:
    """npvit.kernels.layernorm_backward for C-contiguous float32 arrays: (dx, dgamma, dbeta)."""
    d = xhat.shape[-1]
    dy2, xhat2 = dy.reshape(-1, d), xhat.reshape(-1, d)  # (rows, D) each
    dx = np.empty_like(dy2)  # (rows, D)
    dgamma, dbeta = np.empty(d, dtype=dy.dtype), np.empty(d, dtype=dy.dtype)  # (D,) each
    _backward(dy2, xhat2, np.ascontiguousarray(rstd.reshape(-1)), np.ascontiguousarray(gamma, F), dx, dgamma, dbeta)
    return dx.reshape(dy.shape), dgamma, dbeta
