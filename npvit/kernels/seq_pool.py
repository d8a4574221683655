"""Sequence pooling (Hassani et al., 2021, "Escaping the Big Data Paradigm with Compact Transformers"): the
tokens' mean weighted by a learned attention score, in place of a class token.

    forward:   s_t = x_t . g                          x (B, T, C), g (C,) -> scores s (B, T)
               w = softmax_T(s)                       (B, T), over the tokens of each image
               y = sum_t w_t x_t                      (B, C)
    backward:  dw_t = dy . x_t                        (B, T)
               ds = w (dw - sum_t w_t dw_t)           (the softmax backward)
               dx_t = w_t dy + ds_t g                 (B, T, C): through the weighted sum and through the scores
               dg = sum_{b, t} ds_t x_t

CCT's ``attention_pool`` is a Linear(C, 1): g is its weight. Its bias is left out: a constant added to every
score of an image cancels in the softmax, so its gradient is exactly sum_t ds_t = 0 and it never moves.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module

Array = Any
SeqPoolCache = tuple[Array, Array]  # (x (B, T, C), w (B, T))


def seq_pool_forward(x: Array, g: Array) -> tuple[Array, SeqPoolCache]:
    """Attention-weighted mean of the tokens of ``x`` (B, T, C), the weights softmax(x g) over T.
    Returns (y (B, C), cache)."""
    xp = get_array_module(x)
    s = x @ g  # (B, T)
    s -= s.max(axis=1, keepdims=True)  # no overflow in exp
    w = xp.exp(s)  # (B, T)
    w /= w.sum(axis=1, keepdims=True)
    y = (w[:, None, :] @ x)[:, 0]  # (B, C): one (1, T) x (T, C) product per image
    return y, (x, w)


def seq_pool_backward(dy: Array, cache: SeqPoolCache, g: Array) -> tuple[Array, Array]:
    """Gradients of seq_pool_forward: returns (dx, dg)."""
    x, w = cache
    dw = (x @ dy[:, :, None])[:, :, 0]  # (B, T): dy . x_t
    ds = w * (dw - (w * dw).sum(axis=1, keepdims=True))  # (B, T)
    dx = w[:, :, None] * dy[:, None, :]  # (B, T, C)
    dx += ds[:, :, None] * g
    dg = ds.reshape(-1) @ x.reshape(-1, x.shape[-1])  # (C,)
    return dx, dg
