"""2-D convolution, channels last, stride 1, "same" zero padding, no bias (the convolutions of CCT's tokenizer).

    forward:   y[b, r, c, o] = sum_{i, j, ch} xpad[b, r + i, c + j, ch] W[i, j, ch, o]
               x (B, H, W, Cin), W (k, k, Cin, Cout) -> y (B, H, W, Cout), k odd, xpad = x padded with
               p = (k - 1) / 2 zeros on every side (the output keeps the input's size)
               as one matrix product: y = cols(x) W2, cols(x) (B H W, k k Cin) the im2col of x (row
               (b, r, c) holds the k x k window around pixel (r, c), in (i, j, ch) order), W2 = W (k k Cin, Cout)
    backward:  dW2 = cols(x)^T dy2                                   dy2 = dy as (B H W, Cout)
               dx = col2im(dy2 W2^T): window entry (i, j) of row (b, r, c) goes back to xpad[b, r + i, c + j],
               a pixel collecting from the k^2 windows it lies in; the padding's share is dropped

The im2col is built from the k^2 shifted views xpad[:, i:i + H, j:j + W] of the padded batch, so the Python
loops run over the kernel's offsets, never over pixels or images; the product then is one large GEMM, where
BLAS is fastest. Measured against a sum of k^2 shifted products (one (B H W, Cin) x (Cin, Cout) GEMM per
offset) on the compact model's shapes at batch 128 (benchmarks/NOTES.md, "Convolutional tokenizer"), the one
GEMM wins clearly for Cin = 3 and is as fast or faster for Cin = 32 and 64. The first layer's input is the
image, whose gradient nobody needs: ``need_dx=False`` skips the dx product and the col2im.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from .compiled import use_compiled

Array = Any
Conv2dCache = tuple[Array, tuple[int, ...]]  # (cols (B H W, k k Cin), the input shape (B, H, W, Cin))


def im2col(x: Array, k: int) -> Array:
    """The k x k windows around every pixel of ``x`` (B, H, W, C), zero padded: (B, H, W, k, k, C)."""
    if use_compiled(x):  # float32 on the CPU: one pass, no padded copy (kernels/compiled/jit_conv.py)
        from .compiled import jit_conv
        return jit_conv.im2col(x, k)
    xp = get_array_module(x)
    b, h, w, c = x.shape
    p = (k - 1) // 2
    padded = xp.zeros((b, h + 2 * p, w + 2 * p, c), dtype=x.dtype)  # (B, H + 2p, W + 2p, C)
    padded[:, p:p + h, p:p + w] = x
    cols = xp.empty((b, h, w, k, k, c), dtype=x.dtype)  # (B, H, W, k, k, C)
    for i in range(k):
        for j in range(k):
            cols[:, :, :, i, j] = padded[:, i:i + h, j:j + w]  # (B, H, W, C): offset (i, j) of every window
    return cols


def col2im(dcols: Array, k: int) -> Array:
    """The adjoint of im2col: (B, H, W, k, k, C) window gradients summed back onto the pixels (B, H, W, C)."""
    if use_compiled(dcols):  # float32 on the CPU: one pass, no padded temporary
        from .compiled import jit_conv
        return jit_conv.col2im(dcols)
    xp = get_array_module(dcols)
    b, h, w, _, _, c = dcols.shape
    p = (k - 1) // 2
    dpadded = xp.zeros((b, h + 2 * p, w + 2 * p, c), dtype=dcols.dtype)  # (B, H + 2p, W + 2p, C)
    for i in range(k):
        for j in range(k):
            dpadded[:, i:i + h, j:j + w] += dcols[:, :, :, i, j]  # a pixel lies in k^2 windows
    return dpadded[:, p:p + h, p:p + w]  # the padding's gradient is dropped


def conv2d_forward(x: Array, w: Array) -> tuple[Array, Conv2dCache]:
    """Convolve ``x`` (B, H, W, Cin) with ``w`` (k, k, Cin, Cout): stride 1, same zero padding, no bias.
    Returns (y (B, H, W, Cout), cache)."""
    k, _, cin, cout = w.shape
    if k % 2 == 0 or w.shape[1] != k or x.shape[-1] != cin:
        raise ValueError(f"conv2d_forward needs an odd square kernel (k, k, Cin, Cout) whose Cin is the input's "
                         f"channels; got x {tuple(x.shape)} and w {tuple(w.shape)}")
    b, h, wd, _ = x.shape
    cols = im2col(x, k).reshape(b * h * wd, k * k * cin)  # (B H W, k k Cin)
    y = cols @ w.reshape(k * k * cin, cout)  # (B H W, Cout)
    return y.reshape(b, h, wd, cout), (cols, x.shape)


def conv2d_backward(dy: Array, cache: Conv2dCache, w: Array, need_dx: bool = True) -> tuple[Array | None, Array]:
    """Gradients of conv2d_forward: returns (dx, dw); dx is None with ``need_dx=False`` (the input is the
    image)."""
    cols, shape = cache
    k, _, cin, cout = w.shape
    dy2 = dy.reshape(-1, cout)  # (B H W, Cout)
    dw = (cols.T @ dy2).reshape(w.shape)  # (k, k, Cin, Cout)
    if not need_dx:
        return None, dw
    dcols = dy2 @ w.reshape(k * k * cin, cout).T  # (B H W, k k Cin)
    return col2im(dcols.reshape(*shape[:3], k, k, cin), k), dw
