"""Max-pooling over k x k windows with a stride and zero-free padding, channels last (CCT's tokenizer: kernel 3,
stride 2, padding 1).

    forward:   y[b, r, c, ch] = max_{0 <= i, j < k} xpad[b, s r + i, s c + j, ch]
               x (B, H, W, C) -> y (B, Ho, Wo, C),  Ho = (H + 2 p - k) // s + 1 (the same for W),
               xpad = x padded with -inf on every side (padding never wins, as PyTorch's)
               argmax[b, r, c, ch] = i k + j of the first window entry, in row-major order, that holds the max
               (PyTorch's rule: a later entry replaces the max only when strictly greater)
    backward:  dx[b, s r + i - p, s c + j - p, ch] += dy[b, r, c, ch]  for (i, j) = that argmax
               (a pixel that is the max of several overlapping windows collects from each)

The loops run over the k^2 window offsets, each a strided view of the whole padded batch. The argmax is kept
as one byte per output (k^2 <= 256); ties are common after a ReLU (zeros), which is why the rule matters for
an exact cross-check.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module

Array = Any
MaxPoolCache = tuple[Array, tuple[int, ...], int, int, int]  # (argmax (B, Ho, Wo, C) uint8, x shape, k, s, p)


def pool_output_size(size: int, kernel: int = 3, stride: int = 2, padding: int = 1) -> int:
    """The output side of max_pool2d_forward on an input side ``size``."""
    return (size + 2 * padding - kernel) // stride + 1


def max_pool2d_forward(x: Array, kernel: int = 3, stride: int = 2, padding: int = 1
                       ) -> tuple[Array, MaxPoolCache]:
    """Max over k x k windows of ``x`` (B, H, W, C) with stride s and padding p. Returns (y, cache)."""
    if not (kernel >= 1 and stride >= 1 and 0 <= padding <= kernel // 2 and kernel * kernel <= 256):
        raise ValueError(f"max_pool2d_forward needs kernel 1..16, stride >= 1 and padding <= kernel // 2 (as "
                         f"PyTorch), got kernel {kernel}, stride {stride}, padding {padding}")
    xp = get_array_module(x)
    b, h, w, c = x.shape
    k, s, p = kernel, stride, padding
    ho, wo = pool_output_size(h, k, s, p), pool_output_size(w, k, s, p)
    padded = xp.full((b, h + 2 * p, w + 2 * p, c), -xp.inf, dtype=x.dtype)  # (B, H + 2p, W + 2p, C)
    padded[:, p:p + h, p:p + w] = x
    y = padded[:, 0:s * (ho - 1) + 1:s, 0:s * (wo - 1) + 1:s].copy()  # (B, Ho, Wo, C): offset (0, 0)
    argmax = xp.zeros((b, ho, wo, c), dtype=xp.uint8)  # (B, Ho, Wo, C)
    for i in range(k):
        for j in range(k):
            if i == j == 0:
                continue
            v = padded[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]  # (B, Ho, Wo, C)
            greater = v > y  # strictly: the first maximum in row-major order stays
            xp.copyto(y, v, where=greater)
            xp.copyto(argmax, xp.uint8(i * k + j), where=greater)
    return y, (argmax, x.shape, k, s, p)


def max_pool2d_backward(dy: Array, cache: MaxPoolCache) -> Array:
    """Gradient of max_pool2d_forward: each output's gradient goes to the input pixel that was its max."""
    argmax, (b, h, w, c), k, s, p = cache
    xp = get_array_module(dy)
    ho, wo = dy.shape[1:3]
    dpadded = xp.zeros((b, h + 2 * p, w + 2 * p, c), dtype=dy.dtype)  # (B, H + 2p, W + 2p, C)
    zero = dy.dtype.type(0)
    for i in range(k):
        for j in range(k):
            share = xp.where(argmax == i * k + j, dy, zero)  # (B, Ho, Wo, C)
            dpadded[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] += share  # windows overlap
    return dpadded[:, p:p + h, p:p + w]  # (B, H, W, C): padding never won, so it holds no gradient
