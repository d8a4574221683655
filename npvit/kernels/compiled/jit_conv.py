"""The convolutional tokenizer's data movement as compiled loops (float32): im2col and its adjoint, max-pooling
forward and backward, and the ReLU's backward. The formulas are those of npvit.kernels.conv2d, max_pool and
relu; what changes is the number of passes over memory.

    im2col     cols[b, r, c, i, j, :] = x[b, r + i - p, c + j - p, :], zero outside the image
               NumPy: a zero-padded copy of the batch, then k^2 strided copies; here: one pass writing cols
    col2im     dx[b, y, x, :] = sum over (i, j), in row-major order, of dcols[b, y - i + p, x - j + p, i, j, :]
               NumPy: k^2 strided additions into a zero-padded temporary; here: one pass writing dx
    max-pool   y[b, r, c, :] = max over the window's entries inside the image (-inf padding never wins)
    backward   dy[b, r, c, :] goes to the window's first entry, in row-major order, that equals y (PyTorch's
               rule); NumPy: k^2 rounds of comparisons, masks and strided additions; here: one pass finds
               each output's winning entry (strictly greater replaces), then one addition pass per entry,
               in NumPy's order, so that every pixel's sum is made in the same order
    ReLU       dx = dy [y > 0]: NumPy compares, casts and multiplies (three passes); here: one

Every loop makes its sums in the order of the NumPy kernel it replaces, so the results are equal bit for bit
(tests/kernels/test_compiled_kernels.py), with one difference on broken input: a NaN in max-pooling's dy
reaches only its window's winner here (as in PyTorch), while the NumPy kernel's mask products (NaN * 0) spread
it over the window; a training step refuses either, its gradient norm not being finite. The windows of the tokenizer (3x3, stride 1 or 2, padding 1) are
small: the loops run over pixels and keep the channel axis, contiguous, innermost, where it vectorises.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

Array = Any
# No fast-math: these loops move and add numbers in NumPy's order, and must not be reassociated.
_OPTS = dict(nogil=True, cache=True, error_model="numpy")


@njit(**_OPTS)
def _im2col(x, k, cols):  # pragma: no cover - compiled
    b, h, w, c = x.shape
    p = (k - 1) // 2
    for n in range(b):
        for r in range(h):
            for q in range(w):
                for i in range(k):
                    y = r + i - p
                    for j in range(k):
                        xx = q + j - p
                        if 0 <= y < h and 0 <= xx < w:
                            for ch in range(c):
                                cols[n, r, q, i, j, ch] = x[n, y, xx, ch]
                        else:
                            for ch in range(c):
                                cols[n, r, q, i, j, ch] = 0.0


@njit(**_OPTS)
def _col2im(dcols, dx):  # pragma: no cover - compiled
    b, h, w, k, _, c = dcols.shape
    p = (k - 1) // 2
    for n in range(b):
        for y in range(h):
            for xx in range(w):
                for ch in range(c):
                    dx[n, y, xx, ch] = 0.0
                for i in range(k):  # the order of NumPy's k^2 additions: (i, j) row-major
                    r = y - i + p
                    if r < 0 or r >= h:
                        continue
                    for j in range(k):
                        q = xx - j + p
                        if 0 <= q < w:
                            for ch in range(c):
                                dx[n, y, xx, ch] += dcols[n, r, q, i, j, ch]


@njit(**_OPTS)
def _max_pool(x, k, s, p, out):  # pragma: no cover - compiled
    b, h, w, c = x.shape
    _, ho, wo, _ = out.shape
    for n in range(b):
        for r in range(ho):
            for q in range(wo):
                for ch in range(c):
                    out[n, r, q, ch] = -np.inf
                for i in range(k):
                    y = s * r + i - p
                    if y < 0 or y >= h:
                        continue
                    for j in range(k):
                        xx = s * q + j - p
                        if 0 <= xx < w:
                            for ch in range(c):
                                v = x[n, y, xx, ch]
                                m = out[n, r, q, ch]
                                # NumPy's maximum: the larger, and NaN wherever either is NaN
                                out[n, r, q, ch] = v if (v > m or v != v) else m


@njit(**_OPTS)
def _max_pool_winners(x, y, k, s, p, win):  # pragma: no cover - compiled
    """win[b, r, c, ch] = the first window entry e = i k + j, row-major, that holds y (-1 where y is NaN)."""
    b, h, w, c = x.shape
    _, ho, wo, _ = y.shape
    best = np.empty(c, x.dtype)
    for n in range(b):
        for r in range(ho):
            for q in range(wo):
                for e in range(k * k):
                    yy, xx = s * r + e // k - p, s * q + e % k - p
                    inside = 0 <= yy < h and 0 <= xx < w
                    if e == 0:
                        for ch in range(c):
                            best[ch] = x[n, yy, xx, ch] if inside else -np.inf  # padding: -inf
                            win[n, r, q, ch] = 0
                    elif inside:
                        for ch in range(c):  # strictly greater: the first of equal entries stays
                            v = x[n, yy, xx, ch]
                            gt = v > best[ch]
                            best[ch] = v if gt else best[ch]
                            win[n, r, q, ch] = e if gt else win[n, r, q, ch]
                for ch in range(c):
                    if best[ch] != y[n, r, q, ch]:  # NaN: NumPy's rule gives no entry the gradient
                        win[n, r, q, ch] = -1


@njit(**_OPTS)
def _max_pool_scatter(dy, win, k, s, p, dx):  # pragma: no cover - compiled
    """dx[pixel of entry e] += dy for every output whose winner is e, entry by entry in NumPy's order."""
    b, h, w, c = dx.shape
    _, ho, wo, _ = dy.shape
    dx[...] = 0.0
    for e in range(k * k):
        for n in range(b):
            for r in range(ho):
                yy = s * r + e // k - p
                if yy < 0 or yy >= h:
                    continue
                for q in range(wo):
                    xx = s * q + e % k - p
                    if xx < 0 or xx >= w:
                        continue
                    for ch in range(c):
                        if win[n, r, q, ch] == e:
                            dx[n, yy, xx, ch] += dy[n, r, q, ch]


@njit(**_OPTS)
def _relu_backward(dy, y, dx):  # pragma: no cover - compiled
    for i in range(dy.size):
        dx[i] = dy[i] if y[i] > 0.0 else dy[i] * 0.0  # dy * 0 keeps NumPy's NaN * 0 = NaN and signed zeros


def im2col(x: Array, k: int) -> Array:
    """The k x k windows around every pixel of a C-contiguous float32 ``x`` (B, H, W, C): (B, H, W, k, k, C)."""
    cols = np.empty((*x.shape[:3], k, k, x.shape[3]), dtype=x.dtype)
    _im2col(x, k, cols)
    return cols


def col2im(dcols: Array) -> Array:
    """The adjoint of im2col for C-contiguous float32 (B, H, W, k, k, C) window gradients: (B, H, W, C)."""
    dx = np.empty((*dcols.shape[:3], dcols.shape[5]), dtype=dcols.dtype)
    _col2im(dcols, dx)
    return dx


def max_pool(x: Array, k: int, s: int, p: int, ho: int, wo: int) -> Array:
    """Max over the k x k windows (stride s, padding p) of a C-contiguous float32 ``x``: (B, Ho, Wo, C)."""
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), dtype=x.dtype)
    _max_pool(x, k, s, p, out)
    return out


def max_pool_backward(dy: Array, x: Array, y: Array, k: int, s: int, p: int) -> Array:
    """Each output's gradient to its window's first maximal entry: (B, H, W, C) like ``x``."""
    win = np.empty(y.shape, np.int8)  # each output's winning entry, k^2 <= 127
    _max_pool_winners(x, y, k, s, p, win)
    dx = np.empty_like(x)
    _max_pool_scatter(dy, win, k, s, p, dx)
    return dx


def relu_backward(dy: Array, y: Array) -> Array:
    """dy where y > 0, else dy * 0, for C-contiguous float32 arrays of one shape."""
    dx = np.empty_like(dy)
    _relu_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx
