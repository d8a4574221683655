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

from ..backend import get_array_module
from .compiled import use_compiled
from .erf import normal_cdf
from .fused import gelu_erf_backward, gelu_tanh_backward, gelu_tanh_forward, on_device

Array = Any
GeluCache = tuple[Array, Array, str]  # (x, Phi(x), "erf") or (x, tanh(u), "tanh"): the kind travels with the data

GELU_KINDS = ("erf", "tanh")
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_LOG2_E = 1.0 / math.log(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_C = 0.044715


def gelu_forward(x: Array, kind: str = "erf") -> tuple[Array, GeluCache]:
    """GELU of ``x``; ``kind`` is "erf" (exact) or "tanh". Returns (y, cache).

    The cache keeps Phi(x) (or the tanh) beside x: the backward pass needs it, and erf costs ten times an
    exp, so computing it once is worth the memory. It also keeps ``kind``, so the backward pass cannot run one
    kind's derivative on the other's data.
    """
    xp = get_array_module(x)
    typed = x.dtype.type
    if kind == "erf":
        cdf = normal_cdf(x)  # Phi(x) = (1 + erf(x / sqrt 2)) / 2
        return x * cdf, (x, cdf, kind)
    if kind == "tanh" and on_device(x):  # CuPy: one kernel (kernels/fused.py), the same operations
        y, th = gelu_tanh_forward(x)
        return y, (x, th, kind)
    if kind == "tanh" and use_compiled(x):  # float32 on the CPU: one pass (kernels/compiled/jit_gelu.py)
        from .compiled import jit_gelu

        y, th = jit_gelu.gelu_tanh_forward(x)
        return y, (x, th, kind)
    if kind == "tanh":
        th = xp.tanh(typed(_SQRT_2_OVER_PI) * (x + typed(_C) * x * x * x))  # tanh(u)
        y = th + 1
        y *= x
        y *= 0.5
        return y, (x, th, kind)
    raise ValueError(f"unknown GELU kind {kind!r}: expected one of {GELU_KINDS}")


def gelu_backward(dy: Array, cache: GeluCache, kind: str | None = None) -> Array:
    """Gradient of gelu_forward with respect to its input. The kind is the cache's; ``kind``, if given, must
    say the same (a check, not a choice)."""
    if not (isinstance(cache, tuple) and len(cache) == 3):
        raise TypeError("gelu_backward needs the cache gelu_forward returned: (x, Phi(x) or tanh(u), kind)")
    x, saved, cached_kind = cache  # Phi(x) for "erf", tanh(u) for "tanh"
    if kind is not None and kind != cached_kind:
        raise ValueError(f"gelu_backward was asked for kind {kind!r}, but the forward pass computed {cached_kind!r}")
    kind = cached_kind
    if on_device(x):  # CuPy: one kernel (kernels/fused.py), the same operations
        return (gelu_tanh_backward if kind == "tanh" else gelu_erf_backward)(dy, x, saved)
    if kind == "tanh" and use_compiled(dy, x, saved):  # float32 on the CPU: one pass (kernels/compiled/jit_gelu.py)
        from .compiled import jit_gelu

        return jit_gelu.gelu_tanh_backward(dy, x, saved)
    xp = get_array_module(x)
    typed = x.dtype.type
    if kind == "erf":
        grad = xp.exp2(x * x * typed(-0.5 * _LOG2_E))  # exp(-x^2 / 2); exp2 is the faster of the two in NumPy
        grad *= typed(_INV_SQRT_2PI)
        grad *= x
        grad += saved  # Phi(x) + x phi(x)
    elif kind == "tanh":
        dudx = x * x
        dudx *= typed(3 * _C)
        dudx += 1
        dudx *= typed(_SQRT_2_OVER_PI)
        grad = 1 - saved * saved
        grad *= x
        grad *= dudx
        grad += 1 + saved
        grad *= 0.5  # (1 + t) / 2 + x (1 - t^2) u'(x) / 2, t = tanh(u)
    else:
        raise ValueError(f"unknown GELU kind {kind!r}: expected one of {GELU_KINDS}")
    grad *= dy
    return grad
