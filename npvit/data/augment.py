"""Preprocessing and data augmentation of the Keras ViT example, vectorised over the batch.

The Keras example puts this ``keras.Sequential`` at the front of the model, so it runs on every batch:

    Normalization()                                   adapt(x_train): per-channel mean and variance
    Resizing(72, 72)                                  bilinear, half-pixel centres, no antialiasing
    RandomFlip("horizontal")                          training only
    RandomRotation(factor=0.02)                       training only, fill "reflect", bilinear
    RandomZoom(height_factor=0.2, width_factor=0.2)   training only, fill "reflect", bilinear

:class:`Augmenter` applies the same steps in the same order; inference applies the first two only. Pixel
coordinates below are array indices: pixel (y, x) has its centre at (y, x), the image spans [-0.5, n - 0.5].

Keras 3 semantics reproduced (sources in keras-team/keras, ``keras/src/...``):

* ``layers/preprocessing/normalization.py``: ``adapt`` on a NumPy array takes ``np.mean`` / ``np.var``
  (population variance) over every axis but the last; ``call`` returns
  ``(x - mean) / maximum(sqrt(variance), epsilon)`` with ``epsilon = keras.config.epsilon() = 1e-7``, in the
  compute dtype (float32). :func:`channel_stats` and :func:`normalize`.
* ``layers/preprocessing/image_preprocessing/resizing.py`` calls ``backend.image.resize`` with its defaults
  (``interpolation="bilinear"``, ``crop_to_aspect_ratio=False``, ``pad_to_aspect_ratio=False``, and no
  ``antialias`` argument, so ``antialias=False``); the JAX backend (``backend/jax/image.py``) calls
  ``jax.image.resize(method="bilinear")``: output pixel i samples input coordinate
  ``u = (i + 0.5) * n_in / n_out - 0.5`` with the triangle kernel, weights renormalised over the pixels
  that exist, which for a linear kernel is the same as clamping u to [0, n_in - 1]. :func:`resize_bilinear`.
* ``random_flip.py``: ``flip = uniform(0, 1) <= 0.5`` per image; mode "horizontal" reverses the width
  axis. :func:`random_flip`.
* ``random_rotation.py`` (+ ``base_image_preprocessing_layer.py`` ``_compute_affine_matrix``): a float
  factor f gives bounds (-|f|, |f|); per image an angle theta ~ U(-f, f) * 2 pi (the current source draws
  U(-360 f, 360 f) degrees and converts: the same distribution); the transform maps each *output* pixel
  (x, y) to the *input* point

      x_in = cos(theta) x - sin(theta) y + cx - cx cos(theta) + cy sin(theta)
      y_in = sin(theta) x + cos(theta) y + cy - cx sin(theta) - cy cos(theta),   cx = (W-1)/2, cy = (H-1)/2

  i.e. a rotation about the image centre; positive theta turns the content counter-clockwise as displayed
  (theta = pi/2 is ``np.rot90``). :func:`rotation_matrices`, :func:`random_rotation`.
* ``random_zoom.py``: a float factor f gives (-|f|, |f|); per image ``height_zoom ~ U(1 - f, 1 + f)`` and
  then ``width_zoom ~ U(1 - f_w, 1 + f_w)`` (independently; ``width_factor=None`` reuses the height zoom);
  the transform ``x_in = zx x + (W-1)/2 (1 - zx)``, ``y_in = zy y + (H-1)/2 (1 - zy)`` scales about the
  centre, so z > 1 (a positive factor) zooms out and z < 1 zooms in. :func:`zoom_matrices`,
  :func:`random_zoom`.
* ``backend/{jax,numpy}/image.py`` ``affine_transform``: for each output index (y, x) the input point
  above is sampled with ``map_coordinates(order=1)`` (bilinear between the four integer neighbours
  floor(.), floor(.) + 1), the channel index unchanged. ``fill_mode="reflect"`` is ``(d c b a | a b c d |
  d c b a)``: neighbour index -1 reads pixel 0, -2 reads pixel 1, n reads n - 1 (SciPy/JAX ``mode="reflect"``;
  the NumPy backend gets the same values by ``np.pad(mode="symmetric")`` before SciPy). :func:`affine_resample`
  implements that mode, the only one the example uses.
* Rotation and zoom are separate layers, hence two separate bilinear resamplings (flip, rotate, zoom), each
  with its own random draw per image.

Beyond the example, an optional random crop with padding (``Augmenter(crop_padding=P)``, off by default), the
standard CIFAR augmentation of torchvision's and timm's recipes, ``RandomCrop(32, padding=4)``: each image is
padded by P pixels on every side and an H x W window at a random offset (dy, dx), each uniform over 0..2P, is
kept. :func:`draw_crops`, :func:`crop_padded`, :func:`random_crop`. Where and with what it fills:

* It runs first of the random steps, on the raw images at the dataset's native resolution, before
  normalisation and the resize: a shift of P pixels of the 32x32 image, as those recipes have it (after the
  resize it would be a shift of P/32 of the 72x72 input, a different augmentation), and cheapest there
  (one-byte pixels, a quarter of the 72x72 area).
* The padding is zeros of the raw image -- black -- which the normalisation then maps to (0 - mean) / std
  per channel: torchvision's ``RandomCrop(padding=4)`` pads with ``fill=0`` before ``Normalize``, so the
  accuracies those recipes report were reached with this fill. (Zeros after normalisation would be the
  mean colour; "reflect" would invent content at the border.)
* Crop and flip commute in distribution (the offsets are symmetric), so the order against flip changes
  nothing; rotation and zoom then act on the cropped, resized image.

Deliberate differences: random numbers come from a NumPy/CuPy ``Generator`` (``rng.random``), not Keras'
seed generators, so the draws differ from Keras' for the same seed (the distributions are the same);
matrices are built in float64 and sampling coordinates are computed in the image dtype (Keras builds float32
matrices). Keras' torch backend (``backend/torch/image.py``, ``_reflect_index_fixer``) reads neighbours past
the edge with the same (d c b a | a b c d | d c b a) indices as the JAX and NumPy backends, so all three agree.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import Any

import numpy

from ..backend import as_array, cached_constant, get_array_module, make_rng, to_numpy
from .trivial_augment import draw_trivial_augment, trivial_augment

Array = Any
EPSILON = 1e-7  # keras.config.epsilon(): the floor of sqrt(variance) in Normalization


# ----------------------------------------------------------------------------------------------- helpers
def _float(x: Array) -> Array:
    """``x`` itself if it is floating point, else a float32 copy (Keras' compute dtype)."""
    xp = get_array_module(x)
    return x if xp.issubdtype(x.dtype, xp.floating) else x.astype(xp.float32)


def _bounds(factor: float | tuple[float, float], name: str) -> tuple[float, float]:
    """Keras' ``_set_factor``: f -> (-|f|, |f|); (a, b) -> sorted; every value must lie in [-1, 1]."""
    lo, hi = (-abs(factor), abs(factor)) if isinstance(factor, (int, float)) else sorted(factor)
    if not -1.0 <= lo <= hi <= 1.0:
        raise ValueError(f"{name} must be a number or a pair of numbers in [-1, 1], got {factor!r}")
    return float(lo), float(hi)


def _uniform(rng: Any, low: float, high: float, size: int, xp: Any) -> Array:
    """``size`` draws of U(low, high) as float64 on module ``xp``, from ``rng.random`` alone."""
    u = as_array(xp, rng.random(size), dtype=xp.float64)
    return low + (high - low) * u


def _check_images(x: Array) -> None:
    if x.ndim != 4:
        raise ValueError(f"images must have shape (batch, height, width, channels), got {tuple(x.shape)}")


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
    x = _float(x)
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
    x = _float(x)
    _check_images(x)
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
    _check_images(x)
    return flip_horizontal(x, draw_flips(x.shape[0], rng, get_array_module(x)))


# ------------------------------------------------------------------------------------------ random crop
def draw_crops(batch: int, padding: int, rng: Any, xp: Any = numpy) -> tuple[Array, Array]:
    """(dy, dx), each (batch,) integer offsets uniform over 0..2P (P = ``padding``), rows drawn before
    columns: ``d = min(floor(u (2P + 1)), 2P)`` with u in [0, 1) from ``rng.random``, on module ``xp``
    without a host read. (For u just below 1 the float64 product stays below the odd 2P + 1; the min keeps
    the offset in range whatever a generator's rounding.)"""
    n = 2 * padding + 1

    def offsets() -> Array:
        d = xp.floor(as_array(xp, rng.random(batch), dtype=xp.float64) * n)
        return xp.minimum(d, n - 1).astype(xp.intp)

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
    _check_images(x)
    xp = get_array_module(x)
    b, h, w, c = x.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = xp.zeros((b, hp, wp, c), dtype=x.dtype)
    padded[:, padding : padding + h, padding : padding + w] = x
    dy, dx = as_array(xp, dy, dtype=xp.intp).reshape(-1), as_array(xp, dx, dtype=xp.intp).reshape(-1)
    if dy.shape != (b,) or dx.shape != (b,):
        raise ValueError(f"need one row and one column offset per image ({b}), got {dy.shape} and {dx.shape}")
    corner = xp.arange(b, dtype=xp.intp) * (hp * wp) + dy * wp + dx  # (B,): flat index of each crop's (0, 0)
    grid = xp.arange(h, dtype=xp.intp)[:, None] * wp + xp.arange(w, dtype=xp.intp)  # (H, W): offsets in a crop
    return xp.take(padded.reshape(b * hp * wp, c), corner[:, None, None] + grid, axis=0)


def random_crop(x: Array, padding: int, rng: Any) -> Array:
    """torchvision ``RandomCrop((H, W), padding=P)`` (fill 0) on every image: pad by P zeros, keep the H x W
    window at offsets drawn by :func:`draw_crops`."""
    _check_images(x)
    dy, dx = draw_crops(x.shape[0], padding, rng, get_array_module(x))
    return crop_padded(x, padding, dy, dx)


# ------------------------------------------------------------------------------------ affine resampling
def rotation_matrices(angles: Array, height: int, width: int) -> Array:
    """(B, 3, 3) float64 output-to-input transforms rotating by ``angles`` (radians) about the centre.

        [[cos, -sin, cx - cx cos + cy sin],
         [sin,  cos, cy - cx sin - cy cos],     cx = (width - 1)/2, cy = (height - 1)/2
         [0,    0,   1]]

    acting on (x, y, 1). Keras ``RandomRotation``'s matrix; on the angles' backend.
    """
    xp = get_array_module(angles)
    t = xp.asarray(angles, dtype=xp.float64).reshape(-1)
    c, s = xp.cos(t), xp.sin(t)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    m = xp.zeros((t.shape[0], 3, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = c, -s, cx - cx * c + cy * s
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = s, c, cy - cx * s - cy * c
    m[:, 2, 2] = 1.0
    return m


def zoom_matrices(height_zoom: Array, width_zoom: Array, height: int, width: int) -> Array:
    """(B, 3, 3) float64 output-to-input transforms scaling about the centre (Keras ``RandomZoom``).

        [[zx, 0,  (width - 1)/2 (1 - zx)],
         [0,  zy, (height - 1)/2 (1 - zy)],      zx = width_zoom, zy = height_zoom; z > 1 zooms out
         [0,  0,  1]]
    """
    xp = get_array_module(height_zoom, width_zoom)
    zy = as_array(xp, height_zoom, dtype=xp.float64).reshape(-1)
    zx = as_array(xp, width_zoom, dtype=xp.float64).reshape(-1)
    m = xp.zeros((zy.shape[0], 3, 3))
    m[:, 0, 0], m[:, 0, 2] = zx, (width - 1) / 2.0 * (1.0 - zx)
    m[:, 1, 1], m[:, 1, 2] = zy, (height - 1) / 2.0 * (1.0 - zy)
    m[:, 2, 2] = 1.0
    return m


def _reflect_index(i: Array, n: int) -> Array:
    """Map integer indices ``i`` (any range) into [0, n) as "reflect" does: (d c b a | a b c d | d c b a),
    period 2n."""
    m = i % (2 * n)
    return get_array_module(i).where(m >= n, 2 * n - 1 - m, m)


def _node_range(u: Array, n: int, reach: float | None) -> tuple[Array, Array, int, int]:
    """(u, floor(u), lowest node, highest node) of the sample coordinates ``u`` along an axis of ``n`` pixels,
    with u folded into [-1/2, 2n - 1/2) first if it may stray beyond [-n, 2n] (the reflected extension of the
    samples has period 2n, so folding keeps every bilinear value, up to rounding).

    ``reach``, a host-side bound on |u - (n - 1)/2|, decides the folding when given: then it is the same for
    every batch and every slice of one, whatever the images' draws. Without it, NumPy reads the range from the
    coordinates and a device folds always (reading them would be a blocking copy to the host). The padding
    is then the exact range on NumPy (free on the host), and on a device the range the bound or the folding
    guarantees.
    """
    xp = get_array_module(u)
    if reach is not None:
        centre = (n - 1) / 2.0
        lo, hi = math.floor(centre - reach) - 1, math.floor(centre + reach) + 2  # a node of margin for rounding
    elif xp is numpy:
        u0 = xp.floor(u)
        lo, hi = int(u0.min()), int(u0.max()) + 1
    else:
        lo, hi = -n - 1, 2 * n + 1
    fold = lo < -n or hi > 2 * n
    if fold:
        u = (u + 0.5) % (2 * n) - 0.5
    u0 = xp.floor(u)
    if xp is numpy:
        lo, hi = int(u0.min()), int(u0.max()) + 1
    elif fold:
        lo, hi = -1, 2 * n
    return u, u0, lo, hi


def affine_resample(x: Array, matrices: Array, reach: tuple[float, float] | None = None) -> Array:
    """Bilinear resampling of each image by its own affine transform (Keras ``ops.image.affine_transform``
    with ``interpolation="bilinear"`` and ``fill_mode="reflect"``, the two the Keras example uses).

    ``matrices`` (B, 2, 3) or (B, 3, 3) (last row ignored: affine only), or one (2, 3)/(3, 3) for all,
    maps each output pixel (x, y) to the input point

        x_in = m00 x + m01 y + m02,   y_in = m10 x + m11 y + m12

    and, with x0 = floor(x_in), y0 = floor(y_in), fx = x_in - x0, fy = y_in - y0,

        out = (1-fy) [(1-fx) I(y0, x0) + fx I(y0, x0+1)] + fy [(1-fx) I(y0+1, x0) + fx I(y0+1, x0+1)]

    where I(r, c) reads neighbours outside the image by reflection, (d c b a | a b c d | d c b a): SciPy's and
    JAX's ``map_coordinates`` mode "reflect" with order=1.

    ``reach`` = (ry, rx), optional: host-side bounds on |y_in - (H-1)/2| and |x_in - (W-1)/2| over all output
    pixels (random_rotation, random_zoom and the Augmenter know them from their factors). They decide whether
    coordinates need folding into one period of the reflection, the same way for a batch and for any slice of
    it, and on a GPU they size the padding below without reading the coordinates back to the host. Without
    them NumPy decides from the coordinates, and a GPU folds always (correct, but it pads more).

    All images at once: the coordinates are computed for the whole batch in ``x``'s float dtype; the batch
    is padded by reflection just enough to hold every neighbour (two small gathers along the height and
    width axes, as Keras' NumPy backend pads before ``map_coordinates``), after which the four neighbours
    of every output pixel are plain gathers at fixed offsets, one channel plane at a time, with no
    per-pixel boundary logic. (Two to 2.5 times faster than ``scipy.ndimage``, which cannot take one transform
    per image in a call: benchmarks/NOTES.md, "Augmentation: the hand-written resampler against scipy.ndimage".)
    """
    x = _float(x)
    _check_images(x)
    xp = get_array_module(x)
    b, h, w, c = x.shape
    m = as_array(xp, matrices, dtype=x.dtype)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1:] not in ((2, 3), (3, 3)) or m.shape[0] not in (1, b):
        raise ValueError(f"matrices must have shape ({b}, 2, 3) or ({b}, 3, 3), got {tuple(m.shape)}")
    m = m[:, :2, :, None, None]  # (B|1, 2, 3, 1, 1): broadcasts against the (H, W) grid
    ys = xp.arange(h, dtype=x.dtype)[:, None]
    xs = xp.arange(w, dtype=x.dtype)[None, :]
    x_in = xp.broadcast_to(m[:, 0, 0] * xs + m[:, 0, 1] * ys + m[:, 0, 2], (b, h, w))
    y_in = xp.broadcast_to(m[:, 1, 0] * xs + m[:, 1, 1] * ys + m[:, 1, 2], (b, h, w))
    reach_y, reach_x = (None, None) if reach is None else reach
    x_in, x0, lo_x, hi_x = _node_range(x_in, w, reach_x)
    y_in, y0, lo_y, hi_y = _node_range(y_in, h, reach_y)
    fx = x_in - x0
    fy = y_in - y0

    # Padded planes P[c, :, r, s] = I(lo_y + r, lo_x + s, c) for every node the samples touch, channels
    # first: gathering single floats from each plane is several times faster than gathering pixels.
    rows = _reflect_index(xp.arange(lo_y, hi_y + 1), h)
    cols = _reflect_index(xp.arange(lo_x, hi_x + 1), w)
    planes = xp.take(xp.take(x.transpose(3, 0, 1, 2), rows, axis=2), cols, axis=3)  # (C, B, Hp, Wp)
    hp, wp = planes.shape[2:]
    planes = planes.reshape(c, b * hp * wp)

    # Flat index of each top-left neighbour; the others are at +1 (right), +wp (below), +wp+1.
    i00 = y0.astype(xp.intp)
    i00 *= wp
    i00 += x0.astype(xp.intp)
    i00 += (xp.arange(b, dtype=xp.intp) * (hp * wp) - (lo_y * wp + lo_x))[:, None, None]
    out = xp.empty((b, h, w, c), dtype=x.dtype)
    for ch in range(c):
        p = planes[ch]  # taking from the shifted views p[k:] reads p[i00 + k], no new index arrays
        top, right = xp.take(p, i00), xp.take(p[1:], i00)
        right -= top  # top + fx (right - top), in place to spare temporaries
        right *= fx
        top += right
        bottom, right = xp.take(p[wp:], i00), xp.take(p[wp + 1 :], i00)
        right -= bottom
        right *= fx
        bottom += right
        bottom -= top  # top + fy (bottom - top)
        bottom *= fy
        out[..., ch] = bottom
        out[..., ch] += top
    return out


def rotation_reach(factor: float | tuple[float, float], height: int, width: int) -> tuple[float, float]:
    """Bounds (ry, rx) on how far a rotation by U(lo, hi) * 2 pi turns (see draw_angles) moves any output
    pixel's input point from the centre, per axis: with s = max |sin theta| <= min(1, max |theta|) and
    |cos theta| <= 1, |y_in - cy| <= s cx + cy and |x_in - cx| <= cx + s cy. For affine_resample's ``reach``."""
    lo, hi = _bounds(factor, "factor")
    s = min(1.0, 2.0 * math.pi * max(abs(lo), abs(hi)))
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    return s * cx + cy, cx + s * cy


def zoom_reach(
    height_factor: float | tuple[float, float], width_factor: float | tuple[float, float] | None,
    height: int, width: int,
) -> tuple[float, float]:
    """Bounds (ry, rx) for a zoom by 1 + U(lo, hi) per axis (see draw_zooms): |y_in - cy| = zy |y - cy| <=
    max |zy| cy, and the same across. For affine_resample's ``reach``."""
    def largest(factor: float | tuple[float, float], name: str) -> float:
        lo, hi = _bounds(factor, name)
        return max(abs(1.0 + lo), abs(1.0 + hi))

    zy = largest(height_factor, "height_factor")
    zx = zy if width_factor is None else largest(width_factor, "width_factor")
    return zy * (height - 1) / 2.0, zx * (width - 1) / 2.0


# -------------------------------------------------------------------------------------- rotation, zoom
def draw_angles(batch: int, factor: float | tuple[float, float], rng: Any, xp: Any = numpy) -> Array:
    """(batch,) float64 angles in radians, U(lo, hi) * 2 pi with (lo, hi) the bounds of Keras ``factor``."""
    lo, hi = _bounds(factor, "factor")
    return _uniform(rng, lo * 2.0 * math.pi, hi * 2.0 * math.pi, batch, xp)


def draw_zooms(
    batch: int,
    height_factor: float | tuple[float, float],
    width_factor: float | tuple[float, float] | None,
    rng: Any,
    xp: Any = numpy,
) -> tuple[Array, Array]:
    """(height_zoom, width_zoom), each (batch,) float64: 1 + U(lo, hi); the width one drawn after the
    height one, or equal to it when ``width_factor`` is None (Keras ``RandomZoom``)."""
    lo, hi = _bounds(height_factor, "height_factor")
    zy = _uniform(rng, 1.0 + lo, 1.0 + hi, batch, xp)
    if width_factor is None:
        return zy, zy
    lo, hi = _bounds(width_factor, "width_factor")
    return zy, _uniform(rng, 1.0 + lo, 1.0 + hi, batch, xp)


def random_rotation(x: Array, factor: float | tuple[float, float], rng: Any) -> Array:
    """Keras ``RandomRotation(factor)`` in training: each image turned by its own angle
    theta ~ U(-factor, factor) * 2 pi about its centre, bilinear, reflected outside."""
    _check_images(x)
    _, h, w, _ = x.shape
    angles = draw_angles(x.shape[0], factor, rng, get_array_module(x))
    return affine_resample(x, rotation_matrices(angles, h, w), rotation_reach(factor, h, w))


def random_zoom(
    x: Array,
    height_factor: float | tuple[float, float],
    width_factor: float | tuple[float, float] | None,
    rng: Any,
) -> Array:
    """Keras ``RandomZoom(height_factor, width_factor)`` in training: each image scaled about its centre by
    zy = 1 + U(-height_factor, height_factor) vertically and zx = 1 + U(-width_factor, width_factor)
    horizontally (z > 1 zooms out), bilinear, reflected outside."""
    _check_images(x)
    _, h, w, _ = x.shape
    zy, zx = draw_zooms(x.shape[0], height_factor, width_factor, rng, get_array_module(x))
    return affine_resample(x, zoom_matrices(zy, zx, h, w), zoom_reach(height_factor, width_factor, h, w))


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
        _bounds(rotation, "rotation")
        _bounds(zoom, "zoom")
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
        _check_images(images)
        if images.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"images have {images.shape[-1]} channels, the statistics {self.mean.shape[0]}")
        batch = images.shape[0]
        total = batch if total is None else total
        if not (isinstance(first, numbers.Integral) and isinstance(total, numbers.Integral)
                and 0 <= first and first + batch <= total):
            raise ValueError(f"images must be rows [first, first + {batch}) of a global batch of total images, "
                             f"got first={first!r}, total={total!r}")
        rows = slice(first, first + batch)
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
        if _bounds(self.rotation, "rotation") != (0.0, 0.0):
            angles = draw_angles(total, self.rotation, rng, xp)[rows]
            x = affine_resample(x, rotation_matrices(angles, size, size), rotation_reach(self.rotation, size, size))
        if _bounds(self.zoom, "zoom") != (0.0, 0.0):
            zy, zx = draw_zooms(total, self.zoom, self.zoom, rng, xp)
            x = affine_resample(x, zoom_matrices(zy[rows], zx[rows], size, size),
                                zoom_reach(self.zoom, self.zoom, size, size))
        return x

    def __repr__(self) -> str:
        return (
            f"Augmenter(image_size={self.image_size}, flip={self.flip}, rotation={self.rotation}, "
            f"zoom={self.zoom}, crop_padding={self.crop_padding}, trivial_augment={self.trivial_augment}, "
            f"trivial_augment_prob={self.trivial_augment_prob}, dtype={self.dtype.name!r}, "
            f"channels={self.mean.shape[0]})"
        )
