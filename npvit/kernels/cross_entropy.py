"""Softmax cross-entropy on integer labels, averaged over the batch, with optional label smoothing.

    p = softmax(z),  q = (1 - s) onehot(label) + s / K            z (B, K) logits, labels (B,), smoothing s
    forward:   loss = -(1/B) sum_b sum_k q_bk log p_bk,   log p = z - logsumexp(z)
    backward:  dz = (p - q) / B          (times the incoming scalar gradient dloss)

With s = 0 this is Keras' SparseCategoricalCrossentropy(from_logits=True).
"""

from __future__ import annotations

from typing import Any

import numpy

from ..backend import get_array_module
from .device import cross_entropy_backward_device, cross_entropy_forward_device

Array = Any
CrossEntropyCache = tuple[Array, Array, float]  # (p, labels, smoothing)


def check_labels(labels: Any, num_classes: int) -> None:
    """Raise ValueError unless host ``labels`` are integers in [0, num_classes). Reads every value: call it once
    per dataset, on the host, before training or evaluating (cross_entropy_forward cannot check values on a
    GPU without a blocking copy to the host at every step)."""
    labels = numpy.asarray(labels)
    if not numpy.issubdtype(labels.dtype, numpy.integer):
        raise ValueError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}) for {num_classes} classes, "
            f"got values from {int(labels.min())} to {int(labels.max())}"
        )


def _check_label_array(labels: Array, batch: int, num_classes: int) -> None:
    """Shape and dtype of ``labels`` for a batch of logits; their values too where that is free (NumPy)."""
    xp = get_array_module(labels)
    if labels.ndim != 1 or labels.shape[0] != batch:
        raise ValueError(f"labels must have shape ({batch},) to match the logits, got {tuple(labels.shape)}")
    if xp is numpy:
        check_labels(labels, num_classes)
    elif not xp.issubdtype(labels.dtype, xp.integer):
        raise ValueError(f"labels must be integers (class indices), got dtype {labels.dtype}")


def cross_entropy_forward(
    logits: Array, labels: Array, label_smoothing: float = 0.0
) -> tuple[Array, CrossEntropyCache]:
    """Mean cross-entropy of ``logits`` (B, K) against integer ``labels`` (B,). Returns (loss, cache).

    The loss is a 0-d array of the logits' backend. Label values are checked here on NumPy only; on a GPU the
    caller checks them once on the host with :func:`check_labels` (CuPy wraps an out-of-range index around
    instead of raising).
    """
    xp = get_array_module(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (batch, classes), got {tuple(logits.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    batch, k = logits.shape
    _check_label_array(labels, batch, k)
    if xp is not numpy:  # CuPy: four kernels (kernels/device.py)
        return cross_entropy_forward_device(logits, labels, label_smoothing)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    nll = -logp[xp.arange(batch), labels]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(axis=1)
    loss = nll.mean()
    return loss, (xp.exp(logp), labels, label_smoothing)


def cross_entropy_backward(cache: CrossEntropyCache, dloss: float = 1.0) -> Array:
    """Gradient of cross_entropy_forward with respect to the logits."""
    p, labels, s = cache
    xp = get_array_module(p)
    if xp is not numpy:  # CuPy: one kernel
        return cross_entropy_backward_device(p, labels, s, dloss)
    batch, k = p.shape
    dz = p.copy()
    if s:
        dz -= p.dtype.type(s / k)
    dz[xp.arange(batch), labels] -= p.dtype.type(1.0 - s)
    dz *= p.dtype.type(dloss / batch)
    return dz
