"""Layer normalization over the last axis (Ba, Kiros & Hinton, 2016).

    forward:   mu = mean(x),  var = mean((x - mu)^2),  rstd = 1 / sqrt(var + eps)
               xhat = (x - mu) * rstd,  y = gamma * xhat + beta        x (..., D), gamma, beta (D,)
    backward:  dgamma = sum(dy * xhat),  dbeta = sum(dy)               (sums over leading axes)
               g = dy * gamma
               dx = rstd * (g - mean(g) - xhat * mean(g * xhat))       (means over the last axis)

The backward formula is derived step by step in docs/math.md ("Layer normalization"). The four per-row means
are weighted row sums (npvit.backend.row_dot): matrix-vector products on NumPy, reductions on a GPU.
"""

from __future__ import annotations

from typing import Any

from ..backend import column_sum, get_array_module, row_dot
from .compiled import use_compiled
from .device import layernorm_backward_device, layernorm_forward_device
from .fused import on_device

Array = Any
LayerNormCache = tuple[Array, Array]  # (xhat (..., D), rstd (..., 1)): the reference's layout, as views


def layernorm_forward(
    x: Array, gamma: Array, beta: Array, eps: float = 1e-6
) -> tuple[Array, LayerNormCache]:
    """Normalize each row of the last axis to zero mean and unit variance, then scale and shift."""
    if on_device(x):  # CuPy: three kernels instead of thirteen (kernels/device.py), the same formulas
        return layernorm_forward_device(x, gamma, beta, eps)
    if use_compiled(x):  # float32 on the CPU: one pass per row (kernels/compiled/jit_layernorm.py)
        from .compiled import jit_layernorm

        return jit_layernorm.layernorm_forward(x, gamma, beta, eps)
    d = x.shape[-1]
    x2 = x.reshape(-1, d)
    row_mean = get_array_module(x).full(d, 1.0 / d, dtype=x.dtype)
    xc = x2 - row_dot(x2, row_mean)[:, None]
    rstd = 1.0 / (row_dot(xc * xc, row_mean) + x.dtype.type(eps)) ** 0.5
    xhat = xc
    xhat *= rstd[:, None]  # reuse the centred buffer: xc is not needed again
    y = xhat * gamma
    y += beta
    return y.reshape(x.shape), (xhat.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1))


def layernorm_backward(
    dy: Array, cache: LayerNormCache, gamma: Array
) -> tuple[Array, Array, Array]:
    """Gradients of layernorm_forward: returns (dx, dgamma, dbeta)."""
    xhat, rstd = cache
    if on_device(xhat):  # CuPy: four kernels (kernels/device.py)
        return layernorm_backward_device(dy, xhat, rstd, gamma)
    if use_compiled(dy, xhat, rstd):  # float32 on the CPU: one pass per row (kernels/compiled/jit_layernorm.py)
        from .compiled import jit_layernorm

        return jit_layernorm.layernorm_backward(dy, xhat, rstd, gamma)
    d = xhat.shape[-1]
    xhat, rstd = xhat.reshape(-1, d), rstd.reshape(-1)  # (rows, D), (rows,): views
    dy2 = dy.reshape(-1, d)
    dyx = dy2 * xhat
    dgamma = column_sum(dyx)  # two-stage sums on a GPU, .sum(axis=0) on NumPy
    dbeta = column_sum(dy2)
    g_mean = gamma * gamma.dtype.type(1.0 / d)
    mean_g = row_dot(dy2, g_mean)  # mean(g) with g = dy * gamma, per row
    mean_gx = row_dot(dyx, g_mean)  # mean(g * xhat), per row
    dx = dy2 * gamma
    dx -= mean_g[:, None]
    dx -= get_array_module(dx).multiply(xhat, mean_gx[:, None], out=dyx)  # dyx's buffer is free again
    dx *= rstd[:, None]
    return dx.reshape(dy.shape), dgamma, dbeta
