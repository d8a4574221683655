"""Max-pooling over k x k windows with a stride and padding, channels last (CCT's tokenizer: kernel 3, stride 2,
padding 1).

    forward:   y[b, r, c, ch] = max_{0 <= i, j < k} xpad[b, s r + i, s c + j, ch]
               x (B, H, W, C) -> y (B, Ho, Wo, C),  Ho = (H + 2 p - k) // s + 1 (the same for W),
               xpad = x padded with -inf on every side (padding never wins, as PyTorch's)
    backward:  dx[b, s r + i - p, s c + j - p, ch] += dy[b, r, c, ch]  for (i, j) the first window entry, in
               row-major order, that holds the max (PyTorch's rule: a later entry replaces the max only when
               strictly greater); a pixel that is the max of several overlapping windows collects from each

The max of a k x k window is the max over k columns of the max over k rows, so the forward pass is 2 (k - 1)
elementwise maxima of strided views of the whole padded batch: no argmax is made, because inference does not
need one. The backward pass finds the winners from the input and the output (the cache holds both; the input
is the ReLU's output, kept anyway): entry (i, j) wins where it equals the max and no earlier entry did. Ties
are common after a ReLU (zeros), which is why the rule matters for an exact cross-check.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from .compiled import use_compiled

Array = Any
MaxPoolCache = tuple[Array, Array, int, int, int]  # (x (B, H, W, C), y (B, Ho, Wo, C), k, s, p)


def pool_output_size(size: int, kernel: int = 3, stride: int = 2, padding: int = 1) -> int:
    """The output side of max_pool2d_forward on an input side ``size``."""
    return (size + 2 * padding - kernel) // stride + 1


def _padded(x: Array, p: int) -> Array:
    xp = get_array_module(x)
    b, h, w, c = x.shape
    padded = xp.full((b, h + 2 * p, w + 2 * p, c), -xp.inf, dtype=x.dtype)  # (B, H + 2p, W + 2p, C)
    padded[:, p:p + h, p:p + w] = x
    return padded


def max_pool2d_forward(x: Array, kernel: int = 3, stride: int = 2, padding: int = 1
                       ) -> tuple[Array, MaxPoolCache]:
    """Max over k x k windows of ``x`` (B, H, W, C) with stride s and padding p. Returns (y, cache)."""
    if not (kernel >= 1 and stride >= 1 and 0 <= padding <= kernel // 2):
        raise ValueError(f"max_pool2d_forward needs kernel >= 1, stride >= 1 and padding <= kernel // 2 (as "
                         f"PyTorch), got kernel {kernel}, stride {stride}, padding {padding}")
    xp = get_array_module(x)
    k, s, p = kernel, stride, padding
    ho, wo = pool_output_size(x.shape[1], k, s, p), pool_output_size(x.shape[2], k, s, p)
    if use_compiled(x):  # float32 on the CPU: one pass, no padded copy (kernels/compiled/jit_conv.py)
        from .compiled import jit_conv
        y = jit_conv.max_pool(x, k, s, p, ho, wo)
        return y, (x, y, k, s, p)
    padded = _padded(x, p)
    rows = padded[:, 0:s * (ho - 1) + 1:s].copy()  # (B, Ho, W + 2p, C): window row 0 of every output row
    for i in range(1, k):
        xp.maximum(rows, padded[:, i:i + s * (ho - 1) + 1:s], out=rows)  # the max over the window's rows
    y = rows[:, :, 0:s * (wo - 1) + 1:s].copy()  # (B, Ho, Wo, C)
    for j in range(1, k):
        xp.maximum(y, rows[:, :, j:j + s * (wo - 1) + 1:s], out=y)  # ... and over its columns
    return y, (x, y, k, s, p)


def max_pool2d_backward(dy: Array, cache: MaxPoolCache) -> Array:
    """Gradient of max_pool2d_forward: each output's gradient goes to the input pixel that was its max."""
    x, y, k, s, p = cache
    if use_compiled(dy, x, y):  # float32 on the CPU: the winners in one pass, then one addition pass per entry
        from .compiled import jit_conv
        return jit_conv.max_pool_backward(dy, x, y, k, s, p)
    xp = get_array_module(dy)
    b, h, w, c = x.shape
    ho, wo = y.shape[1:3]
    padded = _padded(x, p)
    dpadded = xp.zeros(padded.shape, dtype=dy.dtype)  # (B, H + 2p, W + 2p, C)
    taken = xp.zeros(y.shape, dtype=bool)  # outputs whose max an earlier window entry already held
    hit = xp.empty(y.shape, dtype=bool)
    share = xp.empty(dy.shape, dtype=dy.dtype)
    for i in range(k):
        for j in range(k):
            window = (slice(None), slice(i, i + s * (ho - 1) + 1, s), slice(j, j + s * (wo - 1) + 1, s))
            xp.equal(padded[window], y, out=hit)  # entry (i, j) holds the max ...
            xp.logical_and(hit, xp.logical_not(taken), out=hit)  # ... and is the first that does
            xp.logical_or(taken, hit, out=taken)
            xp.multiply(dy, hit, out=share)  # (B, Ho, Wo, C)
            dpadded[window] += share  # windows overlap: a pixel may win several
    return dpadded[:, p:p + h, p:p + w]  # (B, H, W, C): padding never won, so it holds no gradient
