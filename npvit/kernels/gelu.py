"""Gaussian Error Linear Unit (Hendrycks & Gimpel, 2016), exact and tanh-approximated.

    exact ("erf"):  y = x * Phi(x),   Phi(x) = (1 + erf(x / sqrt(2))) / 2,   phi(x) = exp(-x^2/2) / sqrt(2 pi)
                    dy/dx = Phi(x) + x * phi(x)
    approximate ("tanh"):  u = sqrt(2/pi) * (x + 0.044715 x^3),  t = tanh(u),  y = x (1 + t) / 2
                    dy/dx = (1 + t) / 2 + x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2

The Keras example uses ``keras.activations.gelu`` with its default approximate=False: the exact form
(``keras.ops.gelu``, by contrast, defaults to the tanh form). Both keep the input's dtype and shape.
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import erf, get_array_module

Array = Any
GeluCache = Array  # the input x

GELU_KINDS = ("erf", "tanh")
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_C = 0.044715


def gelu_forward(x: Array, kind: str = "erf") -> tuple[Array, GeluCache]:
    """GELU of ``x``; ``kind`` is "erf" (exact) or "tanh". Returns (y, cache)."""
    xp = get_array_module(x)
    if kind == "erf":
        y = erf(x * x.dtype.type(_SQRT_HALF))
    elif kind == "tanh":
        y = xp.tanh(x.dtype.type(_SQRT_2_OVER_PI) * (x + x.dtype.type(_C) * x * x * x))
    else:
        raise ValueError(f"unknown GELU kind {kind!r}: expected one of {GELU_KINDS}")
    y += 1
    y *= x
    y *= 0.5
    return y, x


def gelu_backward(dy: Array, cache: GeluCache, kind: str = "erf") -> Array:
    """Gradient of gelu_forward with respect to its input."""
    x = cache
    xp = get_array_module(x)
    t = x.dtype.type
    if kind == "erf":
        cdf = erf(x * t(_SQRT_HALF))
        cdf += 1
        cdf *= 0.5
        pdf = xp.exp(x * x * t(-0.5))
        pdf *= t(_INV_SQRT_2PI)
        pdf *= x
        pdf += cdf  # d/dx = Phi(x) + x phi(x)
        return dy * pdf
    if kind == "tanh":
        x2 = x * x
        th = xp.tanh(t(_SQRT_2_OVER_PI) * x * (1 + t(_C) * x2))
        dudx = t(_SQRT_2_OVER_PI) * (1 + t(3 * _C) * x2)
        grad = 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * dudx
        return dy * grad
    raise ValueError(f"unknown GELU kind {kind!r}: expected one of {GELU_KINDS}")
