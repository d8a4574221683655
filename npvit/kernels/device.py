"""CuPy-only kernels that do in one launch what the shared array code does in several.

On a GPU every array operation is a kernel launch of a few microseconds of Python and driver time; the small
models of the Keras and fast recipes are paced by those launches, not by arithmetic. Each function here is
the CuPy form of a NumPy formula elsewhere in ``kernels/`` (whose NumPy path is unchanged), written as
``ElementwiseKernel`` / ``ReductionKernel`` source in a small subset of C that the test suite's fake CuPy runs
as written (tests/support/fakekernels.py), so every kernel is checked element by element against its twin.
The formulas are their twins'; the rounding is not (other orders of additions, NVRTC's fused multiply-adds).

    layer norm forward    mu = sum(x w), rstd = 1 / sqrt(sum((x - mu)^2 w) + eps), w = 1/D      2 reductions
                          xhat = (x - mu) rstd, y = xhat gamma + beta                               1 kernel
    layer norm backward   [mean(g), mean(g xhat)] with g = dy gamma                                1 reduction
                          dx = (g - mean(g) - xhat mean(g xhat)) rstd, [dy xhat | dy] side by side  1 kernel
                          [dgamma | dbeta] = column sums of that pair                               2 (two-stage)
    softmax (base 2)      m = max(x), s = sum(2^(x - m)), y = 2^(x - m) / s  (A = y keep / (1 - p))  3
    softmax backward      dx = y (dA' - sum(dA' y)), dA' = dA keep / (1 - p)                        2
    attention gradients   [dQ f_q | dK^T^T f_k | dV^T^T] into the projection's layout                 1
    bias, GELU, dropout   z = h + b, y = gelu(z) keep / (1 - p); backward dz = dy keep / (1 - p) gelu'(z)  1 + 1
    dropout               the keep mask drawn inside the kernel that applies it                    1
    cross-entropy         max, sum(exp), [p, -log p q] per element, their mean; backward (p - q) c  4 + 1

Dropout masks are drawn in the kernel from the counter-based SplitMix64 stream of npvit.kernels.random: the
kernel derives the site's key from the seed (``stream_key``), and the element at (sample r, position j) reads
16 bits of word first*words + r*words + j/4 of that stream, so the masks are exactly those of ``keep_mask``
on CuPy, without materialising the words; the seed may live on the device (a captured CUDA graph's).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy

from ..backend import column_sum, get_array_module
from .random import _SPLITMIX_GAMMA, _SPLITMIX_M1, _SPLITMIX_M2, _site_id, drop_threshold, dropout_scale

Array = Any
DropoutKey = Any  # npvit.kernels.dropout.DropoutKey: seed, site, first
_KERNELS: dict[tuple, Any] = {}
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_C = 0.044715


def _elementwise(xp: ModuleType, name: str, ins: str, outs: str, code: str) -> Any:
    key = (xp, name, ins, outs, code)
    if key not in _KERNELS:
        _KERNELS[key] = xp.ElementwiseKernel(ins, outs, code, name)
    return _KERNELS[key]


def _reduction(xp: ModuleType, name: str, ins: str, out: str, map_expr: str, post: str,
               reduce_expr: str = "a + b", identity: str = "0") -> Any:
    key = (xp, name, ins, out, map_expr, post, reduce_expr)
    if key not in _KERNELS:
        _KERNELS[key] = xp.ReductionKernel(ins, out, map_expr, reduce_expr, post, identity, name)
    return _KERNELS[key]


def _constant(xp: ModuleType, values: tuple[float, ...], dtype: Any) -> Array:
    """A small constant vector made on the device once (filled element by element: nothing uploaded) and
    reused. Shared: never write to it."""
    key = (xp, "npvit_constant", values, numpy.dtype(dtype).str)
    if key not in _KERNELS:
        v = xp.empty(len(values), dtype=dtype)
        for j, value in enumerate(values):
            v[j] = numpy.dtype(dtype).type(value)
        _KERNELS[key] = v
    return _KERNELS[key]


# ------------------------------------------------------------------------------------------- dropout masks
# The keep decision of element i of an array whose samples are ``per`` elements each (axis 0: samples):
# word n = base + r * words + j / 4 of the site's SplitMix64 stream (base = first * words + 1), bits 16 (j % 4).
_MASK_PARAMS = "uint64 seed, uint64 site, uint64 base, uint64 per, uint64 words, uint64 thr, T c"
_MASK_INDEX = "unsigned long long e = i; unsigned long long r = e / per; unsigned long long j = e - r * per;"
# The same for a (B, h, n1, n2) array whose mask is drawn (B, h, n2, n1): the attention's probabilities.
_MASK_INDEX_T = ("unsigned long long e = i; unsigned long long r = e / per; unsigned long long t = e - r * per;"
                 "unsigned long long hh = t / (n1 * n2); unsigned long long u = t - hh * n1 * n2;"
                 "unsigned long long q = u / n2; unsigned long long k = u - q * n2;"
                 "unsigned long long j = hh * n1 * n2 + k * n1 + q;")
_MASK_BITS = (f"unsigned long long key = seed * {_SPLITMIX_GAMMA:#x}ull + site;"  # random.stream_key
              f"key = (key ^ (key >> 30)) * {_SPLITMIX_M1:#x}ull;"
              f"key = (key ^ (key >> 27)) * {_SPLITMIX_M2:#x}ull;"
              "key = key ^ (key >> 31);"
              f"unsigned long long bits = (base + r * words + (j >> 2)) * {_SPLITMIX_GAMMA:#x}ull + key;"
              f"bits = (bits ^ (bits >> 30)) * {_SPLITMIX_M1:#x}ull;"
              f"bits = (bits ^ (bits >> 27)) * {_SPLITMIX_M2:#x}ull;"
              "bits = bits ^ (bits >> 31);"
              "keep = ((bits >> ((j & 3) * 16)) & 65535) >= thr;")


def mask_args(shape: tuple[int, ...], rate: float, key: DropoutKey, dtype: Any) -> tuple:
    """The kernel arguments (seed, site, base, per, words, thr, c) of dropout site ``key`` for an array of
    ``shape``. ``key.seed`` may be a 0-d uint64 device array (a captured step's, rewritten before each launch)."""
    per = math.prod(shape[1:])
    words = -(-per // 4)
    u64 = numpy.uint64
    seed = key.seed if hasattr(key.seed, "shape") else u64(key.seed)
    return (seed, u64(_site_id(key.site)), u64(key.first * words + 1), u64(per), u64(words),
            u64(drop_threshold(rate)), numpy.dtype(dtype).type(dropout_scale(rate)))


def dropout_forward_device(x: Array, rate: float, key: DropoutKey) -> tuple[Array, tuple[Array, float]]:
    """Inverted dropout in one kernel: (y, (keep mask, scale)), the mask drawn inside it (see the module doc)."""
    xp = get_array_module(x)
    kernel = _elementwise(xp, "npvit_dropout", "T x, " + _MASK_PARAMS, "T y, bool keep",
                          _MASK_INDEX + _MASK_BITS + "y = x * (T(keep) * c);")
    y, keep = kernel(x, *mask_args(x.shape, rate, key, x.dtype))
    return y, (keep, dropout_scale(rate))


def dropout_backward_device(dy: Array, keep: Array, scale: float) -> Array:
    """dx = dy keep / (1 - p) in one kernel."""
    return _elementwise(get_array_module(dy), "npvit_dropout_backward", "T dy, bool keep, T c", "T dx",
                        "dx = dy * (T(keep) * c);")(dy, keep, dy.dtype.type(scale))


# ---------------------------------------------------------------------------------- bias, GELU and dropout
_GELU = {
    "tanh": (f"T t = tanh(T({_SQRT_2_OVER_PI!r}) * (z + T({_C!r}) * z * z * z));"
             "T g = (t + T(1)) * z * T(0.5);"),
    "erf": f"T g = z * (T(0.5) + T(0.5) * erf(z * T({_INV_SQRT_2!r})));",
    "none": "T g = z;",
}
_GELU_GRAD = {
    "tanh": (f"T t = tanh(T({_SQRT_2_OVER_PI!r}) * (z + T({_C!r}) * z * z * z));"
             f"T d = (T(1) + t) * T(0.5) + z * (T(1) - t * t) * T({_SQRT_2_OVER_PI!r})"
             f" * (T(1) + T({3 * _C!r}) * z * z) * T(0.5);"),
    "erf": (f"T d = T(0.5) + T(0.5) * erf(z * T({_INV_SQRT_2!r}))"
            f" + z * exp(z * z * T(-0.5)) * T({_INV_SQRT_2PI!r});"),
    "none": "T d = T(1);",
}


def bias_act_forward(h: Array, b: Array, kind: str, rate: float = 0.0, key: DropoutKey | None = None,
                     residual: Array | None = None) -> tuple[Array, tuple]:
    """z = h + b (written over ``h``), y = dropout(gelu(z)) (+ ``residual``, a block's residual sum) --
    ``kind`` "erf", "tanh" or "none" (no GELU) -- in one kernel. Returns (y, cache) for bias_act_backward
    (the residual's gradient is the caller's: y's own)."""
    xp = get_array_module(h)
    if kind not in _GELU:
        raise ValueError(f"unknown GELU kind {kind!r}: expected 'erf', 'tanh' or 'none'")
    res_in, res, args = ("", "", ()) if residual is None else (", T res", " + res", (residual,))
    if rate > 0.0:
        kernel = _elementwise(xp, f"npvit_bias_{kind}_dropout", "T h, T b" + res_in + ", " + _MASK_PARAMS,
                              "T z, T y, bool keep", "z = h + b;" + _GELU[kind] + _MASK_INDEX + _MASK_BITS
                              + f"y = g * (T(keep) * c){res};")
        masks = mask_args(h.shape, rate, key, h.dtype)
        z, y, keep = kernel(h, b, *args, *masks, h, xp.empty_like(h), xp.empty(h.shape, dtype=numpy.bool_))
        return y, (z, keep, masks[-1], kind)
    if kind == "none":  # one output, over h: z is not needed again
        y = _elementwise(xp, "npvit_bias", "T h, T b" + res_in, "T y", f"y = h + b{res};")(h, b, *args, h)
        return y, (None, None, None, kind)
    kernel = _elementwise(xp, f"npvit_bias_{kind}", "T h, T b" + res_in, "T z, T y",
                          "z = h + b;" + _GELU[kind] + f"y = g{res};")
    z, y = kernel(h, b, *args, h, xp.empty_like(h))
    return y, (z, None, None, kind)


def bias_act_backward(dy: Array, cache: tuple) -> Array:
    """The gradient of bias_act_forward with respect to z (and h): dz = dy keep / (1 - p) gelu'(z)."""
    z, keep, c, kind = cache
    xp = get_array_module(dy)
    if keep is None:
        if kind == "none":
            return dy
        return _elementwise(xp, f"npvit_{kind}_backward", "T dy, T z", "T dz",
                            _GELU_GRAD[kind] + "dz = dy * d;")(dy, z)
    return _elementwise(xp, f"npvit_{kind}_dropout_backward", "T dy, T z, bool keep, T c", "T dz",
                        _GELU_GRAD[kind] + "dz = dy * (T(keep) * c) * d;")(dy, z, keep, c)


# -------------------------------------------------------------------------------------------- layer norm
def layernorm_forward_device(x: Array, gamma: Array, beta: Array, eps: float) -> tuple[Array, tuple[Array, Array]]:
    """layernorm_forward on CuPy in three launches: (y, (xhat, rstd)) in the NumPy form's layout."""
    xp = get_array_module(x)
    d = x.shape[-1]
    x2 = x.reshape(-1, d)  # (rows, D)
    w = f"T({1.0 / d!r})"  # reductions take no scalars: 1/D and eps are written into their source
    mu = _reduction(xp, "npvit_ln_mean", "T x", "T m", f"x * {w}", "m = a")(x2, axis=-1, keepdims=True)  # (rows, 1)
    rstd = _reduction(xp, "npvit_ln_rstd", "T x, T mu", "T rstd", f"(x - mu) * (x - mu) * {w}",
                      f"rstd = T(1) / sqrt(a + T({float(eps)!r}))")(x2, mu, axis=-1, keepdims=True)  # (rows, 1)
    y, xhat = _elementwise(xp, "npvit_ln_scale", "T x, T mu, T rstd, T gamma, T beta", "T y, T xhat",
                           "xhat = (x - mu) * rstd; y = xhat * gamma + beta;")(x2, mu, rstd, gamma, beta)
    return y.reshape(x.shape), (xhat.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1))


def layernorm_backward_device(dy: Array, xhat: Array, rstd: Array, gamma: Array, out: Array | None = None,
                              residual: Array | None = None) -> tuple[Array, Array, Array]:
    """layernorm_backward on CuPy in four launches: (dx, dgamma, dbeta). ``out``: a (2, D) array (dgamma's and
    dbeta's places side by side in the flat gradient buffer) the column sums are written into. ``residual``:
    a gradient added to dx in the same kernel (a block's residual path)."""
    xp = get_array_module(dy)
    d = xhat.shape[-1]
    dy2, xhat2 = dy.reshape(-1, d), xhat.reshape(-1, d)  # (rows, D)
    rows = dy2.shape[0]
    sel = _constant(xp, (0.0, 1.0), dy.dtype).reshape(2, 1)  # (2, 1)
    # [mean(g), mean(g xhat)] per row in one reduction: the factor sel xhat + (1 - sel) is 1 or xhat, exactly.
    means = _reduction(xp, "npvit_ln_means", "T dy, T gamma, T xhat, T sel", "T m",
                       f"dy * gamma * (sel * xhat + (T(1) - sel)) * T({1.0 / d!r})", "m = a")(
        dy2[:, None, :], gamma, xhat2[:, None, :], sel, axis=-1)  # (rows, 2)
    pair = xp.empty((rows, 2, d), dtype=dy.dtype)  # [dy xhat | dy] per row: one column sum for both
    res_in, res, args = ("", "", ()) if residual is None else (", T res", " + res", (residual.reshape(-1, d),))
    dx = _elementwise(xp, "npvit_ln_dx", "T dy, T gamma, T xhat, T mg, T mgx, T rstd" + res_in, "T dx, T gx, T g",
                      f"dx = (dy * gamma - mg - xhat * mgx) * rstd{res}; gx = dy * xhat; g = dy;")(
        dy2, gamma, xhat2, means[:, 0:1], means[:, 1:2], rstd.reshape(-1, 1), *args, xp.empty_like(dy2),
        pair[:, 0], pair[:, 1])[0]  # (rows, D)
    sums = column_sum(pair.reshape(rows, 2 * d), None if out is None else out.reshape(2 * d))  # (2 D,)
    return dx.reshape(dy.shape), sums[:d], sums[d:]


# ---------------------------------------------------------------------------------------------- softmax
def softmax_forward_device(s: Array, drop: tuple | None = None) -> tuple[Array, Array | None, Array | None]:
    """Softmax over the last axis of base-2 logits ``s`` (B, h, n1, n2), in place: (P, A, keep) with
    A = P keep / (1 - p) when ``drop`` = (rate, key) is given (the mask drawn (B, h, n2, n1) and read
    transposed, as the attention draws it), else (P, None, None). Three launches."""
    xp = get_array_module(s)
    m = s.max(axis=-1, keepdims=True)  # (..., 1)
    total = _reduction(xp, "npvit_softmax_sum", "T x, T m", "T s", "exp2(x - m)", "s = a")(
        s, m, axis=-1, keepdims=True)  # (..., 1)
    if drop is None:
        _elementwise(xp, "npvit_softmax", "T x, T m, T s", "T y", "y = exp2(x - m) / s;")(s, m, total, s)
        return s, None, None
    rate, key = drop
    b, h, n1, n2 = s.shape
    mask_shape = (b, h, n2, n1)
    kernel = _elementwise(xp, "npvit_softmax_dropout", "T x, T m, T s, " + _MASK_PARAMS + ", uint64 n1, uint64 n2",
                          "T y, T a, bool keep",
                          "y = exp2(x - m) / s;" + _MASK_INDEX_T + _MASK_BITS + "a = y * (T(keep) * c);")
    _, a, keep = kernel(s, m, total, *mask_args(mask_shape, rate, key, s.dtype), numpy.uint64(n1),
                        numpy.uint64(n2), s, xp.empty_like(s), xp.empty(s.shape, dtype=numpy.bool_))
    return s, a, keep


def softmax_backward_device(da: Array, p: Array, keep: Array | None = None, scale: float = 1.0) -> Array:
    """dS = P (dP - sum(dP P)) over the last axis, in place in ``da``, with dP = dA keep / (1 - p) when
    ``keep`` is given. Two launches."""
    xp = get_array_module(da)
    if keep is None:
        total = _reduction(xp, "npvit_softmax_grad_sum", "T dy, T y", "T s", "dy * y", "s = a")(
            da, p, axis=-1, keepdims=True)
        return _elementwise(xp, "npvit_softmax_backward", "T dy, T y, T s", "T dx", "dx = (dy - s) * y;")(
            da, p, total, da)
    c = da.dtype.type(scale)
    total = _reduction(xp, "npvit_softmax_dropout_grad_sum", "T dy, T y, bool keep", "T s",
                       f"dy * (T(keep) * T({float(scale)!r})) * y", "s = a")(da, p, keep, axis=-1, keepdims=True)
    return _elementwise(xp, "npvit_softmax_dropout_backward", "T dy, T y, bool keep, T c, T s", "T dx",
                        "dx = (dy * (T(keep) * c) - s) * y;")(da, p, keep, c, total, da)


def qkv_layout(h: Array, b: Array, num_heads: int, q_scale: float) -> Array:
    """The fused projection's output (B, T, 3 h d) plus its bias, the query's part times q_scale, as one
    contiguous (3, B, h, T, d) array: bias, scale and the layout change in one kernel."""
    xp = get_array_module(h)
    bsz, n, three_hd = h.shape
    d = three_hd // (3 * num_heads)
    scale = _constant(xp, (float(q_scale), 1.0, 1.0), h.dtype).reshape(3, 1, 1, 1, 1)
    out = xp.empty((3, bsz, num_heads, n, d), dtype=h.dtype)
    _elementwise(xp, "npvit_qkv_layout", "T h, T b, T s", "T q", "q = (h + b) * s;")(
        h.reshape(bsz, n, 3, num_heads, d).transpose(2, 0, 3, 1, 4), b.reshape(3, 1, num_heads, 1, d), scale, out)
    return out


def qkv_gradient_layout(dq: Array, dkt: Array, dvt: Array, q_factor: float, k_factor: float) -> Array:
    """dH = [dq q_factor | dkt^T k_factor | dvt^T] in the projection's (B, T, 3 h d) layout, in one kernel:
    the three parts are selected by one-hot factors (each part is x 1 + 0 + 0, exactly x), so that one launch
    does the scaling, the two transposes and the layout change of three."""
    xp = get_array_module(dq)
    b, heads, n, d = dq.shape
    t = dq.dtype
    fq, fk, fv = (_constant(xp, f, t).reshape(3, 1, 1, 1, 1) for f in ((q_factor, 0.0, 0.0), (0.0, k_factor, 0.0),
                                                                         (0.0, 0.0, 1.0)))
    dh = xp.empty((b, n, 3, heads, d), dtype=t)
    _elementwise(xp, "npvit_qkv_gradient_layout", "T gq, T gk, T gv, T fq, T fk, T fv", "T dh",
                 "dh = gq * fq + gk * fk + gv * fv;")(
        dq, dkt.swapaxes(-1, -2), dvt.swapaxes(-1, -2), fq, fk, fv, dh.transpose(2, 0, 3, 1, 4))
    return dh.reshape(b, n, 3 * heads * d)


# ------------------------------------------------------------------------------------------- cross-entropy
def _columns(xp: ModuleType, k: int) -> Array:
    """0 .. k-1 as a device int64 vector, made once (no upload). Shared: never write to it."""
    key = (xp, "npvit_columns", k)
    if key not in _KERNELS:
        _KERNELS[key] = xp.arange(k, dtype=numpy.int64)
    return _KERNELS[key]


def cross_entropy_forward_device(logits: Array, labels: Array, smoothing: float) -> tuple[Array, tuple]:
    """cross_entropy_forward on CuPy in four launches: (loss, (p, labels, smoothing)), with
    loss = -(1/B) sum q log p, q = (1 - s) onehot + s / K, log p = z - m - log(sum exp(z - m))."""
    xp = get_array_module(logits)
    b, k = logits.shape
    m = logits.max(axis=1, keepdims=True)  # (B, 1)
    total = _reduction(xp, "npvit_ce_sum", "T x, T m", "T s", "exp(x - m)", "s = a")(
        logits, m, axis=1, keepdims=True)  # (B, 1)
    typed = logits.dtype.type
    p, nll = _elementwise(xp, "npvit_ce", "T x, T m, T s, int64 col, int64 label, T on, T off", "T p, T nll",
                          "T logp = x - m - log(s); p = exp(logp); nll = -logp * ((col == label) * on + off);")(
        logits, m, total, _columns(xp, k), labels[:, None], typed(1.0 - smoothing), typed(smoothing / k))
    loss = _reduction(xp, "npvit_ce_mean", "T nll", "T loss", "nll", f"loss = a / T({b})")(nll)  # 0-d
    return loss, (p, labels, smoothing)


def cross_entropy_backward_device(p: Array, labels: Array, smoothing: float, dloss: float) -> Array:
    """dz = (p - q) dloss / B in one kernel."""
    xp = get_array_module(p)
    b, k = p.shape
    typed = p.dtype.type
    return _elementwise(xp, "npvit_ce_backward", "T p, int64 col, int64 label, T on, T off, T c", "T dz",
                        "dz = (p - (col == label) * on - off) * c;")(
        p, _columns(xp, k), labels[:, None], typed(1.0 - smoothing), typed(smoothing / k), typed(dloss / b))
