"""Multi-head self-attention on CuPy in few launches: the formulas of ``attention.py``, arranged for a GPU.

    forward:   H = x W_qkv                               one GEMM over all B*T tokens, W_qkv unscaled
               [Q s | K | V] = (H + b_qkv) * (s, 1, 1)    bias, query scale s = log2(e)/sqrt(d) and the
                                                          (3, B, h, T, d) layout in one kernel
               S = (Q s) K^T,  P = softmax2(S),  A = P keep / (1 - p)         softmax and dropout: 3 kernels
               O = A V,  y = concat_j(O_j) W_o + b_o
    backward:  dV = A^T dO,  dA = dO V^T,  dS = P (dP - rowsum(dP P)), dP = dA keep / (1 - p)
               dH_q = dS K / sqrt(d),  dH_k = dS^T (Q s) / (sqrt(d) s),  dH_v = dV
               dW_qkv = x^T dH,  db_qkv = colsum(dH),  dx = dH W_qkv^T

The query scale is applied after the projection (not folded into a scaled copy of W_qkv, as the NumPy path
does): no copy of the weights per step, and dH is the gradient of the unscaled projection, so the weight
gradients need no correction afterwards. The gradients go straight into the flat gradient buffer when given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..backend import get_array_module
from .dense import dense_backward, dense_forward
from .device import bias_act_forward, qkv_gradient_layout, qkv_layout, softmax_backward_device, softmax_forward_device
from .fused import dense_backward_into
from .random import dropout_scale
from .softmax import LOG2_E

Array = Any


@dataclass(frozen=True)
class DeviceAttentionCache:
    """What mha_backward_device needs: the input, Q s, K, V, P, A (None without dropout), the keep mask, the
    dropout factor, the query scale s and the output projection's input."""

    x: Array
    q: Array
    k: Array
    v: Array
    p: Array
    a: Array | None
    keep: Array | None
    drop_scale: float
    q_scale: float
    o: Array


def mha_forward_device(x: Array, w_qkv: Array, b_qkv: Array, w_out: Array, b_out: Array, num_heads: int,
                       rate: float, key: Any, return_probs: bool, residual: Array | None = None
                       ) -> tuple[Array, DeviceAttentionCache | None, Array | None]:
    """mha_forward on CuPy: (y, cache, P), P (B, h, T, T); with ``residual``, y + residual (the output bias
    and the block's residual sum in one kernel)."""
    xp = get_array_module(x)
    b, n, dim = x.shape
    hd = w_qkv.shape[1] // 3
    d = hd // num_heads
    q_scale = LOG2_E / math.sqrt(d)
    h = (x.reshape(-1, dim) @ w_qkv).reshape(b, n, 3 * hd)  # (B, T, 3 h d)
    qkv = qkv_layout(h, b_qkv, num_heads, q_scale)  # (3, B, h, T, d): [Q s | K | V]
    q, k, v = qkv[0], qkv[1], qkv[2]
    s = xp.matmul(q, k.swapaxes(-1, -2))  # (B, h, T, T): base-2 logits
    p, a, keep = softmax_forward_device(s, (rate, key) if rate > 0.0 else None)  # P in place of S
    o = xp.matmul(p if a is None else a, v)  # (B, h, T, d)
    o = o.transpose(0, 2, 1, 3).reshape(b, n, hd)  # (B, T, h d): heads side by side, one copy
    if residual is None:
        y, _ = dense_forward(o, w_out, b_out)  # (B, T, D)
    else:
        y = bias_act_forward(dense_forward(o, w_out, None)[0], b_out, "none", residual=residual)[0]  # (B, T, D)
    if not return_probs:
        return y, None, None
    return y, DeviceAttentionCache(x, q, k, v, p, a, keep, dropout_scale(rate), q_scale, o), p


def mha_backward_device(dy: Array, cache: DeviceAttentionCache, w_qkv: Array, w_out: Array,
                        out: tuple[Array, Array, Array, Array] | None = None) -> tuple[Array, ...]:
    """Gradients of mha_forward_device: (dx, dw_qkv, db_qkv, dw_out, db_out), the four written into ``out``
    (views of the flat gradient buffer) when given."""
    xp = get_array_module(dy)
    c = cache
    if out is not None:
        dw_qkv, db_qkv, dw_out, db_out = out
        do = dense_backward_into(dy, c.o, w_out, dw_out, db_out)  # (B, T, h d)
    else:
        do, dw_out, db_out = dense_backward(dy, c.o, w_out)
    b, n, hd = do.shape
    heads, d = c.q.shape[1], c.q.shape[3]
    do = xp.ascontiguousarray(do.reshape(b, n, heads, d).transpose(0, 2, 1, 3))  # (B, h, T, d)
    dvt = xp.matmul(do.swapaxes(-1, -2), c.p if c.a is None else c.a)  # dV^T = dO^T A: (B, h, d, T)
    da = xp.matmul(do, c.v.swapaxes(-1, -2))  # dA = dO V^T: (B, h, T, T)
    ds = softmax_backward_device(da, c.p, c.keep, c.drop_scale)  # dS in place
    dq = xp.matmul(ds, c.k)  # dS K: (B, h, T, d)
    dkt = xp.matmul(c.q.swapaxes(-1, -2), ds)  # (Q s)^T dS: (B, h, d, T)
    dh = qkv_gradient_layout(dq, dkt, dvt, 1.0 / math.sqrt(d), 1.0 / (math.sqrt(d) * c.q_scale))  # (B, T, 3 h d)
    if out is not None:
        return dense_backward_into(dh, c.x, w_qkv, dw_qkv, db_qkv), dw_qkv, db_qkv, dw_out, db_out
    dx, dw_qkv, db_qkv = dense_backward(dh, c.x, w_qkv)
    return dx, dw_qkv, db_qkv, dw_out, db_out
