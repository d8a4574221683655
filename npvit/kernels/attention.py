"""Multi-head self-attention (Vaswani et al., 2017) with Keras ``MultiHeadAttention`` semantics.

Core, per batch item b and head h (every head and image of a chunk of the batch in one batched matrix
multiply; the only Python loop runs over cache-sized chunks, see attention_core_forward):

    forward:   S = (Q / sqrt(d)) K^T          Q, K, V (B, h, T, d) -> S (B, h, T, T)
               P = softmax(S)                 over the keys (last axis)
               A = dropout(P)                 training only
               O = A V                        (B, h, T, d)
    backward:  dA = dO V^T,   dV = A^T dO
               dP = dropout_backward(dA),  dS = softmax_backward(dP)  = P * (dP - rowsum(dP * P))
               dQ = dS K / sqrt(d),   dK = dS^T (Q / sqrt(d))

Full layer on tokens x (B, T, D), with h heads of key_dim d:

    [Q | K | V] = x W_qkv + b_qkv             W_qkv (D, 3 h d): Keras' query, key and value EinsumDense
                                              kernels (D, h, d) side by side, as one GEMM over all B*T tokens;
                                              the query's columns arrive multiplied by the core's query scale
                                              (query_scale), folded into a copy of W_qkv and b_qkv
    y = concat_j(O_j) W_o + b_o               W_o (h d, D): Keras' output kernel (h, d, D) flattened
"""

from __future__ import annotations

import math
from typing import Any

from ..parallel import batch_chunks
from ..backend import get_array_module, scores_transposed
from .attention_device import DeviceAttentionCache, mha_backward_device, mha_forward_device
from .dense import DenseCache, dense_backward, dense_forward
from .fused import on_device
from .dropout import DropoutCache, DropoutKey, dropout_mask, dropout_scale
from .softmax import LOG2_E, softmax_backward, softmax_forward

Array = Any
# (q, k, v, P in the backend's layout (see scores_transposed), dropout mask and factor, the factor q arrived
# multiplied by)
AttentionCoreCache = tuple[Array, Array, Array, Array, DropoutCache, float]
AttentionCache = tuple[DenseCache, AttentionCoreCache, DenseCache]


def _score_chunks(q: Array, k: Array) -> list[slice]:
    """Batch slices whose (chunk, h, T_key, T_query) scores fit a core's cache (one slice on a GPU)."""
    b, h, n_query, _ = q.shape
    return batch_chunks(get_array_module(q), b, h * k.shape[2] * n_query * q.dtype.itemsize)


def query_scale(key_dim: int) -> float:
    """The factor the query is multiplied by before the product: Keras' 1 / sqrt(d), times log2(e) so that
    the softmax can use exp2, twice as fast as exp (see softmax_forward's ``base2``)."""
    return LOG2_E / math.sqrt(key_dim)


def attention_core_forward(
    q: Array, k: Array, v: Array, dropout_rate: float = 0.0, dropout_key: DropoutKey | None = None,
    out: Array | None = None, return_probs: bool = True, q_scale: float = 1.0,
) -> tuple[Array, Array | None, AttentionCoreCache | None]:
    """softmax(Q K^T / sqrt(d)) V with dropout on the probabilities. Returns (O, P, cache).

    ``out`` (B, h, T, d), which may be a strided view, receives O. ``return_probs=False`` (inference) keeps
    neither P nor the cache, and returns None for both. ``q_scale`` says that ``q`` arrives already multiplied by
    that factor (mha_forward folds query_scale(d) into the projection's weights, which spares a pass over Q); the
    core applies what remains, and the backward pass returns the gradient with respect to the ``q`` given.
    P is returned as a (B, h, T_query, T_key) array or view.

    The backend chooses the layout of the scores (npvit.backend.scores_transposed); the formulas are the same.
    NumPy keeps them transposed, S^T = K (Q / sqrt(d))^T with keys along axis -2, because its max and sum
    across rows are several times faster than along 144-long rows; every product reads the transposed
    matrices through BLAS' transpose flags, without copies; and the batch is processed in chunks whose scores
    fit in a core's cache (npvit.parallel.batch_chunks), so that the softmax and dropout passes read the cache
    instead of memory. A GPU keeps S (..., T_query, T_key) with the softmax over the last axis, takes Q, K
    and V contiguous, and computes the whole batch at once: its batched products copy every operand that is
    not contiguous, and this way no (T, T) matrix is ever one of those.

    The dropout mask is drawn (B, h, T_key, T_query) in both layouts (each image's part keyed by its sample
    index, npvit.kernels.dropout); the GPU layout reads it transposed.
    """
    xp = get_array_module(q)
    transposed = scores_transposed(xp)
    if not transposed:
        q, k, v = xp.ascontiguousarray(q), xp.ascontiguousarray(k), xp.ascontiguousarray(v)
    b, h, n, d = q.shape
    n_key = k.shape[2]
    remaining = query_scale(d) / q_scale
    scale = None if remaining == 1.0 else q.dtype.type(remaining)
    o = xp.empty((b, h, n, v.shape[-1]), dtype=q.dtype) if out is None else out
    score_shape = (b, h, n_key, n) if transposed else (b, h, n, n_key)
    ps = xp.empty(score_shape, dtype=q.dtype) if return_probs else None  # P (P^T on NumPy) for all chunks
    # The dropout mask of image i is drawn as (h, T_key, T_query), the layout of the transposed scores.
    mask = dropout_mask((b, h, n_key, n), dropout_rate, dropout_key, xp) if dropout_rate > 0.0 else None
    drop_scale = dropout_scale(dropout_rate)
    for sl in _score_chunks(q, k):
        qs = q[sl] if scale is None else q[sl] * scale
        s = None if ps is None else ps[sl]
        if transposed:
            s = xp.matmul(k[sl], qs.swapaxes(-1, -2), out=s)  # S^T log2(e): (c, h, Tk, Tq)
            softmax_forward(s, axis=-2, out=s, base2=True)  # over the keys; in place: the scores are not needed again
            a = s if mask is None else s * mask[sl]  # O = (P * mask / (1 - p)) V: the factor goes on O, (T, d),
            xp.matmul(a.swapaxes(-1, -2), v[sl], out=o[sl])  # rather than on the (T, T) matrix
        else:
            s = xp.matmul(qs, k[sl].swapaxes(-1, -2), out=s)  # S log2(e): (c, h, Tq, Tk)
            softmax_forward(s, axis=-1, out=s, base2=True)
            a = s if mask is None else s * mask[sl].swapaxes(-1, -2)
            if o.flags.c_contiguous:
                xp.matmul(a, v[sl], out=o[sl])
            else:  # a strided out= would be written through a temporary anyway: copy once, in the open
                o[sl] = xp.matmul(a, v[sl])
        if mask is not None:
            o[sl] *= o.dtype.type(drop_scale)
    if not return_probs:
        return o, None, None
    drop = None if mask is None else (mask, drop_scale)
    return o, (ps.swapaxes(-1, -2) if transposed else ps), (q, k, v, ps, drop, q_scale)


def attention_core_backward(
    do: Array, cache: AttentionCoreCache, out: tuple[Array, Array, Array] | None = None
) -> tuple[Array, Array, Array]:
    """Gradients of attention_core_forward: returns (dq, dk, dv), written into ``out`` when given.

    Works in the forward pass's layout, chunk by chunk like it. With dropout, A = P * m / (1 - p) for the keep
    mask m; the factor 1 / (1 - p) is left out of the (T, T) products and applied to the (T, d) results
    instead (dV directly; dQ and dK through dS, which is linear in dP). On a GPU the products that would read
    an (T, T) matrix transposed are computed transposed instead, dV^T = dO^T A and dK^T = Q^T dS, so that
    only (T, d) operands are ever copied; the results go to ``out`` through one scaling pass each.
    """
    q, k, v, ps, drop, q_scale = cache
    xp = get_array_module(do)
    transposed = scores_transposed(xp)
    if not transposed:
        do = xp.ascontiguousarray(do)
    scale = q.dtype.type(1.0 / (math.sqrt(q.shape[-1]) * q_scale))  # S = q K^T / (sqrt(d) q_scale)
    drop_scale = q.dtype.type(1.0 if drop is None else drop[1])
    dq, dk, dv = out if out is not None else (xp.empty_like(q), xp.empty_like(k), xp.empty_like(v))
    for sl in _score_chunks(q, k):
        p_c = ps[sl]
        mask = None if drop is None else drop[0][sl]
        if transposed:
            xp.matmul(p_c if mask is None else p_c * mask, do[sl], out=dv[sl])  # dV = A^T dO, but for the factor
            dpt = v[sl] @ do[sl].swapaxes(-1, -2)  # dA^T = V dO^T
            if mask is not None:
                dv[sl] *= drop_scale
                xp.multiply(dpt, mask, out=dpt)  # dropout's backward, but for the factor
            dst = softmax_backward(dpt, (p_c, -2), out=dpt)  # dS^T, in place: dP^T is not needed again
            xp.matmul(dst, q[sl], out=dk[sl])  # dK = dS^T (Q / sqrt(d))
            dk[sl] *= scale * drop_scale
            xp.matmul(dst.swapaxes(-1, -2), k[sl], out=dq[sl])  # dQ = dS K / sqrt(d)
            dq[sl] *= scale * drop_scale
            continue
        mask = None if mask is None else mask.swapaxes(-1, -2)  # (c, h, Tq, Tk), as P
        dvt = xp.matmul(do[sl].swapaxes(-1, -2), p_c if mask is None else p_c * mask)  # dV^T = dO^T A
        xp.multiply(dvt.swapaxes(-1, -2), drop_scale, out=dv[sl])
        dp = xp.matmul(do[sl], v[sl].swapaxes(-1, -2))  # dA = dO V^T
        if mask is not None:
            xp.multiply(dp, mask, out=dp)
        ds = softmax_backward(dp, (p_c, -1), out=dp)  # dS, in place
        xp.multiply(xp.matmul(ds, k[sl]), scale * drop_scale, out=dq[sl])  # dQ = dS K / sqrt(d)
        dkt = xp.matmul(q[sl].swapaxes(-1, -2), ds)  # dK^T = (Q / sqrt(d))^T dS
        xp.multiply(dkt.swapaxes(-1, -2), scale * drop_scale, out=dk[sl])
    return dq, dk, dv


def mha_forward(
    x: Array,
    w_qkv: Array,
    b_qkv: Array,
    w_out: Array,
    b_out: Array,
    num_heads: int,
    dropout_rate: float = 0.0,
    dropout_key: DropoutKey | None = None,
    return_probs: bool = True,
    residual: Array | None = None,
) -> tuple[Array, AttentionCache | None, Array | None]:
    """Multi-head self-attention of tokens ``x`` (B, T, D). Returns (y, cache, attention probabilities).

    ``return_probs=False`` (inference) keeps neither the cache nor the probabilities and returns None for both.
    ``residual`` (B, T, D), if given, is added to y (in the output projection's bias kernel on CuPy).
    """
    if on_device(x):  # CuPy: bias, query scale and layout in one kernel, softmax and dropout in three
        return mha_forward_device(x, w_qkv, b_qkv, w_out, b_out, num_heads, dropout_rate, dropout_key, return_probs,
                                  residual)
    xp = get_array_module(x)
    b, n, _ = x.shape
    hd = w_qkv.shape[1] // 3
    d = hd // num_heads
    q_scale = query_scale(d)
    w_scaled, b_scaled = _query_scaled(w_qkv, hd, q_scale), _query_scaled(b_qkv, hd, q_scale)
    qkv, c_qkv = dense_forward(x, w_scaled, b_scaled)  # [Q q_scale | K | V]: the GEMM applies the scale
    # (B, T, 3, h, d) -> (3, B, h, T, d): heads become a batch axis of the matmuls below
    qkv = qkv.reshape(b, n, 3, num_heads, d).transpose(2, 0, 3, 1, 4)
    if scores_transposed(xp):  # NumPy: views; O written straight into the layout the projection reads
        o = xp.empty((b, n, num_heads, d), dtype=x.dtype)  # heads side by side
        _, p, c_core = attention_core_forward(
            qkv[0], qkv[1], qkv[2], dropout_rate, dropout_key, out=o.transpose(0, 2, 1, 3),
            return_probs=return_probs, q_scale=q_scale,
        )
    else:  # GPU: Q, K and V made contiguous in one pass; O contiguous, its heads put side by side in one copy
        qkv = xp.ascontiguousarray(qkv)
        o, p, c_core = attention_core_forward(qkv[0], qkv[1], qkv[2], dropout_rate, dropout_key,
                                              return_probs=return_probs, q_scale=q_scale)
        o = o.transpose(0, 2, 1, 3)
    y, c_out = dense_forward(o.reshape(b, n, hd), w_out, b_out)
    if residual is not None:
        y += residual
    return y, ((c_qkv, c_core, c_out) if return_probs else None), p


def _query_scaled(a: Array, hd: int, q_scale: float) -> Array:
    """A copy of the fused projection's weight (D, 3 h d) or bias (3 h d,) with the query's columns (the first
    h d) multiplied by q_scale: (x W + b) s = x (W s) + b s, a pass over the small weight instead of over every
    query."""
    a = a.copy()
    a[..., :hd] *= a.dtype.type(q_scale)
    return a


def mha_backward(
    dy: Array, cache: AttentionCache, w_qkv: Array, w_out: Array, out: tuple | None = None
) -> tuple[Array, Array, Array, Array, Array]:
    """Gradients of mha_forward: returns (dx, dw_qkv, db_qkv, dw_out, db_out). ``out``: four arrays (views of a
    flat gradient buffer) the CuPy path writes the weight gradients into."""
    if isinstance(cache, DeviceAttentionCache):
        return mha_backward_device(dy, cache, w_qkv, w_out, out)
    if not (isinstance(cache, tuple) and len(cache) == 3):
        raise TypeError("mha_backward needs the cache of npvit.kernels.mha_forward (the reference's "
                        "attention_forward cache goes to npvit.reference.attention_backward)")
    c_qkv, c_core, c_out = cache
    do, dw_out, db_out = dense_backward(dy, c_out, w_out)
    b, n, hd = do.shape
    num_heads = c_core[0].shape[1]
    do = do.reshape(b, n, num_heads, hd // num_heads).transpose(0, 2, 1, 3)
    # dQ, dK and dV go straight into the (B, T, 3, h, d) layout the fused projection produced, undoing the
    # split of mha_forward without a copy.
    dqkv = get_array_module(do).empty((b, n, 3, num_heads, hd // num_heads), dtype=do.dtype)
    split = dqkv.transpose(2, 0, 3, 1, 4)
    attention_core_backward(do, c_core, out=(split[0], split[1], split[2]))
    q_scale = c_core[5]
    dx, dw_qkv, db_qkv = dense_backward(dqkv.reshape(b, n, 3 * hd), c_qkv, _query_scaled(w_qkv, hd, q_scale))
    dw_qkv[:, :hd] *= dw_qkv.dtype.type(q_scale)  # the forward pass multiplied W's query columns by q_scale
    db_qkv[:hd] *= db_qkv.dtype.type(q_scale)
    return dx, dw_qkv, db_qkv, dw_out, db_out
