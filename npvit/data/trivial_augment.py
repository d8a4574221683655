"""TrivialAugment Wide (Müller and Hutter, 2021, "TrivialAugment: Tuning-free Yet State-of-the-Art Data
Augmentation"), vectorised over the batch, with the operations and strengths of torchvision's
``TrivialAugmentWide()``.

Each image gets one operation, drawn uniformly from the 14 below, at a strength drawn uniformly from 31
bins k = 0..30; the signed operations then take a random sign (+ or - with probability 1/2 each). The images
are in pixel units, [0, 255]: the raw images, after the random crop and before the normalisation. Results
are floats clipped to [0, 255], not rounded to integers (torchvision's operations on float images, scaled by
255). ``gray(x) = 0.2989 R + 0.587 G + 0.114 B``; geometric operations read the nearest pixel (ties to even)
and fill with 0 (black) where they read outside the image; pixel (y, x) is row y, column x.

    op            strength of bin k                 out(y, x), per image
    identity      -                                 x
    shear_x       s = +-0.99 k / 30                 x(y, x + s y)                        about the top-left corner
    shear_y       s = +-0.99 k / 30                 x(y + s x, x)
    translate_x   t = +-int(32 k / 30) pixels       x(y, x - t)
    translate_y   t = +-int(32 k / 30) pixels       x(y - t, x)
    rotate        a = +-135 k / 30 degrees          rotation by a about the centre ((H-1)/2, (W-1)/2)
    brightness    f = 1 +- 0.99 k / 30              f x
    color         f                                 f x + (1 - f) gray(x)                 saturation
    contrast      f                                 f x + (1 - f) mean(gray(x))           mean over the image
    sharpness     f                                 f x + (1 - f) smooth(x)               border pixels kept
    posterize     b = 8 - round(k / 5) bits         floor(x / 2^(8-b)) 2^(8-b)            b from 8 to 2
    solarize      t = 255 (1 - k / 30)              255 - x where x >= t, else x
    autocontrast  -                                 (x - min) 255 / (max - min)           per channel; x if max = min
    equalize      -                                 PIL's histogram equalisation          per channel

``smooth`` is the 3x3 filter [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 on the interior pixels and the pixel
itself on the border (PIL's and torchvision's sharpness). Equalisation: with h the channel's 256-bin
histogram of its H W pixels, h_last the count of its highest non-empty bin and
``step = floor((H W - h_last) / 255)``, value v becomes ``min(floor((sum_{u < v} h[u] + floor(step / 2)) /
step), 255)``, or stays v when step = 0. Posterize, solarize and equalize read integer pixel values, which
the raw images have: every image gets one operation, applied to the image as it came.

Each operation is a function of a batch (``OPERATIONS``). On NumPy it runs on the images that drew it; on
a GPU (:func:`trivial_augment_device`) every image goes through one gather and one kernel that computes each
image's own operation, 14 kernels in all, so that nothing is read back from the device. No loop over images
on either. Draws (:func:`draw_trivial_augment`) come from ``rng.random``
for a whole global batch: operations, bins, then signs, then (only with a probability below 1) whether each
image is augmented at all.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy

from ..backend import bin_counts, cached_constant, get_array_module
from .fused import fused, grid

Array = Any
OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
       "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
BINS = 31
SIGNED = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                    "contrast", "sharpness"})
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
SMOOTH = numpy.array([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


def strengths(op: str) -> numpy.ndarray:
    """(31,) float64: the unsigned strength of each bin of ``op`` (zeros for the operations without one)."""
    k = numpy.arange(BINS, dtype=numpy.float64)
    if op in ("shear_x", "shear_y", "brightness", "color", "contrast", "sharpness"):
        return numpy.linspace(0.0, 0.99, BINS)
    if op in ("translate_x", "translate_y"):
        return numpy.trunc(numpy.linspace(0.0, 32.0, BINS))  # torchvision's int(magnitude): whole pixels
    if op == "rotate":
        return numpy.linspace(0.0, 135.0, BINS)
    if op == "posterize":
        return 8.0 - numpy.round(k / ((BINS - 1) / 6.0))
    if op == "solarize":
        return numpy.linspace(255.0, 0.0, BINS)
    return numpy.zeros(BINS)


STRENGTHS = numpy.stack([strengths(op) for op in OPS])  # (14, 31)


def draw_trivial_augment(total: int, rng: Any, xp: Any = numpy, prob: float = 1.0) -> tuple[Array, Array, Array]:
    """(ops, bins, signs), each (total,): operation indices into OPS, bins 0..30 and signs +-1 (float64), from
    ``rng.random`` alone (``min(floor(u n), n - 1)``, as npvit.data.augment.draw_crops), on module ``xp``.

    ``prob`` < 1 leaves each image unchanged with probability 1 - prob: one more uniform draw per image after
    the signs, and the images with ``u >= prob`` get the identity (index 0). The others keep their uniform
    draw, which may itself be the identity, so an image keeps its pixels with probability
    ``1 - prob + prob / 14``. With ``prob`` = 1 nothing more is drawn, so the draws are the same as before
    the option existed.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob!r}")

    u = [xp.asarray(rng.random(total), dtype=xp.float64) for _ in range(3 if prob == 1.0 else 4)]  # in order
    if xp is numpy:
        return _draws(numpy, prob)(*u)
    return fused(xp, "trivial_augment_draws", prob, lambda: _draws(xp, prob))(*u)  # the arithmetic: one kernel


def _draws(xp: Any, prob: float) -> Callable:
    """draw_trivial_augment's arithmetic on its uniform draws: (u_op, u_bin, u_sign[, u_keep]) -> draws."""
    def f(u_op: Array, u_bin: Array, u_sign: Array, *u_keep: Array) -> tuple[Array, Array, Array]:
        ops = xp.minimum(xp.floor(u_op * len(OPS)), len(OPS) - 1).astype(xp.intp)
        bins = xp.minimum(xp.floor(u_bin * BINS), BINS - 1).astype(xp.intp)
        signs = xp.where(u_sign < 0.5, -1.0, 1.0)
        if u_keep:
            ops = xp.where(u_keep[0] < prob, ops, 0)  # OPS[0] is the identity: the image is left as it is
        return ops, bins, signs
    return f


def op_strengths(ops: Array, bins: Array, signs: Array) -> Array:
    """(B,) float64: each image's signed strength, STRENGTHS[op, bin] times its sign for the signed ops."""
    xp = get_array_module(ops)
    table = cached_constant(xp, "trivial_augment.strengths", lambda: STRENGTHS, numpy.float64)  # (14, 31)
    signed = cached_constant(xp, "trivial_augment.signed", lambda: numpy.array([op in SIGNED for op in OPS]), bool)
    return table[ops, bins] * xp.where(signed[ops], signs, 1.0)


def trivial_augment(x: Array, ops: Array, bins: Array, signs: Array, dtype: Any = numpy.float32) -> Array:
    """Apply to each image of ``x`` (B, H, W, C), pixel values in [0, 255] (uint8 or float), the operation
    ``OPS[ops[b]]`` at the strength of ``bins[b]`` with sign ``signs[b]`` (+-1). Returns ``dtype`` (B, H, W, C).

    On NumPy each operation runs on the images that drew it. On a GPU, :func:`trivial_augment_device`: every
    image through one gather and one kernel that computes the operation each image drew, since picking the
    images would read the draws back to the host.
    """
    xp = get_array_module(x)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (batch, height, width, channels), got {tuple(x.shape)}")
    b = x.shape[0]
    ops, bins, signs = xp.asarray(ops), xp.asarray(bins), xp.asarray(signs)
    if ops.shape != (b,) or bins.shape != (b,) or signs.shape != (b,):
        raise ValueError(f"need one operation, bin and sign per image ({b}), got shapes {ops.shape}, "
                         f"{bins.shape} and {signs.shape}")
    if xp is not numpy:
        return trivial_augment_device(x, ops, bins, signs, dtype)
    s = op_strengths(ops, bins, signs)  # (B,) float64
    raw = x.astype(dtype)  # (B, H, W, C)
    out = raw.copy()  # identity
    for k, name in enumerate(OPS):
        rows = numpy.flatnonzero(ops == k)
        if name != "identity" and rows.size:
            out[rows] = OPERATIONS[name](raw[rows], s[rows])
    return out


# ---- geometry: nearest pixel of an output-to-input map, 0 outside -----------------------------------------
def _resample(x: Array, a: tuple[Array, ...]) -> Array:
    """out(y, x) = x(rint(in_y), rint(in_x)), 0 where that is outside the image, for each image's map
    in_x = a0 x + a1 y + a2, in_y = a3 x + a4 y + a5 (six (n,) float64 coefficient arrays)."""
    xp = get_array_module(x)
    n, h, w, c = x.shape
    gx = xp.arange(w, dtype=xp.float64)[None, None, :]  # (1, 1, W)
    gy = xp.arange(h, dtype=xp.float64)[None, :, None]  # (1, H, 1)
    a0, a1, a2, a3, a4, a5 = (xp.asarray(v, dtype=xp.float64).reshape(n, 1, 1) for v in a)
    in_x = xp.rint(a0 * gx + a1 * gy + a2)  # (n, H, W): nearest column, ties to even
    in_y = xp.rint(a3 * gx + a4 * gy + a5)  # (n, H, W): nearest row
    inside = (in_x >= 0) & (in_x <= w - 1) & (in_y >= 0) & (in_y <= h - 1)
    xi = xp.clip(in_x, 0, w - 1).astype(xp.intp)
    yi = xp.clip(in_y, 0, h - 1).astype(xp.intp)
    flat = xp.arange(n, dtype=xp.intp)[:, None, None] * (h * w) + yi * w + xi  # (n, H, W)
    moved = xp.take(x.reshape(n * h * w, c), flat, axis=0)  # (n, H, W, C)
    return xp.where(inside[..., None], moved, xp.zeros((), dtype=x.dtype))


def shear_x(x: Array, s: Array) -> Array:
    one, zero = _ones_zeros(s)
    return _resample(x, (one, s, zero, zero, one, zero))  # in_x = x + s y


def shear_y(x: Array, s: Array) -> Array:
    one, zero = _ones_zeros(s)
    return _resample(x, (one, zero, zero, s, one, zero))  # in_y = s x + y


def translate_x(x: Array, s: Array) -> Array:
    one, zero = _ones_zeros(s)
    return _resample(x, (one, zero, -s, zero, one, zero))  # in_x = x - t


def translate_y(x: Array, s: Array) -> Array:
    one, zero = _ones_zeros(s)
    return _resample(x, (one, zero, zero, zero, one, -s))  # in_y = y - t


def rotate(x: Array, s: Array) -> Array:
    """Rotation by ``s`` degrees about the centre (cx, cy): in = R (out - c) + c, R = [[cos, -sin], [sin, cos]]."""
    xp = get_array_module(x)
    h, w = x.shape[1:3]
    theta = s * (math.pi / 180.0)
    cos, sin = xp.cos(theta), xp.sin(theta)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    return _resample(x, (cos, -sin, cx - cx * cos + cy * sin, sin, cos, cy - cx * sin - cy * cos))


def _ones_zeros(s: Array) -> tuple[Array, Array]:
    xp = get_array_module(s)
    return xp.ones(s.shape), xp.zeros(s.shape)


# ---- colour: f x + (1 - f) D for a degenerate image D -------------------------------------------------------
def _mix(x: Array, degenerate: Array, s: Array) -> Array:
    """clip(f x + (1 - f) D, 0, 255), f = 1 + s per image (torchvision's _blend)."""
    xp = get_array_module(x)
    f = (1.0 + s).astype(x.dtype)[:, None, None, None]  # (n, 1, 1, 1)
    return xp.clip(f * x + (1 - f) * degenerate, 0, 255)


def gray(x: Array) -> Array:
    """(n, H, W, 1): 0.2989 R + 0.587 G + 0.114 B; a one-channel image is its own gray."""
    if x.shape[-1] != 3:
        return x[..., :1]
    return x[..., 0:1] * GRAY[0] + x[..., 1:2] * GRAY[1] + x[..., 2:3] * GRAY[2]


def brightness(x: Array, s: Array) -> Array:
    return _mix(x, 0.0, s)


def color(x: Array, s: Array) -> Array:
    return _mix(x, gray(x), s)


def contrast(x: Array, s: Array) -> Array:
    return _mix(x, gray(x).mean(axis=(1, 2, 3), keepdims=True), s)


def sharpness(x: Array, s: Array) -> Array:
    return _mix(x, smooth(x), s)


def smooth(x: Array) -> Array:
    """PIL's SMOOTH filter on the interior pixels, the pixel itself on the border (n, H, W, C)."""
    h, w = x.shape[1:3]
    out = x.copy()
    if h >= 3 and w >= 3:
        out[:, 1:-1, 1:-1] = sum(SMOOTH[i, j] * x[:, i:h - 2 + i, j:w - 2 + j] for i in range(3) for j in range(3))
    return out


# ---- levels ---------------------------------------------------------------------------------------------
def posterize(x: Array, s: Array) -> Array:
    """Keep the top ``s`` bits of each integer pixel value: floor(x / q) q, q = 2^(8 - s)."""
    xp = get_array_module(x)
    q = xp.exp2(8.0 - s).astype(x.dtype)[:, None, None, None]
    return xp.floor(x / q) * q


def solarize(x: Array, s: Array) -> Array:
    xp = get_array_module(x)
    return xp.where(x >= s.astype(x.dtype)[:, None, None, None], 255 - x, x)


def autocontrast(x: Array, s: Array) -> Array:
    """Stretch each channel of each image to [0, 255] (torchvision's autocontrast); a flat channel is kept."""
    xp = get_array_module(x)
    lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)  # (n, 1, 1, C)
    flat = hi <= lo
    stretched = xp.clip((x - lo) * (255 / xp.where(flat, 1, hi - lo)), 0, 255)
    return xp.where(flat, x, stretched)


def equalize(x: Array, s: Array) -> Array:
    """PIL's ImageOps.equalize of each channel of each image (the formula in the module's docstring), for
    integer pixel values: one histogram of 256 bins per (image, channel), from one ``bin_counts``."""
    xp = get_array_module(x)
    n, h, w, c = x.shape
    v = xp.clip(x, 0, 255).astype(xp.intp)  # (n, H, W, C)
    index = (xp.arange(n * c, dtype=xp.intp).reshape(n, 1, 1, c) * 256 + v).reshape(-1)  # bin of each value
    hist = bin_counts(index, n * c * 256).reshape(n, c, 256)  # (n, C, 256), no host read on CuPy
    last = 255 - xp.argmax(hist[..., ::-1] > 0, axis=-1)  # (n, C): the highest non-empty bin
    h_last = xp.take_along_axis(hist, last[..., None], axis=-1)[..., 0]  # (n, C)
    step = (h * w - h_last) // 255  # (n, C)
    below = xp.cumsum(hist, axis=-1) - hist  # (n, C, 256): pixels in the bins below each value
    lut = xp.minimum((below + (step // 2)[..., None]) // xp.maximum(step, 1)[..., None], 255)
    lut = xp.where((step == 0)[..., None], xp.arange(256), lut)  # (n, C, 256)
    return xp.take(lut.reshape(-1), index).reshape(n, h, w, c).astype(x.dtype)


OPERATIONS = {
    "shear_x": shear_x, "shear_y": shear_y, "translate_x": translate_x, "translate_y": translate_y,
    "rotate": rotate, "brightness": brightness, "color": color, "contrast": contrast, "sharpness": sharpness,
    "posterize": posterize, "solarize": solarize, "autocontrast": autocontrast, "equalize": equalize,
}
"""Operation name -> f(images (n, H, W, C) float, signed strengths (n,) float64) -> images: every operation of
OPS but the identity, each applied to every image it is given."""


# ---- the GPU path: one gather, one kernel -------------------------------------------------------------------
_GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")


def trivial_augment_device(x: Array, ops: Array, bins: Array, signs: Array, dtype: Any = numpy.float32,
                           crop: tuple[int, Array, Array] | None = None) -> Array:
    """trivial_augment on CuPy in 14 kernels whatever the draws, the same pixels as the NumPy path.

    The five geometric operations are each an output-to-input map ``in = A (x, y, 1)``, the identity for the
    other images: one kernel computes every pixel's source index (a zero row past the batch where it falls
    outside), one ``take`` reads the batch through it. The colour operations need per-image statistics of
    those pixels (the gray mean; per channel the 257-entry running histogram, from one scatter-add, which
    also gives autocontrast's minimum and maximum for uint8 images) and each pixel's 3x3 neighbours (views of
    the gathered batch, laid out with a margin); then one kernel computes every operation of OPS for every
    pixel and keeps the one its image drew. ``crop`` = (P, dy, dx): the images of ``x`` are first padded with
    P zeros and cropped at the offsets (npvit.data.augment.crop_padded), inside the same gather.
    """
    xp = get_array_module(x)
    n, h, w, c = x.shape
    dt = numpy.dtype(dtype)
    code = fused(xp, "trivial_augment_code", None, lambda: lambda o, b, g: o * (2 * BINS) + b * 2 + (g > 0))
    table = cached_constant(xp, "trivial_augment.signed_strengths", _signed_strengths, numpy.float64)
    s = xp.take(table, code(ops, bins, signs))  # (n,) float64: STRENGTHS[op, bin] times the sign if signed
    pad, oy, ox = (0, 0, 0) if crop is None else (crop[0], crop[1].reshape(n, 1, 1), crop[2].reshape(n, 1, 1))
    source = fused(xp, "trivial_augment_source", (h, w, pad, crop is None), lambda: _source_index(xp, h, w, pad))
    index = source(ops.reshape(n, 1, 1), s.reshape(n, 1, 1), grid(xp, w, 2, 3, numpy.float64),
                   grid(xp, h, 1, 3, numpy.float64), grid(xp, n, 0, 3, numpy.intp), oy, ox, n * h * w)  # (n, H, W)
    zero = cached_constant(xp, ("trivial_augment.zero_row", c), lambda: numpy.zeros((1, c)), x.dtype)
    rows = xp.concatenate([x.reshape(n * h * w, c), zero])  # (n H W + 1, C): the last row reads as black
    margin = (w + 1) * c  # the 3x3 neighbours of every pixel are views of the flat buffer at fixed offsets
    buffer = xp.zeros(n * h * w * c + 2 * margin, dtype=x.dtype)
    size = n * h * w * c
    xp.take(rows, index.reshape(-1), axis=0, out=buffer[margin:margin + size].reshape(n * h * w, c))

    def at(dy: int, dx: int) -> Array:  # (n, H, W, C): the pixel dy rows and dx columns away
        start = margin + (dy * w + dx) * c
        return buffer[start:start + size].reshape(n, h, w, c)

    moved = at(0, 0)  # (n, H, W, C): each image moved by its map (unmoved for the colour operations)
    gray = [moved[..., i:i + 1] for i in range(3)] if c == 3 else [moved[..., :1]]  # (n, H, W, 1) each
    mean = fused(xp, "trivial_augment_gray_mean", (dt.str, len(gray), h * w), lambda: _gray_sum(xp, dt, h * w))(*gray)
    below, key = _histograms(moved, dt)  # (n, H, W, C), (n, 1, 1, C)
    if x.dtype == numpy.uint8:  # the extremes are the lowest and highest non-empty bins (in key)
        lo = hi = cached_constant(xp, "trivial_augment.unused", lambda: numpy.zeros(()), dt)
    else:
        lo = _amin(xp, dt)(moved).reshape(n, 1, 1, c)
        hi = _amax(xp, dt)(moved).reshape(n, 1, 1, c)
    interior = cached_constant(xp, ("trivial_augment.interior", h, w), lambda: _interior(h, w), bool)
    apply = fused(xp, "trivial_augment_apply", (dt.str, len(gray), x.dtype == numpy.uint8, h * w),
                  lambda: _apply(xp, dt, x.dtype == numpy.uint8, h * w))
    neighbours = [at(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return apply(moved, ops.reshape(n, 1, 1, 1), s.reshape(n, 1, 1, 1), mean.reshape(n, 1, 1, 1),
                 lo, hi, key, below, interior, *neighbours, *gray)


def _signed_strengths() -> numpy.ndarray:
    """(14 * 31 * 2,): STRENGTHS[op, bin] times the sign (- then +) for the signed operations, at
    op * 62 + bin * 2 + (sign > 0); a product with +-1 is exact, as the NumPy path's."""
    signed = numpy.array([op in SIGNED for op in OPS])[:, None, None]
    return (STRENGTHS[:, :, None] * numpy.where(signed, numpy.array([-1.0, 1.0]), 1.0)).reshape(-1)


def _interior(h: int, w: int) -> numpy.ndarray:
    inside = numpy.zeros((1, h, w, 1), dtype=bool)
    inside[:, 1:-1, 1:-1] = True
    return inside


def _source_index(xp: Any, h: int, w: int, pad: int) -> Callable:
    """The per-pixel kernel: the flat row of each output pixel's source in the (padded) batch, the zero row
    n H W where it falls outside; the map's coefficients as _resample's for each operation."""
    k = {name: OPS.index(name) for name in _GEOMETRIC}
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0

    def f(op: Array, s: Array, gx: Array, gy: Array, b: Array, oy: Any, ox: Any, outside: int) -> Array:
        theta = s * (math.pi / 180.0)
        cos, sin = xp.cos(theta), xp.sin(theta)
        rot = op == k["rotate"]
        a0 = xp.where(rot, cos, 1.0)
        a1 = xp.where(rot, -sin, xp.where(op == k["shear_x"], s, 0.0))
        a2 = xp.where(rot, cx - cx * cos + cy * sin, xp.where(op == k["translate_x"], -s, 0.0))
        a3 = xp.where(rot, sin, xp.where(op == k["shear_y"], s, 0.0))
        a4 = xp.where(rot, cos, 1.0)
        a5 = xp.where(rot, cy - cx * sin - cy * cos, xp.where(op == k["translate_y"], -s, 0.0))
        in_x = xp.rint(a0 * gx + a1 * gy + a2)  # nearest column, ties to even
        in_y = xp.rint(a3 * gx + a4 * gy + a5)
        inside = (in_x >= 0) & (in_x <= w - 1) & (in_y >= 0) & (in_y <= h - 1)
        row = xp.clip(in_y, 0, h - 1).astype(xp.intp) + oy  # in the zero-padded image when cropped
        col = xp.clip(in_x, 0, w - 1).astype(xp.intp) + ox
        inside = inside & (row >= pad) & (row < h + pad) & (col >= pad) & (col < w + pad)
        return xp.where(inside, (b * h + row - pad) * w + col - pad, outside)
    return f


def _gray_sum(xp: Any, dt: numpy.dtype, count: int) -> Callable:
    """The per-image mean of gray(x) (one reduction): contrast's degenerate image."""
    def f(*channels: Array) -> Array:
        r = channels[0].astype(dt)
        g = r if len(channels) == 1 else r * GRAY[0] + channels[1].astype(dt) * GRAY[1] + channels[2].astype(dt) * GRAY[2]
        return g.sum(axis=(1, 2, 3)) / count
    return f


def _histograms(moved: Array, dt: numpy.dtype) -> tuple[Array, Array]:
    """(below, key): for each pixel the count of its channel's pixels of lower value (n, H, W, C), and per
    channel ``lo + 256 hi + 65536 h_last`` (n, 1, 1, C): the lowest and highest non-empty bins and the count of
    the highest, from a 257-bin running histogram per (image, channel), in five kernels."""
    xp = get_array_module(moved)
    n, h, w, c = moved.shape
    base = cached_constant(xp, ("trivial_augment.hist_base", n, c),
                           lambda: (numpy.arange(n * c) * 257).reshape(n, 1, 1, c), numpy.intp)
    index = fused(xp, "trivial_augment_hist_index", dt.str, lambda: lambda v, b: _value_bin(xp, v, dt, b))
    bin_index, value_index = index(moved, base)  # (n, H, W, C) each: bin v + 1 and v of the pixel's row
    running = xp.cumsum(bin_counts(bin_index, n * c * 257).reshape(n, c, 257), axis=-1)  # [.., v]: below v
    key = fused(xp, "trivial_augment_extremes", h * w, lambda: _extremes(xp, h * w))(
        running[..., :-1], running[..., 1:], grid(xp, 256, 2, 3, numpy.int64))  # (n, C)
    return xp.take(running.reshape(-1), value_index), key.reshape(n, 1, 1, c)


def _value_bin(xp: Any, v: Array, dt: numpy.dtype, base: Array) -> tuple[Array, Array]:
    i = base + xp.clip(v.astype(dt), 0, 255).astype(xp.intp)  # equalize's integer value, in its row
    return i + 1, i


def _extremes(xp: Any, total: int) -> Callable:
    def f(below: Array, upto: Array, v: Array) -> Array:  # (n, C, 256) each: pixels < v, pixels <= v
        count = (upto - below).astype(xp.int64)
        lowest = (count > 0) & (below == 0)
        highest = (count > 0) & (upto == total)
        return (xp.where(lowest, v, 0) + xp.where(highest, v * 256 + count * 65536, 0)).sum(axis=-1)
    return f


def _amin(xp: Any, dt: numpy.dtype) -> Callable:
    return fused(xp, "trivial_augment_min", dt.str, lambda: lambda v: v.astype(dt).min(axis=(1, 2)))


def _amax(xp: Any, dt: numpy.dtype) -> Callable:
    return fused(xp, "trivial_augment_max", dt.str, lambda: lambda v: v.astype(dt).max(axis=(1, 2)))


def _apply(xp: Any, dt: numpy.dtype, from_histogram: bool, total: int) -> Callable:
    """The per-pixel kernel: every operation of OPS on the gathered pixel, the one its image drew kept; the
    same operations, in the same order and dtypes, as the NumPy functions above."""
    weights = SMOOTH.reshape(-1).tolist()

    def f(v: Array, op: Array, s: Array, mean: Array, lo: Array, hi: Array, key: Array, below: Array,
          interior: Array, *rest: Array) -> Array:
        neighbours, channels = rest[:9], rest[9:]
        x = v.astype(dt)
        if from_histogram:
            lo, hi = (key % 256).astype(dt), (key // 256 % 256).astype(dt)
        f = (1.0 + s).astype(dt)
        r = channels[0].astype(dt)
        gray = r if len(channels) == 1 else r * GRAY[0] + channels[1].astype(dt) * GRAY[1] + channels[2].astype(dt) * GRAY[2]
        smooth = 0
        for wk, nk in zip(weights, neighbours):
            smooth = smooth + wk * nk.astype(dt).astype(xp.float64)  # SMOOTH[i, j] * x in float64, as smooth()
        smooth = xp.where(interior, smooth.astype(dt), x)
        flat = hi <= lo
        step = (total - key // 65536) // 255
        lut = xp.minimum((below + step // 2) // xp.maximum(step, 1), 255)
        q = xp.exp2(8.0 - xp.where(op == OPS.index("posterize"), s, 8.0)).astype(dt)  # 1 for the others: finite
        out = {
            "brightness": xp.clip(f * x + (1 - f) * 0.0, 0, 255),
            "color": xp.clip(f * x + (1 - f) * gray, 0, 255),
            "contrast": xp.clip(f * x + (1 - f) * mean, 0, 255),
            "sharpness": xp.clip(f * x + (1 - f) * smooth, 0, 255),
            "posterize": xp.floor(x / q) * q,
            "solarize": xp.where(x >= s.astype(dt), 255 - x, x),
            "autocontrast": xp.where(flat, x, xp.clip((x - lo) * (255 / xp.where(flat, 1, hi - lo)), 0, 255)),
            "equalize": xp.where(step == 0, xp.clip(x, 0, 255).astype(xp.intp), lut).astype(dt),
        }
        result = x  # the identity and the geometric operations: the gathered pixel
        for name, value in out.items():
            result = xp.where(op == OPS.index(name), value, result)
        return result
    return f
