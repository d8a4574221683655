"""Layer normalization over the last axis (Ba, Kiros & Hinton, 2016).

    forward:   mu = mean(x),  var = mean((x - mu)^2),  rstd = 1 / sqrt(var + eps)
               xhat = (x - mu) * rstd,  y = gamma * xhat + beta        x (..., D), gamma, beta (D,)
    backward:  dgamma = sum(dy * xhat),  dbeta = sum(dy)               (sums over leading axes)
               g = dy * gamma
               dx = rstd * (g - mean(g) - xhat * mean(g * xhat))       (means over the last axis)

The backward formula is derived step by step in docs/math.md ("Layer normalization").
"""

from __future__ import annotations

from typing import Any

Array = Any
LayerNormCache = tuple[Array, Array]  # (xhat, rstd)


def layernorm_forward(
    x: Array, gamma: Array, beta: Array, eps: float = 1e-6
) -> tuple[Array, LayerNormCache]:
    """Normalize each row of the last axis to zero mean and unit variance, then scale and shift."""
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = 1.0 / (var + eps) ** 0.5
    xhat = xc
    xhat *= rstd  # reuse the centred buffer: xc is not needed again
    y = xhat * gamma
    y += beta
    return y, (xhat, rstd)


def layernorm_backward(
    dy: Array, cache: LayerNormCache, gamma: Array
) -> tuple[Array, Array, Array]:
    """Gradients of layernorm_forward: returns (dx, dgamma, dbeta)."""
    xhat, rstd = cache
    lead = tuple(range(dy.ndim - 1))
    dgamma = (dy * xhat).sum(axis=lead)
    dbeta = dy.sum(axis=lead)
    g = dy * gamma
    dx = g - g.mean(axis=-1, keepdims=True)
    dx -= xhat * (g * xhat).mean(axis=-1, keepdims=True)
    dx *= rstd
    return dx, dgamma, dbeta
