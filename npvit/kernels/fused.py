"""One-kernel forms, for CuPy only, of the elementwise chains of GELU and layer norm.

On a GPU each array operation is a kernel launch of a few microseconds of Python and driver time, whatever
its size; the small models of the Keras and fast recipes are paced by those launches. ``cupy.fuse`` compiles a
Python function of array operations into one kernel. The functions below repeat, operation for operation, the
NumPy forms in ``gelu.py`` and ``layernorm.py`` (whose NumPy paths are unchanged), so the fake CuPy of the test
suite, which runs them op by op, computes exactly what NumPy computes; on a GPU NVRTC may contract a multiply
and an add into one fused multiply-add (one rounding instead of two).

    gelu tanh forward:   t = tanh(s (x + c x^3)),  y = (t + 1) x / 2                         (y, t)
    gelu tanh backward:  dx = ((1 - t^2) x s (1 + 3 c x^2) + (1 + t)) / 2 dy
    gelu erf backward:   dx = (exp2(-x^2 log2(e) / 2) / sqrt(2 pi) x + Phi) dy
    layer norm forward:  xhat = xc rstd,  y = xhat gamma + beta                               (y, xhat)
    layer norm backward: dx = (dy gamma - mean_g - xhat mean_gx) rstd
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


def _layernorm_scale(xp: ModuleType) -> Callable:
    def f(xc: Array, rstd: Array, gamma: Array, beta: Array) -> tuple[Array, Array]:
        xhat = xc * rstd
        return xhat * gamma + beta, xhat
    return f


def _layernorm_dx(xp: ModuleType) -> Callable:
    def f(dy: Array, gamma: Array, mean_g: Array, xhat: Array, mean_gx: Array, rstd: Array) -> Array:
        return (dy * gamma - mean_g - xhat * mean_gx) * rstd
    return f


def layernorm_scale(xc: Array, rstd: Array, gamma: Array, beta: Array) -> tuple[Array, Array]:
    """(xhat gamma + beta, xhat) with xhat = xc rstd, in one kernel; ``rstd`` is (rows, 1)."""
    return _kernel(_xp(xc), "npvit_layernorm_scale", _layernorm_scale)(xc, rstd, gamma, beta)


def layernorm_dx(dy: Array, gamma: Array, mean_g: Array, xhat: Array, mean_gx: Array, rstd: Array) -> Array:
    """(dy gamma - mean_g - xhat mean_gx) rstd in one kernel; the means and rstd are (rows, 1)."""
    return _kernel(_xp(dy), "npvit_layernorm_dx", _layernorm_dx)(dy, gamma, mean_g, xhat, mean_gx, rstd)


def _xp(x: Array) -> ModuleType:
    from ..backend import get_array_module

    return get_array_module(x)


def _variance(xp: ModuleType) -> Callable:
    def f(xc: Array, w: Array) -> Array:
        return (xc * xc * w).sum(axis=-1)
    return f


def _rstd(xp: ModuleType) -> Callable:
    def f(var: Array, eps: Any) -> Array:
        return 1.0 / (var + eps) ** 0.5
    return f


def layernorm_forward_device(x: Array, gamma: Array, beta: Array, eps: float) -> tuple[Array, tuple[Array, Array]]:
    """layernorm_forward on CuPy in six kernels (thirteen op by op): the same operations as the NumPy form."""
    from ..backend import row_dot

    xp = _xp(x)
    d = x.shape[-1]
    x2 = x.reshape(-1, d)  # (rows, D)
    row_mean = xp.full(d, 1.0 / d, dtype=x.dtype)  # (D,)
    xc = x2 - row_dot(x2, row_mean)[:, None]  # (rows, D)
    var = _kernel(xp, "npvit_layernorm_variance", _variance)(xc, row_mean)  # (rows,)
    rstd = _kernel(xp, "npvit_layernorm_rstd", _rstd)(var, x.dtype.type(eps))  # (rows,)
    y, xhat = layernorm_scale(xc, rstd[:, None], gamma, beta)  # (rows, D) each
    return y.reshape(x.shape), (xhat, rstd)


def layernorm_backward_device(dy: Array, xhat: Array, rstd: Array, gamma: Array,
                              out: tuple[Array, Array] | None = None) -> tuple[Array, Array, Array]:
    """layernorm_backward on CuPy: (dx, dgamma, dbeta), the elementwise tail in one kernel; ``out``: arrays
    (views of the flat gradient buffer) that dgamma and dbeta are summed into, saving two copies."""
    from ..backend import column_sum, row_dot

    d = xhat.shape[-1]
    dy2 = dy.reshape(-1, d)  # (rows, D)
    dyx = dy2 * xhat  # (rows, D)
    dgamma, dbeta = column_sum(dyx, out and out[0]), column_sum(dy2, out and out[1])  # (D,) each
    g_mean = gamma * gamma.dtype.type(1.0 / d)  # (D,)
    mean_g, mean_gx = row_dot(dy2, g_mean), row_dot(dyx, g_mean)  # (rows,) each
    dx = layernorm_dx(dy2, gamma, mean_g[:, None], xhat, mean_gx[:, None], rstd[:, None])  # (rows, D)
    return dx.reshape(dy.shape), dgamma, dbeta


def query_scale_vector(a: Array, hd: int, q_scale: float) -> Array:
    """(q_scale x hd, 1 x the rest) as a device array of ``a``'s dtype, made on the device once (nothing
    uploaded) and reused: the attention's query columns scaled in one multiply, exactly (q_scale rounded to
    the dtype, as the NumPy form does). Shared: never write to it."""
    xp = _xp(a)
    key = (xp, "npvit_query_scale", a.shape[-1], hd, float(q_scale), a.dtype.str)
    if key not in _KERNELS:
        old = [k for k in _KERNELS if k[1] == "npvit_query_scale"]
        if len(old) >= 16:  # a few shapes per run; keep the cache bounded
            _KERNELS.pop(old[0])
        v = xp.ones(a.shape[-1], dtype=a.dtype)  # (3 H d,)
        v[:hd] = a.dtype.type(q_scale)
        _KERNELS[key] = v
    return _KERNELS[key]


def dense_backward_into(dy: Array, x: Array, w: Array, dw: Array, db: Array) -> Array:
    """dense_backward on CuPy with dW and db written into ``dw`` and ``db`` (views of the flat gradient
    buffer) by the product and the column sum themselves: two copies fewer per layer. Returns dx."""
    from ..backend import column_sum

    x2 = x.reshape(-1, x.shape[-1])  # (rows, in)
    dy2 = dy.reshape(-1, dy.shape[-1])  # (rows, out)
    _xp(x).matmul(x2.T, dy2, out=dw)  # (in, out)
    column_sum(dy2, out=db)  # (out,)
    return (dy2 @ w.T).reshape(x.shape)  # (..., in)
