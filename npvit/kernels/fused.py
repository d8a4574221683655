"""One-kernel forms, for CuPy only, of GELU's elementwise chains, and dense_backward into the flat buffer.

On a GPU each array operation is a kernel launch of a few microseconds of Python and driver time, whatever
its size; the small models of the Keras and fast recipes are paced by those launches. ``cupy.fuse`` compiles a
Python function of array operations into one kernel. The functions below repeat, operation for operation, the
NumPy forms in ``gelu.py`` (whose NumPy path is unchanged), so the fake CuPy of the test
suite, which runs them op by op, computes exactly what NumPy computes; on a GPU NVRTC may contract a multiply
and an add into one fused multiply-add (one rounding instead of two).

    gelu tanh forward:   t = tanh(s (x + c x^3)),  y = (t + 1) x / 2                         (y, t)
    gelu tanh backward:  dx = ((1 - t^2) x s (1 + 3 c x^2) + (1 + t)) / 2 dy
    gelu erf backward:   dx = (exp2(-x^2 log2(e) / 2) / sqrt(2 pi) x + Phi) dy

Layer norm, the softmax, dropout and the attention's chains are ElementwiseKernel/ReductionKernel source in
``device.py``.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Callable

import numpy

Array = Any
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_LOG2_E = 1.0 / math.log(2.0)
_C = 0.044715
_KERNELS: dict[tuple, Callable] = {}


def on_device(x: Array) -> bool:
    """True for a CuPy (not NumPy) array: the fused forms apply."""
    return not isinstance(x, (numpy.ndarray, numpy.generic))


def _kernel(xp: ModuleType, name: str, make: Callable[[ModuleType], Callable]) -> Callable:
    key = (xp, name)
    if key not in _KERNELS:
        _KERNELS[key] = xp.fuse(kernel_name=name)(make(xp))
    return _KERNELS[key]


def _gelu_tanh_forward(xp: ModuleType) -> Callable:
    def f(x: Array, s: Any, c: Any) -> tuple[Array, Array]:
        th = xp.tanh(s * (x + c * x * x * x))  # tanh(u)
        return (th + 1) * x * 0.5, th
    return f


def _gelu_tanh_backward(xp: ModuleType) -> Callable:
    def f(dy: Array, x: Array, th: Array, s: Any, c3: Any) -> Array:
        dudx = (x * x * c3 + 1) * s
        return ((1 - th * th) * x * dudx + (1 + th)) * 0.5 * dy
    return f


def _gelu_erf_backward(xp: ModuleType) -> Callable:
    def f(dy: Array, x: Array, cdf: Array, k: Any, inv: Any) -> Array:
        return (xp.exp2(x * x * k) * inv * x + cdf) * dy
    return f


def gelu_tanh_forward(x: Array) -> tuple[Array, Array]:
    """(y, tanh(u)) of the tanh GELU in one kernel."""
    typed = x.dtype.type
    return _kernel(_xp(x), "npvit_gelu_tanh_forward", _gelu_tanh_forward)(x, typed(_SQRT_2_OVER_PI), typed(_C))


def gelu_tanh_backward(dy: Array, x: Array, th: Array) -> Array:
    typed = x.dtype.type
    return _kernel(_xp(x), "npvit_gelu_tanh_backward", _gelu_tanh_backward)(
        dy, x, th, typed(_SQRT_2_OVER_PI), typed(3 * _C))


def gelu_erf_backward(dy: Array, x: Array, cdf: Array) -> Array:
    typed = x.dtype.type
    return _kernel(_xp(x), "npvit_gelu_erf_backward", _gelu_erf_backward)(
        dy, x, cdf, typed(-0.5 * _LOG2_E), typed(_INV_SQRT_2PI))


def _xp(x: Array) -> ModuleType:
    from ..backend import get_array_module

    return get_array_module(x)


def dense_backward_into(dy: Array, x: Array, w: Array, dw: Array, db: Array) -> Array:
    """dense_backward on CuPy with dW and db written into ``dw`` and ``db`` (views of the flat gradient
    buffer) by the product and the column sum themselves: two copies fewer per layer. Returns dx."""
    from ..backend import column_sum

    x2 = x.reshape(-1, x.shape[-1])  # (rows, in)
    dy2 = dy.reshape(-1, dy.shape[-1])  # (rows, out)
    _xp(x).matmul(x2.T, dy2, out=dw)  # (in, out)
    column_sum(dy2, out=db)  # (out,)
    return (dy2 @ w.T).reshape(x.shape)  # (..., in)
