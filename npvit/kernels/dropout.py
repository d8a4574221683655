"""Inverted dropout (Srivastava et al., 2014).

    forward (training):  m_i ~ Bernoulli(1 - rate),  y = x * m / (1 - rate)
    backward:            dx = dy * m / (1 - rate)

Scaling at training time keeps the expected activation unchanged, so inference is the identity. The keep
mask compares 16-bit random integers with round(rate * 65536), so the drop probability actually used is that
threshold / 65536 (0.100006 for rate 0.1), and the scale is 1 / (1 - that): the expectation stays exact.
Sixteen random bits per unit are half the cost of a float32 uniform.

Masks are a pure function of a :class:`DropoutKey`: the step's dropout seed, the name of the dropout site
(``blocks.3.mlp.drop0``) and the global index of each sample. Cutting a batch into threads' shards, pieces,
cache-sized chunks or processes therefore draws the very same masks as taking it whole, and the draw does not
depend on the data type, so float32 and float64 runs with the same seed drop the same units. Pass ``mask``
to reuse a fixed mask.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..backend import get_array_module
from .device import dropout_backward_device, dropout_forward_device
from .fused import on_device
from .random import drop_threshold, dropout_scale, keep_mask

Array = Any
DropoutCache = tuple[Array, float] | None  # (keep mask as booleans, 1 / (1 - rate)); None when nothing dropped


@dataclass(frozen=True)
class DropoutKey:
    """Names a dropout mask: ``seed`` (one per training step), ``site`` (the dropout layer's name) and
    ``first``, the global index of the first sample of the array the mask is for (axis 0 runs over samples)."""

    seed: int
    site: str = ""
    first: int = 0

    def at(self, site: str) -> "DropoutKey":
        """The key of dropout site ``site`` for the same samples."""
        return dataclasses.replace(self, site=site)

    def shifted(self, offset: int) -> "DropoutKey":
        """The key of the samples from ``offset`` on (a slice ``x[offset:]`` of the batch)."""
        return dataclasses.replace(self, first=self.first + offset)


def check_rate(rate: float, what: str = "dropout") -> None:
    """Refuse a rate outside [0, 1), or one that rounds to a threshold dropping everything."""
    if not 0.0 <= rate < 1.0 or drop_threshold(rate) == 1 << 16:
        raise ValueError(f"{what} rate must be in [0, 1) (and below 1 - 2**-17), got {rate}")


def dropout_mask(shape: tuple[int, ...], rate: float, key: DropoutKey, xp: Any = None) -> Array:
    """Boolean keep-mask of ``shape`` (axis 0: samples) on array module ``xp`` (default NumPy): each entry True
    with probability 1 - drop_threshold(rate) / 65536, row i a pure function of (key.seed, key.site,
    key.first + i)."""
    if not isinstance(key, DropoutKey):
        raise TypeError(f"dropout needs a DropoutKey (seed, site, first sample), got {type(key).__name__}")
    return keep_mask(xp or get_array_module(), key.seed, key.site, key.first, tuple(shape), drop_threshold(rate))


def dropout_forward(
    x: Array, rate: float, key: DropoutKey | None = None, mask: Array | None = None
) -> tuple[Array, DropoutCache]:
    """Apply inverted dropout with drop probability ``rate`` (0 <= rate < 1). Returns (y, cache)."""
    check_rate(rate)
    if rate == 0.0 and mask is None:
        return x, None
    if mask is None:
        if key is None:
            raise ValueError("dropout_forward needs a DropoutKey (key) or a fixed mask")
        if on_device(x):  # CuPy: the mask drawn in the kernel that applies it (kernels/device.py)
            return dropout_forward_device(x, rate, key)
        mask = dropout_mask(x.shape, rate, key, get_array_module(x))
    scale = dropout_scale(rate)
    y = x * x.dtype.type(scale)
    y *= mask
    return y, (mask, scale)


def dropout_backward(dy: Array, cache: DropoutCache) -> Array:
    """Gradient of dropout_forward with respect to its input."""
    if cache is None:
        return dy
    mask, scale = cache
    if on_device(dy):  # CuPy: one kernel
        return dropout_backward_device(dy, mask, scale)
    dx = dy * dy.dtype.type(scale)
    dx *= mask
    return dx
