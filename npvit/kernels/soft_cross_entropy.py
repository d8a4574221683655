"""Softmax cross-entropy against soft targets (one probability distribution per sample), averaged over the batch.

    p = softmax(z),  q given                                      z (B, K) logits, q (B, K), sum_k q_bk = 1
    forward:   loss = -(1/B) sum_b sum_k q_bk log p_bk,   log p = z - logsumexp(z)
    backward:  dz = (p - q) / B          (times the incoming scalar gradient dloss)

The targets of Mixup and CutMix (``npvit.data.mix.mix_targets``): a mix of two label-smoothed one-hot rows. With
q = (1 - s) onehot(label) + s / K this is cross_entropy_forward with label smoothing s. The backward formula
uses sum_k q_bk = 1 (dz = (p sum_k q - q) / B in general), so the targets must be distributions: checked on
NumPy, where that is free.
"""

from __future__ import annotations

from typing import Any

import numpy

from ..backend import get_array_module

Array = Any
SoftCrossEntropyCache = tuple[Array, Array]  # (p, q)


def _check_targets(targets: Array, logits: Array) -> None:
    """Shape of ``targets`` for a batch of logits; on NumPy also that every row is a distribution."""
    if targets.shape != logits.shape:
        raise ValueError(f"targets must have the logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}")
    if get_array_module(targets) is not numpy or targets.size == 0:
        return
    tolerance = float(numpy.sqrt(numpy.finfo(targets.dtype).eps)) if targets.dtype.kind == "f" else 0.0
    sums = targets.sum(axis=1, dtype=numpy.float64)
    if targets.min() < 0 or numpy.abs(sums - 1.0).max() > tolerance:
        raise ValueError("targets must be probability distributions (rows of non-negative values summing to 1), "
                         f"got row sums from {sums.min():.6g} to {sums.max():.6g} and a smallest value "
                         f"{float(targets.min()):.6g}")


def soft_cross_entropy_forward(logits: Array, targets: Array) -> tuple[Array, SoftCrossEntropyCache]:
    """Mean cross-entropy of ``logits`` (B, K) against ``targets`` (B, K), each row a distribution over the K
    classes. Returns (loss, cache); the loss is a 0-d array of the logits' backend, in their dtype."""
    xp = get_array_module(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (batch, classes), got {tuple(logits.shape)}")
    _check_targets(targets, logits)
    batch = logits.shape[0]
    q = targets.astype(logits.dtype, copy=False)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    loss = -(q * logp).sum() / logits.dtype.type(batch)
    return loss, (xp.exp(logp), q)


def soft_cross_entropy_backward(cache: SoftCrossEntropyCache, dloss: float = 1.0) -> Array:
    """Gradient of soft_cross_entropy_forward with respect to the logits."""
    p, q = cache
    dz = p - q
    dz *= p.dtype.type(dloss / p.shape[0])
    return dz
