"""Stochastic depth, or drop path (Huang et al., 2016; timm's ``DropPath``): a residual branch dropped per sample.

    forward (training):  m_b ~ Bernoulli(1 - rate) per sample b,  y[b, ...] = x[b, ...] * m_b / (1 - rate)
    backward:            dx[b, ...] = dy[b, ...] * m_b / (1 - rate)

x and y are (B, ...) with axis 0 the samples; the mask m is drawn as (B, 1, ..., 1) and broadcast over the
other axes, so a sample keeps or loses its whole branch. Used on a residual branch, x + DropPath(f(x)) is x
alone for a dropped sample: the network is shallower for it, for this step. Inference is the identity.

The mask is drawn like dropout's (``npvit.kernels.dropout``): one 16-bit random integer per sample compared
with round(rate * 65536), the same threshold and scale, keyed by (seed, site, global sample index) through a
:class:`DropoutKey`, so threads, pieces and processes draw the very masks of the whole batch.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from .dropout import DropoutKey, check_rate, dropout_backward, dropout_forward, dropout_mask

Array = Any
DropPathCache = tuple[Array, float] | None  # (keep mask (B, 1, ..., 1) as booleans, 1 / (1 - rate)); None: identity


def drop_path_mask_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The mask's shape for an input of ``shape`` (B, ...): (B, 1, ..., 1), one decision per sample."""
    return (shape[0],) + (1,) * (len(shape) - 1)


def drop_path_forward(
    x: Array, rate: float, key: DropoutKey | None = None, mask: Array | None = None
) -> tuple[Array, DropPathCache]:
    """Drop whole samples of ``x`` (B, ...) with probability ``rate`` (0 <= rate < 1), scaling the others by
    1 / (1 - rate). ``mask`` (B, 1, ..., 1) fixes the keep decisions instead of drawing them from ``key``.
    Returns (y, cache).

    This is dropout (``dropout_forward``) with a mask of one entry per sample, broadcast over the rest.
    """
    check_rate(rate, "drop path")
    if rate == 0.0 and mask is None:
        return x, None
    if mask is None:
        if key is None:
            raise ValueError("drop_path_forward needs a DropoutKey (key) or a fixed mask")
        mask = dropout_mask(drop_path_mask_shape(x.shape), rate, key, get_array_module(x))
    elif tuple(mask.shape) != drop_path_mask_shape(x.shape):
        raise ValueError(f"drop path mask must have shape {drop_path_mask_shape(x.shape)} (one entry per sample), "
                         f"got {tuple(mask.shape)}")
    return dropout_forward(x, rate, mask=mask)


def drop_path_backward(dy: Array, cache: DropPathCache) -> Array:
    """Gradient of drop_path_forward with respect to its input: dropout's, with the per-sample mask."""
    return dropout_backward(dy, cache)
