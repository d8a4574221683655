"""The Vision Transformer written to be read: every forward and backward pass of npvit, and AdamW, in one file.

This is the model of ``npvit.ViT`` (Dosovitskiy et al., 2020, laid out as the Keras example builds it, or as
timm's ``VisionTransformer`` does with ``cfg.arrangement == "timm"``: no GELU after the block MLP's last
layer), and with ``cfg.tokenizer == "conv"`` and ``cfg.pool == "seq"`` the compact transformer's convolutional
tokenizer and sequence pooling (CCT, Hassani et al., 2021), as plain functions on arrays, in the order the
data flows. It reads the same ``params`` dict as ``npvit.ViT``
(same names, same layouts) and computes the same numbers: the tests hold the two to 1e-12 in float64. The
fast model gets its speed from tricks (thread shards, cache-sized pieces and chunks, transposed scores,
exp2, a query scale folded into the weights, in-place buffers) that this file leaves out;
docs/math.md ("How the fast path differs") lists them, and derives every backward pass written here.

    python -m npvit.reference        # trains it on a tiny synthetic problem, printing the loss per step

Conventions:

- Activations are row vectors and weights are stored (in, out): a dense layer is y = x @ W + b.
- Shapes: B batch, S image side, C channels, P patch side, N patches, T tokens (N, or N + 1 with a class
  token), D token width, h heads, d key width, U a hidden width, K classes.
- Every layer is a pair ``<name>_forward(...) -> (output, cache)`` and ``<name>_backward(doutput, cache,
  ...) -> gradients``; the cache holds what the backward pass needs, the settings the forward pass was called
  with included (a GELU's kind, a softmax's axis, a layer's name, the configuration): only parameters are
  passed to both. ``dz`` is dLoss/dz, shaped like z. The functions with a twin in ``npvit.kernels`` are
  called like it (docs/math.md, section 15, "Twins").
- Parameter names are timm's: ``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks.{i}.norm1``,
  ``blocks.{i}.attn`` (``qkv``, ``proj``), ``blocks.{i}.norm2``, ``blocks.{i}.mlp`` (``fc0``, ``fc1``), ``norm``
  (or ``fc_norm``, after the pooling), ``head`` (``fc0`` ... and ``out``).
- Dropout takes its keep masks from a function ``masks(site, shape, rate) -> boolean array`` (True = kept),
  called with the name of the dropout site (``blocks.0.attn.attn_drop``, ``blocks.0.mlp.drop0``,
  ``head_drop``, ``head.drop0``, ...); ``masks=None`` means no dropout (inference). Drop path (stochastic
  depth) takes its masks the same way, one per sample: shape (B, 1, 1) at sites ``blocks.{i}.drop_path1``
  (attention branch) and ``blocks.{i}.drop_path2`` (MLP branch). ``keyed_masks(seed)``
  draws the very masks ``npvit.ViT.forward(..., training=True, dropout_seed=seed)`` draws.

Everything works through the array module of the inputs (NumPy or CuPy) and in their dtype.
"""

from __future__ import annotations

import argparse
import math
import numbers
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .kernels.erf import erf as backend_erf
from .backend import get_array_module
from .config import ViTConfig
from .kernels.dropout import DropoutKey, dropout_mask

Array = Any
Params = dict[str, Array]
Masks = Callable[[str, tuple[int, ...], float], Array]  # (site, shape, rate) -> boolean keep mask


# ---- dense ----------------------------------------------------------------------------------------------------
def dense_forward(x: Array, w: Array, b: Array) -> tuple[Array, Array]:
    """y = x W + b on the last axis.   x (..., I), W (I, O), b (O,) -> y (..., O)."""
    y = x @ w + b  # (..., O)
    return y, x


# y = x W + b, every leading position r a row x_r:
#   dx = dy W^T,   dW = sum_r x_r^T dy_r,   db = sum_r dy_r
def dense_backward(dy: Array, cache: Array, w: Array) -> tuple[Array, Array, Array]:
    """Gradients of dense_forward: (dx, dW, db)."""
    x = cache  # (..., I)
    x2 = x.reshape(-1, x.shape[-1])  # (R, I)  every leading position is a row
    dy2 = dy.reshape(-1, dy.shape[-1])  # (R, O)
    dw = x2.T @ dy2  # (I, O)
    db = dy2.sum(axis=0)  # (O,)
    dx = dy @ w.T  # (..., I)
    return dx, dw, db


# ---- patch embedding ------------------------------------------------------------------------------------------
def patches_forward(images: Array, patch_size: int, overlap: int = 0) -> tuple[Array, tuple]:
    """Cut images (B, S, S, C) into patches (B, N, K*K*C), K = P + 2 overlap (see patch_embed_forward).
    Returns (patches, cache), the cache (the images' shape, P, overlap), as npvit.kernels.patches_forward."""
    xp = get_array_module(images)
    batch, height, width, channels = images.shape
    p, o = patch_size, overlap
    k = p + 2 * o
    gh, gw = height // p, width // p
    padded = xp.zeros((batch, height + 2 * o, width + 2 * o, channels), dtype=images.dtype)
    padded[:, o:o + height, o:o + width] = images  # (B, S + 2O, S + 2O, C)
    rows = (xp.arange(gh) * p)[:, None] + xp.arange(k)  # (gh, K)  padded row of pixel i of grid row r
    cols = (xp.arange(gw) * p)[:, None] + xp.arange(k)  # (gw, K)
    x = padded[:, rows[:, None, :, None], cols[None, :, None, :]]  # (B, gh, gw, K, K, C)
    patches = x.reshape(batch, gh * gw, k * k * channels)  # (B, N, K*K*C)
    return patches, (images.shape, p, o)


# The patches are a re-indexing of the pixels, so their backward adds each patch's gradient back at the pixels
# it was copied from: one window at a time, a pixel in several windows collecting from each; pixels in no
# window (the dropped ones) get zero gradient, and the zero padding's gradient is cut off.
def patches_backward(dpatches: Array, cache: tuple) -> Array:
    """Gradient of patches_forward: (dimages)."""
    (batch, height, width, channels), p, o = cache
    k = p + 2 * o
    gh, gw = height // p, width // p
    xp = get_array_module(dpatches)
    dx = dpatches.reshape(batch, gh, gw, k, k, channels)  # (B, gh, gw, K, K, C)
    dpadded = xp.zeros((batch, height + 2 * o, width + 2 * o, channels), dtype=dpatches.dtype)
    for r in range(gh):
        for c in range(gw):
            dpadded[:, r * p:r * p + k, c * p:c * p + k] += dx[:, r, c]  # (B, K, K, C)
    return dpadded[:, o:o + height, o:o + width]  # (B, S, S, C)


def patch_embed_forward(images: Array, w: Array, b: Array, patch_size: int, overlap: int = 0
                        ) -> tuple[Array, tuple]:
    """Cut the images into patches and project each linearly to the token width.

    images (B, S, S, C) -> patches (B, N, K*K*C) -> tokens = patches W + b (B, N, D), K = P + 2 overlap.
    Patch n is row r, column c of the grid (n = r * (S // P) + c), flattened in (row, column, channel) order,
    as tf.image.extract_patches cuts them. overlap = 0: the P x P cells side by side, pixels past the last
    whole patch dropped. overlap O > 0: the K x K window around each cell, [r P - O, r P + P + O) in both
    directions, of the image padded with O zeros on every side: a convolution of kernel K and stride P.
    """
    patches, c_patches = patches_forward(images, patch_size, overlap)  # (B, N, K*K*C)
    tokens, c_proj = dense_forward(patches, w, b)  # (B, N, D)
    return tokens, (c_patches, c_proj)


def patch_embed_backward(dtokens: Array, cache: tuple, w: Array) -> tuple[Array, Array, Array]:
    """Gradients of patch_embed_forward: (dimages, dW, db)."""
    c_patches, c_proj = cache
    dpatches, dw, db = dense_backward(dtokens, c_proj, w)  # (B, N, K*K*C), (K*K*C, D), (D,)
    return patches_backward(dpatches, c_patches), dw, db  # (B, S, S, C)


# ---- convolutional tokenizer (CCT) ----------------------------------------------------------------------------
def conv2d_forward(x: Array, w: Array) -> tuple[Array, tuple]:
    """Convolution, stride 1, same zero padding, no bias: x (B, S, S, Ci), W (k, k, Ci, Co) -> y (B, S, S, Co),

        y[b, r, c, o] = sum_{i, j, ch} xpad[b, r + i, c + j, ch] W[i, j, ch, o],   xpad: p = (k - 1) / 2 zeros
                                                                                     on every side

    written as one product: the k x k window around every pixel (its "im2col"), flattened in (i, j, ch) order,
    times W as a (k k Ci, Co) matrix. Returns (y, cache), the cache (windows (B S S, k k Ci), x's shape), as
    npvit.kernels.conv2d_forward."""
    xp = get_array_module(x)
    batch, height, width, cin = x.shape
    k, cout = w.shape[0], w.shape[3]
    p = (k - 1) // 2
    padded = xp.zeros((batch, height + 2 * p, width + 2 * p, cin), dtype=x.dtype)
    padded[:, p:p + height, p:p + width] = x  # (B, S + 2p, S + 2p, Ci)
    rows = xp.arange(height)[:, None] + xp.arange(k)  # (S, k)  padded row of window row i around pixel row r
    cols = xp.arange(width)[:, None] + xp.arange(k)  # (S, k)
    windows = padded[:, rows[:, None, :, None], cols[None, :, None, :]]  # (B, S, S, k, k, Ci)
    windows = windows.reshape(batch * height * width, k * k * cin)  # (B S S, k k Ci)
    y = windows @ w.reshape(k * k * cin, cout)  # (B S S, Co)
    return y.reshape(batch, height, width, cout), (windows, x.shape)


# y = windows W:  dW = windows^T dy,  dwindows = dy W^T; each window entry's gradient goes back to the pixel it
# was copied from (a pixel lies in k^2 windows and collects from each), the padding's share dropped.
def conv2d_backward(dy: Array, cache: tuple, w: Array, need_dx: bool = True) -> tuple[Array | None, Array]:
    """Gradients of conv2d_forward: (dx, dW); dx is None with ``need_dx=False`` (the input is the image)."""
    windows, (batch, height, width, cin) = cache
    k, cout = w.shape[0], w.shape[3]
    p = (k - 1) // 2
    dy2 = dy.reshape(-1, cout)  # (B S S, Co)
    dw = (windows.T @ dy2).reshape(w.shape)  # (k, k, Ci, Co)
    if not need_dx:
        return None, dw
    dwindows = (dy2 @ w.reshape(k * k * cin, cout).T).reshape(batch, height, width, k, k, cin)
    dpadded = get_array_module(dy).zeros((batch, height + 2 * p, width + 2 * p, cin), dtype=dy.dtype)
    for i in range(k):
        for j in range(k):
            dpadded[:, i:i + height, j:j + width] += dwindows[:, :, :, i, j]  # (B, S, S, Ci)
    return dpadded[:, p:p + height, p:p + width], dw  # (B, S, S, Ci)


def relu_forward(x: Array, out: Array | None = None) -> tuple[Array, Array]:
    """max(x, 0). Returns (y, cache), the cache y (y > 0 exactly where x > 0)."""
    y = get_array_module(x).maximum(x, 0, out=out)
    return y, y


# dx = dy where x > 0, else 0 (the kink's derivative taken as 0, as PyTorch's)
def relu_backward(dy: Array, cache: Array) -> Array:
    """Gradient of relu_forward."""
    return dy * (cache > 0)


def max_pool2d_forward(x: Array, kernel: int = 3, stride: int = 2, padding: int = 1) -> tuple[Array, tuple]:
    """Max over k x k windows with stride s of x padded with p values -inf (so padding never wins):
    (B, H, W, C) -> (B, Ho, Wo, C), Ho = (H + 2 p - k) // s + 1. Returns (y, cache), the cache (x, y, k, s,
    p) as npvit.kernels.max_pool2d_forward."""
    windows = pool_windows(x, kernel, stride, padding)  # (B, Ho, Wo, k k, C)
    y = windows.max(axis=3)  # (B, Ho, Wo, C)
    return y, (x, y, kernel, stride, padding)


def pool_windows(x: Array, k: int, s: int, p: int) -> Array:
    """The k x k windows of x (B, H, W, C) padded with -inf, every s pixels: (B, Ho, Wo, k k, C), each window's
    entries in row-major order."""
    xp = get_array_module(x)
    batch, height, width, channels = x.shape
    ho, wo = (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1
    padded = xp.full((batch, height + 2 * p, width + 2 * p, channels), -xp.inf, dtype=x.dtype)
    padded[:, p:p + height, p:p + width] = x
    rows = (xp.arange(ho) * s)[:, None] + xp.arange(k)  # (Ho, k)
    cols = (xp.arange(wo) * s)[:, None] + xp.arange(k)  # (Wo, k)
    windows = padded[:, rows[:, None, :, None], cols[None, :, None, :]]  # (B, Ho, Wo, k, k, C)
    return windows.reshape(batch, ho, wo, k * k, channels)


# Each output's gradient goes to the pixel that was its max: the first window entry, in row-major order, that
# holds it (argmax returns the first of equal maxima: PyTorch's rule for ties). Overlapping windows add up.
def max_pool2d_backward(dy: Array, cache: tuple) -> Array:
    """Gradient of max_pool2d_forward: (dx)."""
    x, y, k, s, p = cache
    xp = get_array_module(dy)
    batch, height, width, channels = x.shape
    ho, wo = dy.shape[1:3]
    argmax = pool_windows(x, k, s, p).argmax(axis=3)  # (B, Ho, Wo, C)
    dpadded = xp.zeros((batch, height + 2 * p, width + 2 * p, channels), dtype=dy.dtype)
    for i in range(k):
        for j in range(k):
            hit = argmax == i * k + j  # (B, Ho, Wo, C)  the outputs whose max was window entry (i, j)
            dpadded[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] += dy * hit
    return dpadded[:, p:p + height, p:p + width]  # (B, H, W, C)


def conv_tokenizer_forward(params: Mapping[str, Array], images: Array, cfg: ViTConfig) -> tuple[Array, tuple]:
    """CCT's tokenizer: per entry of cfg.conv_channels, conv 3x3 (``tokenizer.conv{i}.w``) -> ReLU -> max-pool
    (3, 2, 1), halving the side; the last map's pixels, row-major, are the tokens (B, N, C), projected to D by
    ``tokenizer.proj`` when C differs from D."""
    x, caches = images, []
    for i in range(len(cfg.conv_channels)):
        y, c_conv = conv2d_forward(x, params[f"tokenizer.conv{i}.w"])  # (B, S, S, C_i)
        y, c_relu = relu_forward(y)  # (B, S, S, C_i)
        x, c_pool = max_pool2d_forward(y, 3, 2, 1)  # (B, S', S', C_i)
        caches.append((c_conv, c_relu, c_pool))
    t = x.reshape(x.shape[0], -1, x.shape[3])  # (B, N, C)
    c_proj = None
    if cfg.tokenizer_projects:
        t, c_proj = dense_forward(t, params["tokenizer.proj.w"], params["tokenizer.proj.b"])  # (B, N, D)
    return t, (caches, x.shape, c_proj)


def conv_tokenizer_backward(dtokens: Array, cache: tuple, params: Mapping[str, Array], grads: Params,
                            input_grad: bool = True) -> Array | None:
    """Gradient of conv_tokenizer_forward: returns dimages (None with ``input_grad=False``) and writes the
    gradients of ``tokenizer.*``."""
    caches, shape, c_proj = cache
    if c_proj is not None:
        dtokens, grads["tokenizer.proj.w"], grads["tokenizer.proj.b"] = dense_backward(
            dtokens, c_proj, params["tokenizer.proj.w"])  # (B, N, C)
    dx = dtokens.reshape(shape)  # (B, S', S', C)
    for i in reversed(range(len(caches))):
        c_conv, c_relu, c_pool = caches[i]
        dy = relu_backward(max_pool2d_backward(dx, c_pool), c_relu)  # (B, S, S, C_i)
        dx, grads[f"tokenizer.conv{i}.w"] = conv2d_backward(
            dy, c_conv, params[f"tokenizer.conv{i}.w"], need_dx=i > 0 or input_grad)  # (B, S, S, C_i-1)
    return dx


# ---- layer normalization --------------------------------------------------------------------------------------
def layernorm_forward(x: Array, gamma: Array, beta: Array, eps: float = 1e-6) -> tuple[Array, tuple]:
    """Normalize each row of the last axis to zero mean and unit variance, then scale and shift.

    mu = mean(x), var = mean((x - mu)^2), rstd = 1 / sqrt(var + eps), xhat = (x - mu) rstd,
    y = gamma xhat + beta.   x (..., D), gamma, beta (D,) -> y (..., D).
    """
    xp = get_array_module(x)
    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mu  # (..., D)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)  the biased variance, 1/D
    rstd = 1.0 / xp.sqrt(var + eps)  # (..., 1)
    xhat = xc * rstd  # (..., D)
    y = gamma * xhat + beta  # (..., D)
    return y, (xhat, rstd)


# y = gamma xhat + beta:  dgamma = sum_rows dy xhat,  dbeta = sum_rows dy,  g = dxhat = dy gamma;
# through the mean and the variance (docs/math.md, section 3):
#   dx = rstd (g - mean(g) - xhat mean(g xhat))      (means over the last axis)
def layernorm_backward(dy: Array, cache: tuple, gamma: Array) -> tuple[Array, Array, Array]:
    """Gradients of layernorm_forward: (dx, dgamma, dbeta)."""
    xhat, rstd = cache  # (..., D), (..., 1)
    rows = tuple(range(dy.ndim - 1))  # every leading axis
    dgamma = (dy * xhat).sum(axis=rows)  # (D,)
    dbeta = dy.sum(axis=rows)  # (D,)
    g = dy * gamma  # (..., D)
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).mean(axis=-1, keepdims=True))  # (..., D)
    return dx, dgamma, dbeta


# ---- GELU -----------------------------------------------------------------------------------------------------
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_C = 0.044715


def erf(x: Array) -> Array:
    """The error function, exact to the input's precision: the library's erf (SciPy or CuPy) in float64."""
    xp = get_array_module(x)
    return backend_erf(x.astype(xp.float64)).astype(x.dtype)


def gelu_forward(x: Array, kind: str = "erf") -> tuple[Array, tuple]:
    """Gaussian Error Linear Unit, elementwise.

    "erf" (exact, the Keras example's):  y = x Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2
    "tanh" (approximation):              y = x (1 + tanh(u)) / 2,  u = sqrt(2/pi) (x + 0.044715 x^3)

    The cache is (x, Phi(x) or tanh(u), kind): the backward pass reuses the erf or tanh, and the kind travels
    with the data, so a backward pass cannot apply one kind's derivative to the other's.
    """
    if kind == "erf":
        saved = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))  # (...)  Phi(x)
        y = x * saved  # (...)
    elif kind == "tanh":
        xp = get_array_module(x)
        saved = xp.tanh(SQRT_2_OVER_PI * (x + GELU_TANH_C * x**3))  # (...)  t = tanh(u)
        y = 0.5 * x * (1.0 + saved)  # (...)
    else:
        raise ValueError(f"unknown GELU kind {kind!r}: expected 'erf' or 'tanh'")
    return y, (x, saved, kind)


# Elementwise, so dx = dy y'(x):
#   erf:   y' = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)                 (product rule)
#   tanh:  y' = (1 + t) / 2 + x (1 - t^2) u'(x) / 2,  t = tanh(u),  u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
def gelu_backward(dy: Array, cache: tuple) -> Array:
    """Gradient of gelu_forward with respect to its input."""
    x, saved, kind = cache  # (...), (...), "erf" or "tanh"
    xp = get_array_module(x)
    if kind == "erf":
        cdf = saved  # (...)  Phi(x)
        pdf = xp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)  # (...)  phi(x)
        dydx = cdf + x * pdf  # (...)
    else:
        t = saved  # (...)  tanh(u)
        dudx = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * x * x)  # (...)
        dydx = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dudx  # (...)
    return dy * dydx  # (...)


# ---- dropout --------------------------------------------------------------------------------------------------
def drop_probability(rate: float) -> float:
    """The probability that a unit is dropped: ``rate`` rounded to a multiple of 1/65536.

    npvit draws each keep decision as a 16-bit random integer compared with round(65536 rate), so that is
    the probability the masks really have; scaling by 1 / (1 - it) keeps the expectation exact.
    """
    return round(rate * 65536) / 65536


def dropout_forward(
    x: Array, rate: float, key: DropoutKey | None = None, mask: Array | None = None
) -> tuple[Array, tuple | None]:
    """Inverted dropout: y = x keep / (1 - p), with ``mask`` the boolean keep mask shaped like x, or drawn
    from ``key`` (npvit.kernels.dropout.dropout_mask). Rate 0 without a mask: y = x, cache None.
    Called like npvit.kernels.dropout_forward, with the same cache (keep, 1 / (1 - p))."""
    keep = _keep_mask(x.shape, rate, key, mask, get_array_module(x), "dropout_forward")
    if keep is None:
        return x, None
    scale = 1.0 / (1.0 - drop_probability(rate))
    y = x * keep * scale  # (...)
    return y, (keep, scale)


def _keep_mask(shape: tuple[int, ...], rate: float, key: DropoutKey | None, mask: Array | None, xp: Any,
               who: str) -> Array | None:
    """The keep mask a dropout call asked for: ``mask``, else drawn from ``key``; None when nothing drops."""
    if not isinstance(rate, numbers.Real) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{who}(x, rate, key=None, mask=None): rate must be a number in [0, 1), got {rate!r}"
                         " (the keep mask goes in mask=)")
    if mask is not None:
        return mask
    if rate == 0.0:
        return None
    if key is None:
        raise ValueError(f"{who} needs a DropoutKey (key) or a fixed mask")
    return dropout_mask(shape, rate, key, xp)


# y = x keep / (1 - p) is linear with a diagonal Jacobian:  dx = dy keep / (1 - p)
def dropout_backward(dy: Array, cache: tuple | None) -> Array:
    """Gradient of dropout_forward with respect to its input."""
    if cache is None:
        return dy
    keep, scale = cache
    return dy * keep * scale  # (...)


def draw_keep(masks: Masks | None, site: str, shape: tuple[int, ...], rate: float) -> Array | None:
    """The keep mask of one dropout site, or None when nothing is dropped (no masks, or rate 0)."""
    if masks is None or rate == 0.0:
        return None
    return masks(site, tuple(shape), rate)


def site_rate(keep: Array | None, rate: float) -> float:
    """The rate a site drops at: 0 when it draws no mask (inference)."""
    return 0.0 if keep is None else rate


def keyed_masks(seed: int, first_sample: int = 0, xp: Any = np) -> Masks:
    """The keep masks of ``npvit.ViT.forward(images, training=True, dropout_seed=seed, first_sample=...)``.

    npvit draws every mask as a pure function of (seed, site, global sample index) through
    ``npvit.kernels.dropout.dropout_mask`` (axis 0 of ``shape`` runs over the samples, the first one being
    ``first_sample``); ``xp`` is the array module of the data, whose generator the masks come from (NumPy's
    and CuPy's differ).
    """
    def masks(site: str, shape: tuple[int, ...], rate: float) -> Array:
        return dropout_mask(shape, rate, DropoutKey(seed, site, first_sample), xp)

    return masks


# ---- drop path (stochastic depth) ----------------------------------------------------------------------------
def drop_path_forward(
    x: Array, rate: float, key: DropoutKey | None = None, mask: Array | None = None
) -> tuple[Array, tuple | None]:
    """Drop path: y[b] = x[b] keep_b / (1 - p), a whole sample's branch kept or dropped. x (B, ...), ``mask``
    (B, 1, ..., 1) booleans broadcast over the other axes, or drawn from ``key``; rate 0 without a mask:
    y = x. Called like npvit.kernels.drop_path_forward, with the same cache."""
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # (B, 1, ..., 1)  one decision per sample
    keep = _keep_mask(shape, rate, key, mask, get_array_module(x), "drop_path_forward")
    if keep is None:
        return x, None
    scale = 1.0 / (1.0 - drop_probability(rate))
    y = x * keep * scale  # (B, ...)
    return y, (keep, scale)


# Linear in x, every entry of sample b multiplied by keep_b / (1 - p):  dx[b] = dy[b] keep_b / (1 - p)
def drop_path_backward(dy: Array, cache: tuple | None) -> Array:
    """Gradient of drop_path_forward with respect to its input."""
    if cache is None:
        return dy
    keep, scale = cache
    return dy * keep * scale  # (B, ...)


def drop_path_rate(cfg: ViTConfig, i: int) -> float:
    """Block i's drop path rate: cfg.drop_path i / (depth - 1) (timm's linear rule; depth 1: cfg.drop_path)."""
    return cfg.drop_path if cfg.depth == 1 else cfg.drop_path * i / (cfg.depth - 1)


# ---- softmax --------------------------------------------------------------------------------------------------
def softmax_forward(x: Array, axis: int = -1) -> tuple[Array, tuple]:
    """softmax along ``axis``: y_i = exp(x_i - max x) / sum_j exp(x_j - max x) (the shift avoids overflow
    and changes nothing else). Returns (y, cache), the cache (y, axis): the backward pass needs only y."""
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))  # (..., n)
    y = e / e.sum(axis=axis, keepdims=True)  # (..., n)
    return y, (y, axis)


# Jacobian dy_i/dx_j = y_i (delta_ij - y_j), symmetric, so dx = y (dy - sum_j dy_j y_j)
def softmax_backward(dy: Array, cache: tuple) -> Array:
    """Gradient of softmax_forward, from its output y (along the forward pass's axis)."""
    y, axis = cache  # (..., n), the axis
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))  # (..., n)


# ---- multi-head self-attention --------------------------------------------------------------------------------
def attention_forward(
    x: Array, w_qkv: Array, b_qkv: Array, w_proj: Array, b_proj: Array, num_heads: int,
    dropout_rate: float = 0.0, dropout_key: DropoutKey | None = None, mask: Array | None = None,
) -> tuple[Array, tuple, Array]:
    """Multi-head self-attention (Keras ``MultiHeadAttention``) of tokens x (B, T, D).

    [Q | K | V] = x W_qkv + b_qkv, with W_qkv (D, 3 h d) holding Keras' query, key and value kernels side
    by side, each (D, h, d) flattened so that column (i h + j) d + c is projection i, head j, feature c.
    Per head:  A = dropout(softmax(Q K^T / sqrt(d)))  (T, T),   O = A V  (T, d).
    The heads' outputs side by side (T, h d) go through the output projection W_proj (h d, D) + b_proj.
    Returns (y, cache, P), P (B, h, T, T) the attention probabilities, as npvit.kernels.mha_forward does.
    ``mask`` (B, h, T, T) is the dropout keep mask of A, rows the queries and columns the keys; without it a
    ``dropout_key`` draws the mask mha_forward draws (rate 0 and neither: no dropout).
    """
    xp = get_array_module(x)
    batch, tokens, _ = x.shape
    d = w_qkv.shape[1] // (3 * num_heads)
    qkv, c_qkv = dense_forward(x, w_qkv, b_qkv)  # (B, T, 3*h*d)
    qkv = qkv.reshape(batch, tokens, 3, num_heads, d)  # (B, T, 3, h, d)  Keras' column order
    q = qkv[:, :, 0].transpose(0, 2, 1, 3)  # (B, h, T, d)
    k = qkv[:, :, 1].transpose(0, 2, 1, 3)  # (B, h, T, d)
    v = qkv[:, :, 2].transpose(0, 2, 1, 3)  # (B, h, T, d)
    s = q @ k.swapaxes(-1, -2) / math.sqrt(d)  # (B, h, T, T)  scores: query row against key column
    p, c_soft = softmax_forward(s)  # (B, h, T, T)  over the keys
    if mask is None and dropout_rate > 0.0 and dropout_key is not None:
        # npvit draws an image's attention mask as (h, keys, queries); turned around: rows the queries
        mask = _keep_mask((batch, num_heads, tokens, tokens), dropout_rate, dropout_key, None, xp,
                          "attention_forward").swapaxes(-1, -2)  # (B, h, T, T)
    a, c_drop = dropout_forward(p, dropout_rate, mask=mask)  # (B, h, T, T)
    o = a @ v  # (B, h, T, d)
    o = o.transpose(0, 2, 1, 3).reshape(batch, tokens, num_heads * d)  # (B, T, h*d)  heads side by side
    y, c_proj = dense_forward(o, w_proj, b_proj)  # (B, T, D)
    return y, (c_qkv, q, k, v, c_soft, a, c_drop, c_proj), p


# y = O W_proj + b_proj (dense), then per head, with s = Q K^T / sqrt(d), P = softmax(s), A = dropout(P):
#   O = A V:                    dA = dO V^T,   dV = A^T dO
#   A = dropout(P):             dP = dropout_backward(dA)
#   P = softmax(s):             ds = P (dP - rowsum(dP P))
#   s = Q K^T / sqrt(d):        dQ = ds K / sqrt(d),   dK = ds^T Q / sqrt(d)
# and dQ, dK, dV go back to the columns of [Q | K | V] they came from, for the dense backward of W_qkv.
def attention_backward(
    dy: Array, cache: tuple, w_qkv: Array, w_proj: Array
) -> tuple[Array, Array, Array, Array, Array]:
    """Gradients of attention_forward: (dx, dW_qkv, db_qkv, dW_proj, db_proj)."""
    if not (isinstance(cache, tuple) and len(cache) == 8):
        raise TypeError("attention_backward needs the cache of npvit.reference.attention_forward "
                        "(npvit.kernels.mha_forward's cache goes to npvit.kernels.mha_backward)")
    c_qkv, q, k, v, c_soft, a, c_drop, c_proj = cache
    xp = get_array_module(dy)
    batch, num_heads, tokens, d = q.shape
    do, dw_proj, db_proj = dense_backward(dy, c_proj, w_proj)  # (B, T, h*d), (h*d, D), (D,)
    do = do.reshape(batch, tokens, num_heads, d).transpose(0, 2, 1, 3)  # (B, h, T, d)
    da = do @ v.swapaxes(-1, -2)  # (B, h, T, T)
    dv = a.swapaxes(-1, -2) @ do  # (B, h, T, d)
    dp = dropout_backward(da, c_drop)  # (B, h, T, T)
    ds = softmax_backward(dp, c_soft)  # (B, h, T, T)
    dq = ds @ k / math.sqrt(d)  # (B, h, T, d)
    dk = ds.swapaxes(-1, -2) @ q / math.sqrt(d)  # (B, h, T, d)
    dqkv = xp.stack([dq, dk, dv], axis=2)  # (B, h, 3, T, d)
    dqkv = dqkv.transpose(0, 3, 2, 1, 4).reshape(batch, tokens, 3 * num_heads * d)  # (B, T, 3*h*d)
    dx, dw_qkv, db_qkv = dense_backward(dqkv, c_qkv, w_qkv)  # (B, T, D), (D, 3*h*d), (3*h*d,)
    return dx, dw_qkv, db_qkv, dw_proj, db_proj


# ---- MLP ------------------------------------------------------------------------------------------------------
def mlp_forward(
    params: Mapping[str, Array], prefix: str, x: Array, layers: int, gelu: str, rate: float,
    masks: Masks | None, act_last: bool = True,
) -> tuple[Array, tuple]:
    """The Keras example's ``mlp``: for each layer i, Dense (``{prefix}.fc{i}``) -> GELU -> Dropout
    (``{prefix}.drop{i}``), the last layer included; ``act_last=False`` leaves out the last layer's GELU (the
    paper's MLP, timm's ``Mlp``: fc1 -> GELU -> drop -> fc2 -> drop).   x (..., I) -> (..., U_last)."""
    caches = []
    for i in range(layers):
        name = f"{prefix}.fc{i}"
        x, c_fc = dense_forward(x, params[f"{name}.w"], params[f"{name}.b"])  # (..., U_i)
        c_gelu = None
        if act_last or i < layers - 1:
            x, c_gelu = gelu_forward(x, gelu)  # (..., U_i)
        keep = draw_keep(masks, f"{prefix}.drop{i}", x.shape, rate)  # (..., U_i) or None
        x, c_drop = dropout_forward(x, site_rate(keep, rate), mask=keep)  # (..., U_i)
        caches.append((c_fc, c_gelu, c_drop))
    return x, (prefix, caches)


# The layers in reverse, each one's three steps in reverse: dropout, GELU (where there is one), dense.
def mlp_backward(
    dy: Array, cache: tuple, params: Mapping[str, Array], grads: Params
) -> Array:
    """Gradient of mlp_forward: returns dx and writes ``grads[{prefix}.fc{i}.w / .b]``."""
    prefix, caches = cache  # the layers' names come with their caches
    for i in reversed(range(len(caches))):
        c_fc, c_gelu, c_drop = caches[i]
        name = f"{prefix}.fc{i}"
        dy = dropout_backward(dy, c_drop)  # (..., U_i)
        if c_gelu is not None:
            dy = gelu_backward(dy, c_gelu)  # (..., U_i)
        dy, grads[f"{name}.w"], grads[f"{name}.b"] = dense_backward(
            dy, c_fc, params[f"{name}.w"])  # (..., U_i-1)
    return dy


# ---- transformer block ----------------------------------------------------------------------------------------
def block_forward(
    params: Mapping[str, Array], i: int, x: Array, cfg: ViTConfig, masks: Masks | None
) -> tuple[Array, tuple]:
    """Pre-norm encoder layer ``blocks.{i}``:  x = x + DropPath(Attention(LayerNorm(x)));
    x = x + DropPath(Mlp(LayerNorm(x))).   x (B, T, D) -> (B, T, D)."""
    p = f"blocks.{i}"
    batch, tokens, _ = x.shape
    rate = drop_path_rate(cfg, i)
    h, c_norm1 = layernorm_forward(
        x, params[f"{p}.norm1.gamma"], params[f"{p}.norm1.beta"], cfg.ln_eps)  # (B, T, D)
    # npvit draws an image's attention mask as (heads, keys, queries), so the reference asks for that layout
    # and turns it around.
    keep = draw_keep(masks, f"{p}.attn.attn_drop", (batch, cfg.num_heads, tokens, tokens), cfg.attention_dropout)
    keep = None if keep is None else keep.swapaxes(-1, -2)  # (B, h, T, T)  rows the queries, columns the keys
    h, c_attn, _ = attention_forward(
        h, params[f"{p}.attn.qkv.w"], params[f"{p}.attn.qkv.b"], params[f"{p}.attn.proj.w"],
        params[f"{p}.attn.proj.b"], cfg.num_heads, site_rate(keep, cfg.attention_dropout), mask=keep,
    )  # (B, T, D)
    keep = draw_keep(masks, f"{p}.drop_path1", (batch, 1, 1), rate)  # (B, 1, 1) or None
    h, c_dp1 = drop_path_forward(h, site_rate(keep, rate), mask=keep)  # (B, T, D)
    x = x + h  # (B, T, D)  residual
    h, c_norm2 = layernorm_forward(
        x, params[f"{p}.norm2.gamma"], params[f"{p}.norm2.beta"], cfg.ln_eps)  # (B, T, D)
    h, c_mlp = mlp_forward(params, f"{p}.mlp", h, len(cfg.mlp_units), cfg.gelu, cfg.dropout, masks,
                           act_last=cfg.arrangement != "timm")  # (B, T, D)
    keep = draw_keep(masks, f"{p}.drop_path2", (batch, 1, 1), rate)  # (B, 1, 1) or None
    h, c_dp2 = drop_path_forward(h, site_rate(keep, rate), mask=keep)  # (B, T, D)
    y = x + h  # (B, T, D)  residual
    return y, (i, c_norm1, c_attn, c_dp1, c_norm2, c_mlp, c_dp2)


# At a residual sum z = u + f(u) the gradient reaches u along both paths, so they add: du = dz + J_f^T dz.
def block_backward(
    dy: Array, cache: tuple, params: Mapping[str, Array], grads: Params
) -> Array:
    """Gradient of block_forward: returns dx and writes the gradients of ``blocks.{i}.*`` into ``grads``."""
    i, c_norm1, c_attn, c_dp1, c_norm2, c_mlp, c_dp2 = cache  # the block's index comes with its cache
    p = f"blocks.{i}"
    dh = drop_path_backward(dy, c_dp2)  # (B, T, D)
    dh = mlp_backward(dh, c_mlp, params, grads)  # (B, T, D)
    dh, grads[f"{p}.norm2.gamma"], grads[f"{p}.norm2.beta"] = layernorm_backward(
        dh, c_norm2, params[f"{p}.norm2.gamma"])  # (B, T, D)
    dx = dy + dh  # (B, T, D)  both paths of the second residual
    a = f"{p}.attn"
    dh = drop_path_backward(dx, c_dp1)  # (B, T, D)
    dh, grads[f"{a}.qkv.w"], grads[f"{a}.qkv.b"], grads[f"{a}.proj.w"], grads[f"{a}.proj.b"] = (
        attention_backward(dh, c_attn, params[f"{a}.qkv.w"], params[f"{a}.proj.w"]))  # (B, T, D)
    dh, grads[f"{p}.norm1.gamma"], grads[f"{p}.norm1.beta"] = layernorm_backward(
        dh, c_norm1, params[f"{p}.norm1.gamma"])  # (B, T, D)
    return dx + dh  # (B, T, D)  both paths of the first residual


# ---- pooling --------------------------------------------------------------------------------------------------
def pool_forward(t: Array, pool: str, class_token: bool = False) -> tuple[Array, tuple]:
    """Tokens (B, T, D) -> one vector per image: "flatten" (B, T*D), every token concatenated (Keras'
    Flatten, row-major over (token, channel)); "cls" (B, D), the class token; "gap" (B, D), the mean of the
    patch tokens (token 0 left out when it is a class token, as timm's global_pool="avg")."""
    cache = (pool, t.shape, class_token)  # what the backward pass needs: the pool, the tokens' shape
    if pool == "flatten":
        return t.reshape(t.shape[0], -1), cache  # (B, T*D)
    if pool == "cls":
        return t[:, 0], cache  # (B, D)
    if pool == "gap":
        patches = t[:, 1:] if class_token else t  # (B, N, D)
        return patches.mean(axis=1), cache  # (B, D)
    raise ValueError(f"unknown pool {pool!r}: expected 'flatten', 'cls' or 'gap'")


# flatten: the inverse reshape;  cls: token 0 gets the gradient, the others none (through the pool);
# gap: each of the N patch tokens gets 1/N of it (a class token none).
def pool_backward(dpooled: Array, cache: tuple) -> Array:
    """Gradient of pool_forward with respect to the tokens (B, T, D)."""
    pool, shape, class_token = cache
    xp = get_array_module(dpooled)
    if pool == "flatten":
        return dpooled.reshape(shape)  # (B, T, D)
    dt = xp.zeros(shape, dtype=dpooled.dtype)  # (B, T, D)
    if pool == "cls":
        dt[:, 0] = dpooled
    else:
        first = 1 if class_token else 0
        dt[:, first:] = dpooled[:, None, :] / (shape[1] - first)
    return dt


def seq_pool_forward(t: Array, g: Array) -> tuple[Array, tuple]:
    """CCT's sequence pooling: tokens (B, T, D) -> (B, D), the tokens' mean weighted by w = softmax_T(t g),
    g (D,) (``attention_pool.w``, CCT's Linear(D, 1) kernel; its bias would cancel in the softmax). Returns
    (pooled, cache), the cache (t, w) as npvit.kernels.seq_pool_forward."""
    w, _ = softmax_forward(t @ g, axis=-1)  # (B, T)
    return (w[:, :, None] * t).sum(axis=1), (t, w)  # (B, D)


# pooled = sum_t w_t t_t:  dw_t = dpooled . t_t; through the softmax ds = w (dw - sum_t w_t dw_t); the score
# s_t = t_t . g gives dt_t += ds_t g and dg = sum_{b, t} ds_t t_t; the weighted sum gives dt_t = w_t dpooled.
def seq_pool_backward(dpooled: Array, cache: tuple, g: Array) -> tuple[Array, Array]:
    """Gradient of seq_pool_forward: (dt, dg)."""
    t, w = cache  # (B, T, D), (B, T)
    dw = (t * dpooled[:, None, :]).sum(axis=2)  # (B, T)
    ds = softmax_backward(dw, (w, -1))  # (B, T)
    dt = w[:, :, None] * dpooled[:, None, :] + ds[:, :, None] * g  # (B, T, D)
    dg = (ds[:, :, None] * t).sum(axis=(0, 1))  # (D,)
    return dt, dg


# ---- classifier head ------------------------------------------------------------------------------------------
def head_forward(
    params: Mapping[str, Array], pooled: Array, cfg: ViTConfig, masks: Masks | None
) -> tuple[Array, tuple]:
    """The Keras example's classifier: Dropout (``head_drop``) -> Mlp ``head`` (Dense -> GELU -> Dropout per
    hidden size) -> Dense ``head.out`` to the logits.   pooled (B, F) -> logits (B, K)."""
    rate = cfg.head_dropout
    keep = draw_keep(masks, "head_drop", pooled.shape, rate)  # (B, F) or None
    h, c_drop = dropout_forward(pooled, site_rate(keep, rate), mask=keep)  # (B, F)
    h, c_mlp = mlp_forward(params, "head", h, len(cfg.head_units), cfg.gelu, rate, masks)  # (B, U_last)
    logits, c_out = dense_forward(h, params["head.out.w"], params["head.out.b"])  # (B, K)
    return logits, (c_drop, c_mlp, c_out)


def head_backward(dlogits: Array, cache: tuple, params: Mapping[str, Array], grads: Params) -> Array:
    """Gradient of head_forward: returns dpooled and writes the gradients of ``head.*``."""
    c_drop, c_mlp, c_out = cache
    dh, grads["head.out.w"], grads["head.out.b"] = dense_backward(
        dlogits, c_out, params["head.out.w"])  # (B, U_last)
    dh = mlp_backward(dh, c_mlp, params, grads)  # (B, F)
    return dropout_backward(dh, c_drop)  # (B, F)


# ---- the whole model ------------------------------------------------------------------------------------------
def vit_forward(
    params: Mapping[str, Array], images: Array, cfg: ViTConfig, masks: Masks | None = None
) -> tuple[Array, tuple]:
    """Logits (B, K) of images (B, S, S, C). Returns (logits, cache); ``masks=None`` applies no dropout.

    The final LayerNorm acts on every token before the pooling (``norm``), or with ``cfg.fc_norm`` on the
    pooled vector (``fc_norm``, timm's global_pool="avg")."""
    xp = get_array_module(images)
    batch = images.shape[0]
    if cfg.tokenizer == "conv":
        t, c_embed = conv_tokenizer_forward(params, images, cfg)  # (B, N, D)
    else:
        t, c_embed = patch_embed_forward(
            images, params["patch_embed.proj.w"], params["patch_embed.proj.b"], cfg.patch_size,
            cfg.patch_overlap)  # (B, N, D)
    if cfg.has_class_token:
        cls = xp.broadcast_to(params["cls_token"], (batch, 1, cfg.dim))  # (B, 1, D)
        t = xp.concatenate([cls, t], axis=1)  # (B, T, D)  T = N + 1
    t = t + params["pos_embed"]  # (B, T, D)
    c_blocks = []
    for i in range(cfg.depth):
        t, c = block_forward(params, i, t, cfg, masks)  # (B, T, D)
        c_blocks.append(c)
    c_norm = None
    if not cfg.fc_norm:
        t, c_norm = layernorm_forward(t, params["norm.gamma"], params["norm.beta"], cfg.ln_eps)  # (B, T, D)
    if cfg.pool == "seq":
        pooled, c_pool = seq_pool_forward(t, params["attention_pool.w"][:, 0])  # (B, D)
    else:
        pooled, c_pool = pool_forward(t, cfg.pool, cfg.has_class_token)  # (B, T*D) for flatten, else (B, D)
    if cfg.fc_norm:
        pooled, c_norm = layernorm_forward(
            pooled, params["fc_norm.gamma"], params["fc_norm.beta"], cfg.ln_eps)  # (B, D)
    logits, c_head = head_forward(params, pooled, cfg, masks)  # (B, K)
    return logits, (cfg, c_embed, c_blocks, c_norm, c_pool, c_head)


# The forward pass in reverse. pos_embed was added to every image: its gradient is the sum over the batch;
# the class token was copied in front of every image: its gradient is the sum of token 0's over the batch.
def vit_backward(
    dlogits: Array, cache: tuple, params: Mapping[str, Array], input_grad: bool = True
) -> tuple[Params, Array | None]:
    """Gradients of vit_forward: (grads, dimages), ``grads`` keyed like ``params``; with ``input_grad=False``
    the conv tokenizer leaves dimages out (None)."""
    cfg, c_embed, c_blocks, c_norm, c_pool, c_head = cache  # the configuration comes with the cache
    grads: Params = {}
    dpooled = head_backward(dlogits, c_head, params, grads)  # (B, F)
    if cfg.fc_norm:
        dpooled, grads["fc_norm.gamma"], grads["fc_norm.beta"] = layernorm_backward(
            dpooled, c_norm, params["fc_norm.gamma"])  # (B, D)
    if cfg.pool == "seq":
        dt, dg = seq_pool_backward(dpooled, c_pool, params["attention_pool.w"][:, 0])  # (B, T, D), (D,)
        grads["attention_pool.w"] = dg[:, None]  # (D, 1)
    else:
        dt = pool_backward(dpooled, c_pool)  # (B, T, D)
    if not cfg.fc_norm:
        dt, grads["norm.gamma"], grads["norm.beta"] = layernorm_backward(
            dt, c_norm, params["norm.gamma"])  # (B, T, D)
    for i in reversed(range(cfg.depth)):
        dt = block_backward(dt, c_blocks[i], params, grads)  # (B, T, D)
    grads["pos_embed"] = dt.sum(axis=0)  # (T, D)
    if cfg.has_class_token:
        grads["cls_token"] = dt[:, 0].sum(axis=0)  # (D,)
        dt = dt[:, 1:]  # (B, N, D)
    if cfg.tokenizer == "conv":
        return grads, conv_tokenizer_backward(dt, c_embed, params, grads, input_grad)  # (B, S, S, C)
    dimages, grads["patch_embed.proj.w"], grads["patch_embed.proj.b"] = patch_embed_backward(
        dt, c_embed, params["patch_embed.proj.w"])  # (B, S, S, C)
    return grads, dimages


# ---- loss -----------------------------------------------------------------------------------------------------
def cross_entropy_forward(logits: Array, labels: Array, label_smoothing: float = 0.0) -> tuple[Array, tuple]:
    """Mean softmax cross-entropy of logits z (B, K) against integer labels (B,), with label smoothing s:

    target q = (1 - s) onehot(label) + s / K,  log p = z - logsumexp(z),  loss = -(1/B) sum_b sum_k q log p.
    """
    xp = get_array_module(logits)
    batch, k = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)  # (B, K)  so that no exp overflows
    logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))  # (B, K)
    q = smoothed_targets(labels, k, label_smoothing, logits.dtype, xp)  # (B, K)
    loss = -(q * logp).sum() / batch  # ()
    return loss, (xp.exp(logp), labels, label_smoothing)


def smoothed_targets(labels: Array, k: int, label_smoothing: float, dtype: Any, xp: Any) -> Array:
    """q = (1 - s) onehot(label) + s / K, one row (K,) per label."""
    q = xp.full((labels.shape[0], k), label_smoothing / k, dtype=dtype)  # (B, K)
    q[xp.arange(labels.shape[0]), labels] += 1.0 - label_smoothing
    return q


# d loss / dz = (p - q) / B   (times the incoming scalar gradient)
def cross_entropy_backward(cache: tuple, dloss: float = 1.0) -> Array:
    """Gradient of cross_entropy_forward with respect to the logits. The cache is (p, labels, smoothing),
    npvit.kernels.cross_entropy_forward's."""
    p, labels, label_smoothing = cache  # (B, K), (B,), s
    q = smoothed_targets(labels, p.shape[1], label_smoothing, p.dtype, get_array_module(p))  # (B, K)
    return (p - q) * (dloss / p.shape[0])  # (B, K)


# ---- AdamW ----------------------------------------------------------------------------------------------------
DECAY_CONVENTIONS = ("keras", "tfa")
EPSILON_CONVENTIONS = ("keras", "pytorch")


@dataclass
class AdamWState:
    """AdamW's state: the step count t and the moments m, v (keyed like the parameters)."""

    t: int = 0
    m: Params = field(default_factory=dict)
    v: Params = field(default_factory=dict)


def adamw_init(params: Mapping[str, Array]) -> AdamWState:
    """Zero moments for every parameter, step 0."""
    return AdamWState(0, {n: 0 * p for n, p in params.items()}, {n: 0 * p for n, p in params.items()})


def adamw_step(
    params: Params, grads: Mapping[str, Array], state: AdamWState, lr: float = 1e-3, weight_decay: float = 1e-4,
    beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7, decay_convention: str = "keras",
    epsilon_convention: str = "keras", exclude_from_decay: Iterable[str] = (), clip_norm: float | None = None,
) -> float:
    """One AdamW step (Loshchilov & Hutter, 2019), replacing the arrays of ``params``; returns the global
    gradient norm before clipping. At step t, for each parameter p with gradient g:

        g <- g min(1, clip_norm / ||G||)              ||G||: the L2 norm of every gradient together
        p <- p - lr wd p  ("keras": Keras 3, PyTorch)   or   p <- p - wd p  ("tfa": TensorFlow Addons)
        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
        "keras":    p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)
        "pytorch":  p <- p - lr mhat / (sqrt(vhat) + eps),  mhat = m / (1 - b1^t),  vhat = v / (1 - b2^t)

    The decay uses p before this step's Adam update, as all three libraries do. Any other convention name is
    refused (a misspelling would otherwise pick a branch silently). docs/math.md section 11 writes the paper's
    Algorithm 2 down and maps each convention onto it. A step whose gradient norm is
    not finite (an overflow, a NaN) changes nothing, neither the parameters nor the moments nor t: the
    caller, who gets the norm back, must stop.
    """
    if decay_convention not in DECAY_CONVENTIONS:
        raise ValueError(f"decay_convention must be one of {DECAY_CONVENTIONS}, got {decay_convention!r}")
    if epsilon_convention not in EPSILON_CONVENTIONS:
        raise ValueError(f"epsilon_convention must be one of {EPSILON_CONVENTIONS}, got {epsilon_convention!r}")
    exclude = set(exclude_from_decay)
    xp = get_array_module(*grads.values())
    norm = math.sqrt(float(sum(float(xp.sum(g * g)) for g in grads.values())))
    if not math.isfinite(norm):
        return norm
    clip = clip_norm / norm if clip_norm is not None and norm > clip_norm else 1.0
    state.t += 1
    t = state.t
    for name, p in params.items():
        g = grads[name] * clip
        if name not in exclude:
            p = p - (lr * weight_decay if decay_convention == "keras" else weight_decay) * p
        m = beta1 * state.m[name] + (1.0 - beta1) * g
        v = beta2 * state.v[name] + (1.0 - beta2) * g * g
        if epsilon_convention == "keras":
            p = p - lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t) * m / (xp.sqrt(v) + epsilon)
        else:
            m_hat, v_hat = m / (1.0 - beta1**t), v / (1.0 - beta2**t)
            p = p - lr * m_hat / (xp.sqrt(v_hat) + epsilon)
        params[name], state.m[name], state.v[name] = p, m, v
    return norm


# ---- initial parameters ---------------------------------------------------------------------------------------
def init_params(cfg: ViTConfig, seed: int = 0, dtype: Any = "float64", xp: Any = np) -> Params:
    """The initial parameters npvit.ViT(cfg, seed=seed) starts from.

    Keras' initializers (``cfg.arrangement == "keras"``): Glorot uniform kernels, zero biases, layer norms
    gamma 1 and beta 0, a zero class token, pos_embed U(-0.05, 0.05). Glorot uniform is U(-a, a),
    a = sqrt(6 / (fan_in + fan_out)). The query, key and value kernels are (D, h, d) each in Keras, the output
    kernel (h, d, D); their fans depend on ``cfg.attention_fans``: "axes" (Keras 3.15+: the input and output
    axes, (D, h d) and (h d, D)) or "receptive" (older Keras: leading axes as a receptive field, (h D, d D)
    and (h d, h D)).

    timm's (``"timm"``, VisionTransformer.init_weights with its default mode): every linear kernel normal
    with std 0.02 truncated to [-2, 2], zero biases, pos_embed the same normal, the class token normal with
    std 1e-6, and the patch projection (a Conv2d in timm, which keeps torch's default) U(-a, a) with
    a = 1 / sqrt(fan_in) = 1 / sqrt(P P C), its bias too.

    The conv tokenizer's kernels are He normal, std sqrt(2 / (3 3 C_in)), and the sequence pooling's score
    vector normal with std 0.02 truncated to [-2, 2] (CCT's).

    Drawn in float64 on the host from one seeded generator, in the model's parameter order.
    """
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    timm = cfg.arrangement == "timm"

    def glorot(shape: tuple[int, ...], fans: tuple[int, int] | None = None) -> np.ndarray:
        fan_in, fan_out = fans or shape
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=shape)

    def trunc_normal(shape: tuple[int, ...], std: float = 0.02) -> np.ndarray:
        x = rng.normal(0.0, std, size=shape)
        while (outside := np.abs(x) > 2.0).any():  # drawn again until inside [-2, 2]
            x[outside] = rng.normal(0.0, std, size=int(outside.sum()))
        return x

    def kernel(shape: tuple[int, ...], fans: tuple[int, int] | None = None) -> np.ndarray:
        return trunc_normal(shape) if timm else glorot(shape, fans)

    def dense(name: str, fan_in: int, fan_out: int) -> None:
        params[f"{name}.w"], params[f"{name}.b"] = kernel((fan_in, fan_out)), np.zeros(fan_out)

    def layernorm(name: str) -> None:
        params[f"{name}.gamma"], params[f"{name}.beta"] = np.ones(cfg.dim), np.zeros(cfg.dim)

    dim, h, d = cfg.dim, cfg.num_heads, cfg.key_dim
    if cfg.tokenizer == "conv":  # He normal, std sqrt(2 / fan_in) (CCT's kaiming_normal_)
        chans = (cfg.channels, *cfg.conv_channels)
        for i in range(len(cfg.conv_channels)):
            params[f"tokenizer.conv{i}.w"] = rng.normal(0.0, math.sqrt(2.0 / (9 * chans[i])),
                                                        size=(3, 3, chans[i], chans[i + 1]))
        if cfg.tokenizer_projects:
            dense("tokenizer.proj", chans[-1], dim)
    elif timm:
        bound = 1.0 / math.sqrt(cfg.patch_dim)
        params["patch_embed.proj.w"] = rng.uniform(-bound, bound, size=(cfg.patch_dim, dim))
        params["patch_embed.proj.b"] = rng.uniform(-bound, bound, size=dim)
    else:
        dense("patch_embed.proj", cfg.patch_dim, dim)
    if cfg.has_class_token:
        params["cls_token"] = rng.normal(0.0, 1e-6, size=dim) if timm else np.zeros(dim)
    params["pos_embed"] = (trunc_normal((cfg.num_tokens, dim)) if timm else
                           rng.uniform(-0.05, 0.05, size=(cfg.num_tokens, dim)))
    for i in range(cfg.depth):
        p = f"blocks.{i}"
        layernorm(f"{p}.norm1")
        if timm:  # the fused kernel drawn whole
            params[f"{p}.attn.qkv.w"] = trunc_normal((dim, 3 * h * d))
        else:
            qkv_fans = (dim, h * d) if cfg.attention_fans == "axes" else (h * dim, d * dim)
            params[f"{p}.attn.qkv.w"] = np.concatenate([glorot((dim, h * d), qkv_fans) for _ in range(3)], axis=1)
        params[f"{p}.attn.qkv.b"] = np.zeros(3 * h * d)
        out_fans = (h * d, dim) if cfg.attention_fans == "axes" else (h * d, h * dim)
        params[f"{p}.attn.proj.w"], params[f"{p}.attn.proj.b"] = kernel((h * d, dim), out_fans), np.zeros(dim)
        layernorm(f"{p}.norm2")
        sizes = (dim, *cfg.mlp_units)
        for j in range(len(cfg.mlp_units)):
            dense(f"{p}.mlp.fc{j}", sizes[j], sizes[j + 1])
    layernorm("fc_norm" if cfg.fc_norm else "norm")
    if cfg.pool == "seq":
        params["attention_pool.w"] = trunc_normal((dim, 1))  # CCT's Linear init: normal std 0.02, truncated
    sizes = (cfg.pooled_dim, *cfg.head_units)
    for j in range(len(cfg.head_units)):
        dense(f"head.fc{j}", sizes[j], sizes[j + 1])
    dense("head.out", sizes[-1], cfg.num_classes)
    return {name: xp.asarray(a, dtype=dtype) for name, a in params.items()}


# ---- a few training steps to step through -------------------------------------------------------------------
def synthetic_problem(cfg: ViTConfig, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` noisy images of ``cfg.num_classes`` classes, each class a fixed random pattern (easy to
    learn), and their labels."""
    rng = np.random.default_rng(seed)
    shape = (cfg.image_size, cfg.image_size, cfg.channels)
    patterns = rng.standard_normal((cfg.num_classes, *shape))  # (K, S, S, C)
    labels = rng.integers(0, cfg.num_classes, size=count)  # (B,)
    images = patterns[labels] + 0.5 * rng.standard_normal((count, *shape))  # (B, S, S, C)
    return images, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m npvit.reference",
        description="Train the reference Vision Transformer (npvit.reference) for a few full-batch AdamW steps "
                    "on a tiny synthetic problem, printing the loss per step.")
    parser.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    parser.add_argument("--batch", type=int, default=32, help="images in the batch (default 32)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default 3e-3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        parser.error("--steps and --batch must be positive")

    cfg = ViTConfig.tiny(num_classes=4)
    params = init_params(cfg, seed=args.seed)
    images, labels = synthetic_problem(cfg, args.batch, args.seed)
    state = adamw_init(params)
    seeds = np.random.default_rng(args.seed + 1)  # one dropout seed per step
    print(f"reference ViT: {sum(p.size for p in params.values()):,} parameters, {cfg.depth} blocks, "
          f"batch of {args.batch} synthetic {cfg.image_size}x{cfg.image_size} images, {cfg.num_classes} classes")
    for step in range(1, args.steps + 1):
        masks = keyed_masks(int(seeds.integers(2**63)))
        logits, cache = vit_forward(params, images, cfg, masks)  # dropout on: training
        loss, c_loss = cross_entropy_forward(logits, labels)
        grads, _ = vit_backward(cross_entropy_backward(c_loss), cache, params)
        norm = adamw_step(params, grads, state, lr=args.lr)
        print(f"step {step:3d}  loss {float(loss):.4f}  grad norm {norm:.3f}", flush=True)
    logits, _ = vit_forward(params, images, cfg)  # inference: no dropout
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    print(f"training-batch accuracy after {args.steps} steps: {accuracy:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
