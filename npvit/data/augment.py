"""Preprocessing and data augmentation of the Keras ViT example, vectorised over the batch.

    Normalization()                                   adapt(x_train): per-channel mean and variance
    Resizing(72, 72)                                  bilinear, half-pixel centres, no antialiasing
    RandomFlip("horizontal")                          training only
    RandomRotation(factor=0.02)                       training only, fill "reflect", bilinear (npvit.data.affine)
    RandomZoom(height_factor=0.2, width_factor=0.2)   training only, fill "reflect", bilinear (npvit.data.affine)

:class:`Augmenter` applies the same steps in the same order (plus the optional padded random crop and
TrivialAugment); inference applies the first two only. docs/augmentation.md gives the Keras 3 semantics each
function reproduces, with the source file of each, and where npvit deliberately differs.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import Any

import numpy

from ..backend import as_array, cached_constant, get_array_module, make_rng, to_numpy
from .fused import fused, grid
from .affine import (
    affine_resample,
    check_images,
    draw_angles,
    draw_zooms,
    factor_bounds,
    float_images,
    affine_resample_device,
    rotation_coefficients,
    rotation_matrices,
    rotation_reach,
    zoom_coefficients,
    zoom_matrices,
    zoom_reach,
)
from .trivial_augment import draw_trivial_augment, trivial_augment, trivial_augment_device

Array = Any
EPSILON = 1e-7  # keras.config.epsilon(): the floor of sqrt(variance) in Normalization


# ----------------------------------------------------------------------------------------------- helpers


# ---------------------------------------------------------------------------------------- normalization
def channel_stats(x: Array, chunk: int = 2048) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Per-channel mean and (population) variance of images ``x`` (N, H, W, C), as Keras' ``adapt``.

        mean_c = (1/M) sum x[..., c],   var_c = (1/M) sum (x[..., c] - mean_c)^2,   M = N H W

    Chunks of ``chunk`` images at a time, so a 50000x32x32x3 uint8 array never needs a float64 copy of
    the whole. One-byte integer images (uint8, int8) are counted into a 256-bin histogram per channel and
    the moments taken from it (exact sums, one pass); other dtypes take two float64 passes (mean, then
    squared deviations). Returns host float64 arrays of shape (C,).
    """
    xp = get_array_module(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"need a non-empty (N, ..., C) array, got shape {tuple(x.shape)}")
    c = x.shape[-1]
    if x.dtype.kind in "ui" and x.dtype.itemsize == 1:
        shift = 128 if x.dtype.kind == "i" else 0  # int8 values -128..127 -> bins 0..255
        counts = xp.zeros((c, 256), dtype=xp.int64)
        for i in range(0, x.shape[0], chunk):
            flat = x[i : i + chunk].reshape(-1, c)
            for ch in range(c):
                col = flat[:, ch] if not shift else flat[:, ch].astype(xp.int16) + shift
                counts[ch] += xp.bincount(col, minlength=256)
        counts = to_numpy(counts).astype(numpy.float64)
        values = numpy.arange(256.0) - shift
        n = counts.sum(axis=1)
        mean = counts @ values / n
        return mean, (counts * (values - mean[:, None]) ** 2).sum(axis=1) / n
    axes = tuple(range(x.ndim - 1))
    count = math.prod(x.shape[:-1])
    total = xp.zeros(c, dtype=xp.float64)
    for i in range(0, x.shape[0], chunk):
        total += x[i : i + chunk].sum(axis=axes, dtype=xp.float64)
    mean = total / count
    total = xp.zeros(c, dtype=xp.float64)
    for i in range(0, x.shape[0], chunk):
        d = x[i : i + chunk].astype(xp.float64) - mean
        total += (d * d).sum(axis=axes)
    return to_numpy(mean), to_numpy(total / count)


def normalize(x: Array, mean: Array, variance: Array, epsilon: float = EPSILON) -> Array:
    """Keras ``Normalization``: ``(x - mean) / max(sqrt(variance), epsilon)`` per channel (last axis).

    Works in ``x``'s float dtype (integer images become float32); mean and variance (C,) may live on either
    backend and are cast to that dtype first, as Keras casts them to the compute dtype.
    """
    x = float_images(x)
    xp = get_array_module(x)
    mean = as_array(xp, mean, dtype=x.dtype)
    std = xp.maximum(xp.sqrt(as_array(xp, variance, dtype=x.dtype)), x.dtype.type(epsilon))
    return (x - mean) / std


# --------------------------------------------------------------------------------------------- resizing
@lru_cache(maxsize=64)
def resize_taps(in_size: int, out_size: int) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """The two input pixels and the weight of the second, (j0, j1, f), for each of ``out_size`` outputs of a
    1-D bilinear resize with half-pixel centres and no antialiasing (host arrays, read-only: cached):

        u_i = clip((i + 1/2) in_size / out_size - 1/2, 0, in_size - 1),   j0 = floor(u_i),
        j1 = min(j0 + 1, in_size - 1),   f = u_i - j0,   out_i = in_j0 + f (in_j1 - in_j0)
    """
    u = numpy.clip((numpy.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0, in_size - 1)
    j0 = numpy.floor(u).astype(numpy.intp)
    j1 = numpy.minimum(j0 + 1, in_size - 1)
    f = u - j0
    for a in (j0, j1, f):
        a.flags.writeable = False
    return j0, j1, f


def _resize_axis(x: Array, axis: int, out_size: int) -> Array:
    """resize_taps along one axis of ``x``: two gathers and a linear interpolation, pixel by pixel."""
    xp = get_array_module(x)
    in_size = x.shape[axis]

    def tap(k: int, dtype: Any) -> Array:  # made once per size and dtype, and on a GPU moved there once
        return cached_constant(xp, ("resize_taps", in_size, out_size, k), lambda: resize_taps(in_size, out_size)[k],
                               dtype)

    j0, j1, f = tap(0, xp.intp), tap(1, xp.intp), tap(2, x.dtype)
    f = f.reshape((-1,) + (1,) * (x.ndim - 1 - axis % x.ndim))  # broadcasts along ``axis``
    lo = xp.take(x, j0, axis=axis)
    out = xp.take(x, j1, axis=axis)
    out -= lo
    out *= f
    out += lo
    return out


def resize_bilinear(x: Array, size: int | tuple[int, int]) -> Array:
    """Keras ``Resizing(h, w)`` (``jax.image.resize`` "bilinear", antialias off) of images (B, H, W, C).

    Separable: along the width, then along the height, each output pixel is ``in_j0 + f (in_j1 - in_j0)``
    with (j0, j1, f) from :func:`resize_taps` -- the same arithmetic for every pixel whatever the batch, so a
    slice of a batch is resized exactly as it is within the batch (a matrix product would let the BLAS or
    cuBLAS kernel, chosen by the batch size, change the rounding), and no TF32 on a GPU. Output dtype:
    ``x``'s float dtype (integer images become float32).
    """
    x = float_images(x)
    check_images(x)
    oh, ow = (size, size) if isinstance(size, int) else size
    _, h, w, _ = x.shape
    if (oh, ow) == (h, w):
        return x.copy()
    return _resize_axis(_resize_axis(x, 2, ow), 1, oh)


# ----------------------------------------------------------------------------------------------- flips
def draw_flips(batch: int, rng: Any, xp: Any = numpy) -> Array:
    """(batch,) booleans, ``U(0, 1) <= 0.5`` as Keras ``RandomFlip``: each image flipped with probability 1/2."""
    return as_array(xp, rng.random(batch)) <= 0.5


def flip_horizontal(x: Array, flips: Array) -> Array:
    """``y[b] = x[b, :, ::-1]`` where ``flips[b]``, else ``x[b]``."""
    xp = get_array_module(x)
    return xp.where(as_array(xp, flips, dtype=bool)[:, None, None, None], x[:, :, ::-1], x)


def random_flip(x: Array, rng: Any) -> Array:
    """Keras ``RandomFlip("horizontal")`` in training: mirror each image left-right with probability 1/2."""
    check_images(x)
    return flip_horizontal(x, draw_flips(x.shape[0], rng, get_array_module(x)))


# ------------------------------------------------------------------------------------------ random crop
def draw_crops(batch: int, padding: int, rng: Any, xp: Any = numpy) -> tuple[Array, Array]:
    """(dy, dx), each (batch,) integer offsets uniform over 0..2P (P = ``padding``), rows drawn before
    columns: ``d = min(floor(u (2P + 1)), 2P)`` with u in [0, 1) from ``rng.random``, on module ``xp``
    without a host read. (For u just below 1 the float64 product stays below the odd 2P + 1; the min keeps
    the offset in range whatever a generator's rounding.)"""
    n = 2 * padding + 1

    def offsets() -> Array:
        u = as_array(xp, rng.random(batch), dtype=xp.float64)
        if xp is not numpy:  # one kernel
            return fused(xp, "crop_offsets", n, lambda: lambda v: xp.minimum(xp.floor(v * n), n - 1).astype(xp.intp))(u)
        return xp.minimum(xp.floor(u * n), n - 1).astype(xp.intp)

    dy = offsets()
    return dy, offsets()


def crop_padded(x: Array, padding: int, dy: Array, dx: Array) -> Array:
    """Each image of ``x`` (B, H, W, C) padded with P zeros on all four sides and cropped back to H x W at
    its own offset (dy[b], dx[b]) in 0..2P:

        y[b, i, j, c] = xpad[b, dy_b + i, dx_b + j, c],   xpad[b, r, s, c] = x[b, r - P, s - P, c] inside, 0 outside

    so (dy, dx) = (P, P) gives the image back. Any dtype, kept (uint8 stays uint8). One gather of pixels for the
    whole batch from the padded batch seen as (B (H+2P) (W+2P), C) rows, at the flat indices
    ``b (H+2P)(W+2P) + (dy_b + i)(W+2P) + dx_b + j``: no loop over images, nothing read back from a device.
    """
    check_images(x)
    xp = get_array_module(x)
    b, h, w, c = x.shape
    if xp is not numpy:
        return _crop_device(x, padding, dy, dx)
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = xp.zeros((b, hp, wp, c), dtype=x.dtype)
    padded[:, padding : padding + h, padding : padding + w] = x
    dy, dx = as_array(xp, dy, dtype=xp.intp).reshape(-1), as_array(xp, dx, dtype=xp.intp).reshape(-1)
    if dy.shape != (b,) or dx.shape != (b,):
        raise ValueError(f"need one row and one column offset per image ({b}), got {dy.shape} and {dx.shape}")
    corner = xp.arange(b, dtype=xp.intp) * (hp * wp) + dy * wp + dx  # (B,): flat index of each crop's (0, 0)
    grid = xp.arange(h, dtype=xp.intp)[:, None] * wp + xp.arange(w, dtype=xp.intp)  # (H, W): offsets in a crop
    return xp.take(padded.reshape(b * hp * wp, c), corner[:, None, None] + grid, axis=0)


def _crop_device(x: Array, padding: int, dy: Array, dx: Array) -> Array:
    """crop_padded on CuPy in three kernels: each output pixel's source row of the batch (a zero row past it
    where the crop reads the padding), the batch with that row appended, one ``take``."""
    xp = get_array_module(x)
    b, h, w, c = x.shape
    dy, dx = xp.asarray(dy, dtype=xp.intp).reshape(-1), xp.asarray(dx, dtype=xp.intp).reshape(-1)
    if dy.shape != (b,) or dx.shape != (b,):
        raise ValueError(f"need one row and one column offset per image ({b}), got {dy.shape} and {dx.shape}")

    def make() -> Any:
        def f(i: Array, j: Array, n: Array, oy: Array, ox: Array) -> Array:
            r, s = i + oy - padding, j + ox - padding  # in the unpadded image
            inside = (r >= 0) & (r < h) & (s >= 0) & (s < w)
            return xp.where(inside, (n * h + r) * w + s, b * h * w)
        return f
    index = fused(xp, "crop_index", (b, h, w, padding), make)(
        grid(xp, h, 1, 3, xp.intp), grid(xp, w, 2, 3, xp.intp), grid(xp, b, 0, 3, xp.intp),
        dy.reshape(b, 1, 1), dx.reshape(b, 1, 1))  # (B, H, W)
    zero = cached_constant(xp, ("crop.zero_row", c), lambda: numpy.zeros((1, c)), x.dtype)
    return xp.take(xp.concatenate([x.reshape(b * h * w, c), zero]), index, axis=0)  # (B, H, W, C)


def preprocess_device(x: Array, mean: Array, variance: Array, size: tuple[int, int], flips: Array | None,
                      dtype: Any, epsilon: float = EPSILON) -> Array:
    """normalize, resize_bilinear and (with ``flips``) flip_horizontal of a batch on CuPy, the same pixels as
    those three in turn: one kernel at the same size; else one ``take`` of the four input pixels of each
    output pixel and one kernel that normalises them and interpolates them as the separable resize does
    (along the width, then along the height). A flipped image's output pixel (y, x) is the unflipped one's
    (y, W - 1 - x): the kernel reads reversed views of its inputs for it."""
    xp = get_array_module(x)
    n, h, w, c = x.shape
    dt = numpy.dtype(dtype)
    oh, ow = size
    mean, variance = as_array(xp, mean, dtype=dt), as_array(xp, variance, dtype=dt)
    eps = dt.type(epsilon)
    flip = None if flips is None else xp.asarray(flips, dtype=bool).reshape(n, 1, 1, 1)
    if (oh, ow) == (h, w):
        kernel = fused(xp, "normalize_flip", (dt.str, flip is None), lambda: _normalize(xp, dt, flip is not None))
        inputs = (x,) if flip is None else (x, x[:, :, ::-1], flip)
        return kernel(*inputs, mean, variance, eps)
    j0x, j1x, fx = resize_taps(w, ow)
    j0y, j1y, fy = resize_taps(h, oh)
    flat = cached_constant(xp, ("resize_corners", h, w, oh, ow), lambda: numpy.stack(
        [(jy * w)[:, None] + jx[None, :] for jy in (j0y, j1y) for jx in (j0x, j1x)]), numpy.intp)  # (4, oh, ow)
    taps = xp.take(x.reshape(n, h * w, c), flat, axis=1)  # (n, 4, oh, ow, C)
    corners = [taps[:, k] for k in range(4)]
    fx = cached_constant(xp, ("resize_fx", w, ow), lambda: fx.reshape(1, 1, ow, 1), dt)
    fy = cached_constant(xp, ("resize_fy", h, oh), lambda: fy.reshape(1, oh, 1, 1), dt)
    kernel = fused(xp, "normalize_resize_flip", (dt.str, flip is None), lambda: _resize(xp, dt, flip is not None))
    if flip is None:
        return kernel(*corners, fx, fy, mean, variance, eps)
    return kernel(*corners, *(v[:, :, ::-1] for v in corners), fx, fx[:, :, ::-1], flip, fy, mean, variance, eps)


def _normalize(xp: Any, dt: numpy.dtype, flipped: bool) -> Any:
    def f(*args: Array) -> Array:
        v, mean, variance, eps = args[0].astype(dt), *args[-3:]
        if flipped:
            v = xp.where(args[2], args[1].astype(dt), v)
        return (v - mean) / xp.maximum(xp.sqrt(variance), eps)
    return f


def _resize(xp: Any, dt: numpy.dtype, flipped: bool) -> Any:
    def blend(p: tuple[Array, ...], fx: Array, fy: Array, mean: Array, std: Array) -> Array:
        a, b, c, d = ((v.astype(dt) - mean) / std for v in p)  # normalised first, as the NumPy path
        top = (b - a) * fx + a  # along the width: rows j0 and j1 of the width pass
        bottom = (d - c) * fx + c
        return (bottom - top) * fy + top  # then along the height

    def f(*args: Array) -> Array:
        mean, variance, eps = args[-3:]
        std = xp.maximum(xp.sqrt(variance), eps)
        if not flipped:
            return blend(args[:4], args[4], args[5], mean, std)
        out = blend(args[:4], args[8], args[11], mean, std)
        return xp.where(args[10], blend(args[4:8], args[9], args[11], mean, std), out)
    return f


def random_crop(x: Array, padding: int, rng: Any) -> Array:
    """torchvision ``RandomCrop((H, W), padding=P)`` (fill 0) on every image: pad by P zeros, keep the H x W
    window at offsets drawn by :func:`draw_crops`."""
    check_images(x)
    dy, dx = draw_crops(x.shape[0], padding, rng, get_array_module(x))
    return crop_padded(x, padding, dy, dx)


# ------------------------------------------------------------------------------------------- pipeline
class Augmenter:
    """The Keras example's ``data_augmentation`` model: normalize -> resize -> [flip -> rotate -> zoom],
    with an optional [crop] of the raw images first (``crop_padding`` > 0; see the module's docstring), and
    optionally [TrivialAugment Wide] after it, still on the raw pixel values (``trivial_augment=True``;
    npvit.data.trivial_augment), on each image with probability ``trivial_augment_prob``.

    ``Augmenter(*channel_stats(x_train))`` reproduces it. Call it on a batch of uint8 or float images
    (B, h, w, C) of either backend: it returns ``dtype`` images (B, image_size, image_size, C) on the same
    backend. ``training=True`` adds the random steps; ``flip=False``, ``rotation=0`` or ``zoom=0`` drop one.
    ``rng`` is a NumPy or CuPy ``Generator`` (e.g. ``Backend.rng(seed)``); without one, training draws from
    a generator per backend seeded with ``seed``, kept across calls.

    Keyed per sample: the random parameters are drawn for a whole global batch of ``total`` images (default:
    this batch) and ``images`` receives rows [first, first + len(images)) of them. Processes that each take
    a disjoint slice of one global batch, with generators seeded alike, therefore augment exactly as a single
    process augmenting the whole batch does. The draws per step are (crop rows, crop columns) when
    ``crop_padding`` > 0, then (operations, bins, signs, and whether to augment when
    ``trivial_augment_prob`` < 1) with ``trivial_augment``, then (flips, angles,
    height zooms, width zooms), ``total`` values each, in that order; ``crop_padding=0`` and
    ``trivial_augment=False`` draw and change nothing, so the Keras pipeline is the same bit for bit.
    """

    def __init__(
        self,
        mean: Array,
        variance: Array,
        image_size: int = 72,
        flip: bool = True,
        rotation: float = 0.02,
        zoom: float = 0.2,
        dtype: str = "float32",
        seed: int | None = None,
        crop_padding: int = 0,
        trivial_augment: bool = False,
        trivial_augment_prob: float = 1.0,
    ) -> None:
        self.mean = numpy.asarray(to_numpy(mean), dtype=numpy.float64).reshape(-1)
        self.variance = numpy.asarray(to_numpy(variance), dtype=numpy.float64).reshape(-1)
        if self.mean.shape != self.variance.shape:
            raise ValueError(f"mean {self.mean.shape} and variance {self.variance.shape} must match")
        self.image_size = int(image_size)
        self.flip = bool(flip)
        self.rotation = rotation
        self.zoom = zoom
        self.dtype = numpy.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a float dtype, got {dtype!r}")
        self.seed = seed
        factor_bounds(rotation, "rotation")
        factor_bounds(zoom, "zoom")
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, numbers.Integral) or crop_padding < 0:
            raise ValueError(f"crop_padding must be a non-negative integer (pixels), got {crop_padding!r}")
        self.crop_padding = int(crop_padding)
        self.trivial_augment = bool(trivial_augment)
        if not 0.0 <= trivial_augment_prob <= 1.0:
            raise ValueError(f"trivial_augment_prob must be in [0, 1], got {trivial_augment_prob!r}")
        self.trivial_augment_prob = float(trivial_augment_prob)
        self._stats: dict[str, tuple[Array, Array]] = {}
        self._rngs: dict[str, Any] = {}

    def _moments(self, xp: Any) -> tuple[Array, Array]:
        """mean and variance as ``dtype`` arrays of ``xp``, moved there once."""
        if xp.__name__ not in self._stats:
            self._stats[xp.__name__] = (as_array(xp, self.mean, self.dtype), as_array(xp, self.variance, self.dtype))
        return self._stats[xp.__name__]

    def _default_rng(self, xp: Any) -> Any:
        if xp.__name__ not in self._rngs:
            self._rngs[xp.__name__] = make_rng(xp, self.seed)
        return self._rngs[xp.__name__]

    def __call__(
        self, images: Array, training: bool, rng: Any = None, first: int = 0, total: int | None = None
    ) -> Array:
        xp = get_array_module(images)
        check_images(images)
        if images.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"images have {images.shape[-1]} channels, the statistics {self.mean.shape[0]}")
        batch = images.shape[0]
        total = batch if total is None else total
        if not (isinstance(first, numbers.Integral) and isinstance(total, numbers.Integral)
                and 0 <= first and first + batch <= total):
            raise ValueError(f"images must be rows [first, first + {batch}) of a global batch of total images, "
                             f"got first={first!r}, total={total!r}")
        rows = slice(first, first + batch)
        if xp is not numpy:
            return self._device(images, training, rng, rows, total)
        if training:
            rng = self._default_rng(xp) if rng is None else rng
            if self.crop_padding:  # on the raw images: zeros are black, as torchvision pads
                dy, dx = draw_crops(total, self.crop_padding, rng, xp)
                images = crop_padded(images, self.crop_padding, dy[rows], dx[rows])
            if self.trivial_augment:  # on the raw pixel values too: its operations are defined on [0, 255]
                ops, bins, signs = draw_trivial_augment(total, rng, xp, self.trivial_augment_prob)
                images = trivial_augment(images, ops[rows], bins[rows], signs[rows], self.dtype)
        x = normalize(images.astype(self.dtype, copy=False), *self._moments(xp))
        x = resize_bilinear(x, self.image_size)
        if not training:
            return x
        size = self.image_size
        if self.flip:
            x = flip_horizontal(x, draw_flips(total, rng, xp)[rows])
        if factor_bounds(self.rotation, "rotation") != (0.0, 0.0):
            angles = draw_angles(total, self.rotation, rng, xp)[rows]
            x = affine_resample(x, rotation_matrices(angles, size, size), rotation_reach(self.rotation, size, size))
        if factor_bounds(self.zoom, "zoom") != (0.0, 0.0):
            zy, zx = draw_zooms(total, self.zoom, self.zoom, rng, xp)
            x = affine_resample(x, zoom_matrices(zy[rows], zx[rows], size, size),
                                zoom_reach(self.zoom, self.zoom, size, size))
        return x

    def _device(self, images: Array, training: bool, rng: Any, rows: slice, total: int) -> Array:
        """__call__ on CuPy: the same draws in the same order and the same pixels, in few kernels -- the crop
        inside TrivialAugment's gather, normalisation, resize and flip in one gather and one kernel, rotation
        and zoom in four kernels each (npvit.data.fused)."""
        xp = get_array_module(images)
        size = self.image_size
        flips = None
        if training:
            rng = self._default_rng(xp) if rng is None else rng
            crop = None
            if self.crop_padding:
                dy, dx = draw_crops(total, self.crop_padding, rng, xp)
                crop = (self.crop_padding, dy[rows], dx[rows])
            if self.trivial_augment:
                ops, bins, signs = draw_trivial_augment(total, rng, xp, self.trivial_augment_prob)
                images = trivial_augment_device(images, ops[rows], bins[rows], signs[rows], self.dtype, crop)
            elif crop is not None:
                images = crop_padded(images, *crop)
            if self.flip:
                flips = draw_flips(total, rng, xp)[rows]
        x = preprocess_device(images, *self._moments(xp), (size, size), flips, self.dtype)
        if not training:
            return x
        if factor_bounds(self.rotation, "rotation") != (0.0, 0.0):
            angles = draw_angles(total, self.rotation, rng, xp)[rows]
            x = affine_resample_device(x, rotation_coefficients(angles, size, size),
                                       rotation_reach(self.rotation, size, size))
        if factor_bounds(self.zoom, "zoom") != (0.0, 0.0):
            zy, zx = draw_zooms(total, self.zoom, self.zoom, rng, xp)
            x = affine_resample_device(x, zoom_coefficients(zy[rows], zx[rows], size, size),
                                       zoom_reach(self.zoom, self.zoom, size, size))
        return x

    def __repr__(self) -> str:
        return (
            f"Augmenter(image_size={self.image_size}, flip={self.flip}, rotation={self.rotation}, "
            f"zoom={self.zoom}, crop_padding={self.crop_padding}, trivial_augment={self.trivial_augment}, "
            f"trivial_augment_prob={self.trivial_augment_prob}, dtype={self.dtype.name!r}, "
            f"channels={self.mean.shape[0]})"
        )
