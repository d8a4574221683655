"""Softmax along one axis (the last by default).

    forward:   y_i = exp(x_i - max(x)) / sum_j exp(x_j - max(x))      (subtracting the max avoids overflow)
    backward:  dx_i = y_i * (dy_i - sum_j dy_j y_j)

Only the output (and the axis) is cached: the Jacobian diag(y) - y y^T is written in terms of y alone (docs/math.md).
``axis`` exists for speed: NumPy reduces across rows (axis -2) several times faster than along short rows
(axis -1), so on NumPy the attention core keeps its scores transposed and normalises over axis -2 (on a GPU,
over the last axis: npvit.backend.scores_transposed).
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import get_array_module
from .compiled import use_compiled

Array = Any
SoftmaxCache = tuple[Array, int]  # (the output y, the axis it was normalised over)
LOG2_E = 1.0 / math.log(2.0)  # exp(z) = 2^(z log2 e)


def softmax_forward(
    x: Array, axis: int = -1, out: Array | None = None, base2: bool = False
) -> tuple[Array, SoftmaxCache]:
    """Softmax of ``x`` along ``axis``. Returns (y, cache). ``out=x`` computes it in place.

    exp(z) is computed as 2^(z log2 e): NumPy's exp2 is about twice as fast as its exp, which pays for the
    extra multiplication. ``base2=True`` says that ``x`` already holds the logits times log2(e) (the attention
    core folds the factor into its query scaling), so the multiplication is skipped; the result is still
    softmax(x / log2 e), the softmax of the logits.
    """
    if use_compiled(x) and (out is None or out is x or use_compiled(out)):  # float32 on the CPU: compiled
        from .compiled import jit_softmax

        layout = jit_softmax.last_axes(x, axis)
        if layout is not None:  # the last axis or the one before: three passes over data in L1
            y = jit_softmax.softmax_forward(x, layout, 1.0 if base2 else LOG2_E, out)
            return y, (y, axis)
    xp = get_array_module(x)
    y = xp.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    if not base2:
        y *= y.dtype.type(LOG2_E)
    xp.exp2(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y, (y, axis)


def softmax_backward(dy: Array, cache: SoftmaxCache, out: Array | None = None) -> Array:
    """Gradient of softmax_forward with respect to its input, over the axis the forward pass used.
    ``out=dy`` computes it in place."""
    if not (isinstance(cache, tuple) and len(cache) == 2):
        raise TypeError("softmax_backward needs the cache softmax_forward returned: (y, axis)")
    y, axis = cache
    if use_compiled(dy, y) and (out is None or out is dy or use_compiled(out)):  # float32 on the CPU: compiled
        from .compiled import jit_softmax

        layout = jit_softmax.last_axes(y, axis)
        if layout is not None:
            return jit_softmax.softmax_backward(dy, y, layout, out)
    xp = get_array_module(y)
    dx = xp.subtract(dy, (dy * y).sum(axis=axis, keepdims=True), out=out)
    dx *= y
    return dx
