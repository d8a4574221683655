"""Multi-head self-attention (Vaswani et al., 2017) with Keras ``MultiHeadAttention`` semantics.

Core, per batch item b and head h (all of them in one batched matrix multiply, no Python loop):

    forward:   S = (Q / sqrt(d)) K^T          Q, K, V (B, H, N, d) -> S (B, H, N, N)
               P = softmax(S)                 over the keys (last axis)
               A = dropout(P)                 training only
               O = A V                        (B, H, N, d)
    backward:  dA = dO V^T,   dV = A^T dO
               dP = dropout_backward(dA),  dS = softmax_backward(dP)  = P * (dP - rowsum(dP * P))
               dQ = dS K / sqrt(d),   dK = dS^T (Q / sqrt(d))

Full layer on tokens x (B, N, D), with H heads of key_dim d:

    [Q | K | V] = x W_qkv + b_qkv             W_qkv (D, 3 H d): Keras' query, key and value EinsumDense
                                              kernels (D, H, d) side by side, as one GEMM over all B*N tokens
    y = concat_h(O_h) W_o + b_o               W_o (H d, D): Keras' output kernel (H, d, D) flattened
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import get_array_module
from .dense import DenseCache, dense_backward, dense_forward
from .dropout import DropoutCache, dropout_backward, dropout_forward
from .softmax import softmax_backward, softmax_forward

Array = Any
AttentionCoreCache = tuple[Array, Array, Array, Array, DropoutCache]  # (q scaled, k, v, P^T, dropout mask)
AttentionCache = tuple[DenseCache, AttentionCoreCache, DenseCache]


def attention_core_forward(
    q: Array, k: Array, v: Array, dropout_rate: float = 0.0, rng: Any = None
) -> tuple[Array, Array, AttentionCoreCache]:
    """softmax(Q K^T / sqrt(d)) V with dropout on the probabilities. Returns (O, P, cache).

    The scores are computed and kept transposed, S^T = K (Q / sqrt(d))^T with keys along axis -2, because
    NumPy's max and sum across rows are several times faster than along 144-long rows; every product below
    reads the transposed matrices through BLAS' transpose flags, without copies. P is returned as a
    (B, H, N_query, N_key) view.
    """
    qs = q * q.dtype.type(1.0 / math.sqrt(q.shape[-1]))  # Keras scales the query before the product
    st = k @ qs.swapaxes(-1, -2)  # S^T: (B, H, N_key, N_query)
    pt, _ = softmax_forward(st, axis=-2, out=st)  # over the keys; in place: the scores are not needed again
    at, drop = dropout_forward(pt, dropout_rate, rng)
    o = at.swapaxes(-1, -2) @ v
    return o, pt.swapaxes(-1, -2), (qs, k, v, pt, drop)


def attention_core_backward(do: Array, cache: AttentionCoreCache) -> tuple[Array, Array, Array]:
    """Gradients of attention_core_forward: returns (dq, dk, dv). Works on the transposed matrices."""
    qs, k, v, pt, drop = cache
    at = pt if drop is None else pt * drop[0] * pt.dtype.type(drop[1])  # recompute A^T: cheaper than storing
    dv = at @ do  # A^T dO
    dat = v @ do.swapaxes(-1, -2)  # dA^T = V dO^T
    dpt = dropout_backward(dat, drop)
    dst = softmax_backward(dpt, pt, axis=-2, out=dpt)  # in place: dP^T is not needed again
    dk = dst @ qs  # dK = dS^T (Q / sqrt(d))
    dq = dst.swapaxes(-1, -2) @ k  # dQ = dS K / sqrt(d)
    dq *= dq.dtype.type(1.0 / math.sqrt(qs.shape[-1]))
    return dq, dk, dv


def mha_forward(
    x: Array,
    w_qkv: Array,
    b_qkv: Array,
    w_out: Array,
    b_out: Array,
    num_heads: int,
    dropout_rate: float = 0.0,
    rng: Any = None,
) -> tuple[Array, AttentionCache, Array]:
    """Multi-head self-attention of tokens ``x`` (B, N, D). Returns (y, cache, attention probabilities)."""
    b, n, _ = x.shape
    hd = w_qkv.shape[1] // 3
    qkv, c_qkv = dense_forward(x, w_qkv, b_qkv)
    # (B, N, 3, H, d) -> (3, B, H, N, d): heads become a batch axis of the matmuls below
    qkv = qkv.reshape(b, n, 3, num_heads, hd // num_heads).transpose(2, 0, 3, 1, 4)
    o, p, c_core = attention_core_forward(qkv[0], qkv[1], qkv[2], dropout_rate, rng)
    o = o.transpose(0, 2, 1, 3).reshape(b, n, hd)  # concatenate heads: (B, N, H*d)
    y, c_out = dense_forward(o, w_out, b_out)
    return y, (c_qkv, c_core, c_out), p


def mha_backward(
    dy: Array, cache: AttentionCache, w_qkv: Array, w_out: Array
) -> tuple[Array, Array, Array, Array, Array]:
    """Gradients of mha_forward: returns (dx, dw_qkv, db_qkv, dw_out, db_out)."""
    c_qkv, c_core, c_out = cache
    do, dw_out, db_out = dense_backward(dy, c_out, w_out)
    b, n, hd = do.shape
    num_heads = c_core[0].shape[1]
    do = do.reshape(b, n, num_heads, hd // num_heads).transpose(0, 2, 1, 3)
    dq, dk, dv = attention_core_backward(do, c_core)
    dqkv = get_array_module(dq).stack((dq, dk, dv))  # (3, B, H, N, d), undoing the split of mha_forward
    dqkv = dqkv.transpose(1, 3, 0, 2, 4).reshape(b, n, 3 * hd)
    dx, dw_qkv, db_qkv = dense_backward(dqkv, c_qkv, w_qkv)
    return dx, dw_qkv, db_qkv, dw_out, db_out

