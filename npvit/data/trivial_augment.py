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
a GPU on the whole batch, its result kept where the image drew it (``xp.where``), so that nothing is read
back from the device. No loop over images on either. Draws (:func:`draw_trivial_augment`) come from ``rng.random``
for a whole global batch: operations, bins, then signs, then (only with a probability below 1) whether each
image is augmented at all.
"""

from __future__ import annotations

import math
from typing import Any

import numpy

from ..backend import bin_counts, cached_constant, get_array_module

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

    def uniform_index(n: int) -> Array:
        u = xp.asarray(rng.random(total), dtype=xp.float64)
        return xp.minimum(xp.floor(u * n), n - 1).astype(xp.intp)

    ops, bins = uniform_index(len(OPS)), uniform_index(BINS)
    signs = xp.where(xp.asarray(rng.random(total), dtype=xp.float64) < 0.5, -1.0, 1.0)
    if prob < 1.0:
        keep = xp.asarray(rng.random(total), dtype=xp.float64) < prob  # (total,): these images are augmented
        ops = xp.where(keep, ops, 0)  # OPS[0] is the identity
    return ops, bins, signs


def op_strengths(ops: Array, bins: Array, signs: Array) -> Array:
    """(B,) float64: each image's signed strength, STRENGTHS[op, bin] times its sign for the signed ops."""
    xp = get_array_module(ops)
    table = cached_constant(xp, "trivial_augment.strengths", lambda: STRENGTHS, numpy.float64)  # (14, 31)
    signed = cached_constant(xp, "trivial_augment.signed", lambda: numpy.array([op in SIGNED for op in OPS]), bool)
    return table[ops, bins] * xp.where(signed[ops], signs, 1.0)


def trivial_augment(x: Array, ops: Array, bins: Array, signs: Array, dtype: Any = numpy.float32) -> Array:
    """Apply to each image of ``x`` (B, H, W, C), pixel values in [0, 255] (uint8 or float), the operation
    ``OPS[ops[b]]`` at the strength of ``bins[b]`` with sign ``signs[b]``. Returns ``dtype`` (B, H, W, C).

    On NumPy each operation runs on the images that drew it; on a GPU it runs on the whole batch and
    ``where`` keeps it for those images, since picking them would read the draws back to the host.
    """
    xp = get_array_module(x)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (batch, height, width, channels), got {tuple(x.shape)}")
    b = x.shape[0]
    ops, bins, signs = xp.asarray(ops), xp.asarray(bins), xp.asarray(signs)
    if ops.shape != (b,) or bins.shape != (b,) or signs.shape != (b,):
        raise ValueError(f"need one operation, bin and sign per image ({b}), got shapes {ops.shape}, "
                         f"{bins.shape} and {signs.shape}")
    s = op_strengths(ops, bins, signs)  # (B,) float64
    raw = x.astype(dtype)  # (B, H, W, C)
    out = raw.copy()  # identity
    for k, name in enumerate(OPS):
        if name == "identity":
            continue
        apply = OPERATIONS[name]
        if xp is numpy:
            rows = numpy.flatnonzero(ops == k)
            if rows.size:
                out[rows] = apply(raw[rows], s[rows])
        else:
            out = xp.where((ops == k)[:, None, None, None], apply(raw, s), out)
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
