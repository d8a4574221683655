"""Inverted dropout (Srivastava et al., 2014).

    forward (training):  m_i ~ Bernoulli(1 - rate),  y = x * m / (1 - rate)
    backward:            dx = dy * m / (1 - rate)

Scaling at training time keeps the expected activation unchanged, so inference is the identity. The keep
mask compares 16-bit random integers with round(rate * 65536), so the drop probability actually used is that
threshold / 65536 (0.100006 for rate 0.1), and the scale is 1 / (1 - that): the expectation stays exact.
Sixteen random bits per unit are half the cost of a float32 uniform. The draw does not depend on the data
type, so float32 and float64 runs with the same seed drop the same units. Pass ``mask`` to reuse a fixed
mask.
"""

from __future__ import annotations

from typing import Any

from ..backend import keep_mask

Array = Any
DropoutCache = tuple[Array, float] | None  # (keep mask as booleans, 1 / (1 - rate)); None when nothing dropped


def drop_threshold(rate: float) -> int:
    """The 16-bit threshold below which a unit is dropped."""
    return round(rate * (1 << 16))


def dropout_scale(rate: float) -> float:
    """The factor 1 / (1 - p) applied to the kept units, with p the drop probability actually used."""
    return 1.0 / (1.0 - drop_threshold(rate) / (1 << 16))


def dropout_mask(shape: tuple[int, ...], rate: float, rng: Any) -> Array:
    """Boolean keep-mask of ``shape``: each entry True with probability 1 - drop_threshold(rate) / 65536."""
    return keep_mask(rng, shape, drop_threshold(rate))


def dropout_forward(
    x: Array, rate: float, rng: Any = None, mask: Array | None = None
) -> tuple[Array, DropoutCache]:
    """Apply inverted dropout with drop probability ``rate`` (0 <= rate < 1). Returns (y, cache)."""
    if not 0.0 <= rate < 1.0 or drop_threshold(rate) == 1 << 16:
        raise ValueError(f"dropout rate must be in [0, 1) (and below 1 - 2**-17), got {rate}")
    if rate == 0.0 and mask is None:
        return x, None
    if mask is None:
        if rng is None:
            raise ValueError("dropout_forward needs a random generator (rng) or a fixed mask")
        mask = dropout_mask(x.shape, rate, rng)
    scale = dropout_scale(rate)
    y = x * x.dtype.type(scale)
    y *= mask
    return y, (mask, scale)


def dropout_backward(dy: Array, cache: DropoutCache) -> Array:
    """Gradient of dropout_forward with respect to its input."""
    if cache is None:
        return dy
    mask, scale = cache
    dx = dy * dy.dtype.type(scale)
    dx *= mask
    return dx
