"""Random rotation and zoom as Keras does them: an affine map per image, sampled bilinearly with "reflect" fill.

Each *output* pixel (x, y) reads the *input* point A (x, y, 1): a rotation about the image centre, or a scale
about it; bilinear between the four integer neighbours, neighbours past the edge read as (d c b a | a b c d |
d c b a). docs/augmentation.md has the Keras sources and the formulas.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy

from ..backend import as_array, cached_constant, get_array_module
from .fused import fused, grid

Array = Any


def float_images(x: Array) -> Array:
    """``x`` itself if it is floating point, else a float32 copy (Keras' compute dtype)."""
    xp = get_array_module(x)
    return x if xp.issubdtype(x.dtype, xp.floating) else x.astype(xp.float32)


def check_images(x: Array) -> None:
    if x.ndim != 4:
        raise ValueError(f"images must have shape (batch, height, width, channels), got {tuple(x.shape)}")


def factor_bounds(factor: float | tuple[float, float], name: str) -> tuple[float, float]:
    """Keras' ``_set_factor``: f -> (-|f|, |f|); (a, b) -> sorted; every value must lie in [-1, 1]."""
    lo, hi = (-abs(factor), abs(factor)) if isinstance(factor, (int, float)) else sorted(factor)
    if not -1.0 <= lo <= hi <= 1.0:
        raise ValueError(f"{name} must be a number or a pair of numbers in [-1, 1], got {factor!r}")
    return float(lo), float(hi)


def _uniform(rng: Any, low: float, high: float, size: int, xp: Any) -> Array:
    """``size`` draws of U(low, high) as float64 on module ``xp``, from ``rng.random`` alone."""
    u = as_array(xp, rng.random(size), dtype=xp.float64)
    return low + (high - low) * u


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
    x = float_images(x)
    check_images(x)
    xp = get_array_module(x)
    b, h, w, c = x.shape
    m = as_array(xp, matrices, dtype=x.dtype if xp is numpy else None)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1:] not in ((2, 3), (3, 3)) or m.shape[0] not in (1, b):
        raise ValueError(f"matrices must have shape ({b}, 2, 3) or ({b}, 3, 3), got {tuple(m.shape)}")
    if xp is not numpy:
        return affine_resample_device(x, tuple(m[:, i, j] for i in range(2) for j in range(3)), reach)
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


def affine_resample_device(x: Array, coefficients: tuple[Array, ...],
                           reach: tuple[float, float] | None = None) -> Array:
    """affine_resample on CuPy in three kernels: the flat indices of every output pixel's four neighbours
    (reflected into the image), one ``take`` of them, and the bilinear blend -- the NumPy path's arithmetic,
    operation for operation, in ``x``'s float dtype. ``coefficients``: the six (B,) or (1,) arrays m00, m01,
    m02, m10, m11, m12 of any float dtype (cast to ``x``'s, as the matrices are)."""
    xp = get_array_module(x)
    b, h, w, c = x.shape
    dt = x.dtype
    reach_y, reach_x = (None, None) if reach is None else reach
    fold = (_folds(w, reach_x), _folds(h, reach_y))
    m = [xp.asarray(a).reshape(-1, 1, 1) for a in coefficients]  # (B|1, 1, 1) each
    xs, ys = grid(xp, w, 2, 3, dt), grid(xp, h, 1, 3, dt)
    corner = cached_constant(xp, "affine.corners", lambda: numpy.arange(4).reshape(4, 1, 1, 1), numpy.intp)
    index = fused(xp, "affine_neighbours", (dt.str, h, w, fold), lambda: _neighbours(xp, dt, h, w, fold))
    taps = xp.take(x.reshape(b * h * w, c), index(corner, grid(xp, b, 1, 4, numpy.intp), xs, ys, *m), axis=0)
    blend = fused(xp, "affine_blend", (dt.str, h, w, fold), lambda: _blend(xp, dt, h, w, fold))
    return blend(*(taps[k] for k in range(4)), xs[..., None], ys[..., None], *(a[..., None] for a in m))


def _folds(n: int, reach: float | None) -> bool:
    """Whether _node_range folds the coordinates along an axis of n pixels on a device (always without reach)."""
    if reach is None:
        return True
    centre = (n - 1) / 2.0
    return math.floor(centre - reach) - 1 < -n or math.floor(centre + reach) + 2 > 2 * n


def _coordinates(xp: Any, dt: Any, h: int, w: int, fold: tuple[bool, bool], xs: Array, ys: Array,
                 m: tuple[Array, ...]) -> tuple[Array, Array, Array, Array]:
    """(x_in, floor(x_in), y_in, floor(y_in)) as affine_resample computes them (inside a fused kernel)."""
    m = [a.astype(dt) for a in m]
    x_in = m[0] * xs + m[1] * ys + m[2]
    y_in = m[3] * xs + m[4] * ys + m[5]
    if fold[0]:
        x_in = (x_in + 0.5) % (2 * w) - 0.5
    if fold[1]:
        y_in = (y_in + 0.5) % (2 * h) - 0.5
    return x_in, xp.floor(x_in), y_in, xp.floor(y_in)


def _neighbours(xp: Any, dt: Any, h: int, w: int, fold: tuple[bool, bool]) -> Callable:
    def reflect(i: Array, n: int) -> Array:
        r = i % (2 * n)
        return xp.where(r >= n, 2 * n - 1 - r, r)

    def f(k: Array, b: Array, xs: Array, ys: Array, *m: Array) -> Array:  # (4, B, H, W): top-left, right, ...
        _, x0, _, y0 = _coordinates(xp, dt, h, w, fold, xs, ys, m)
        col = reflect(x0.astype(xp.intp) + k % 2, w)
        row = reflect(y0.astype(xp.intp) + k // 2, h)
        return (b * h + row) * w + col
    return f


def _blend(xp: Any, dt: Any, h: int, w: int, fold: tuple[bool, bool]) -> Callable:
    def f(p00: Array, p01: Array, p10: Array, p11: Array, xs: Array, ys: Array, *m: Array) -> Array:
        x_in, x0, y_in, y0 = _coordinates(xp, dt, h, w, fold, xs, ys, m)
        fx, fy = x_in - x0, y_in - y0
        top = (p01 - p00) * fx + p00
        bottom = (p11 - p10) * fx + p10
        return (bottom - top) * fy + top
    return f


def rotation_coefficients(angles: Array, height: int, width: int) -> tuple[Array, ...]:
    """The six entries m00 .. m12 of rotation_matrices, each (B,) float64; on a GPU in one kernel."""
    xp = get_array_module(angles)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0

    def make() -> Callable:
        def f(t: Array) -> tuple[Array, ...]:
            c, s = xp.cos(t), xp.sin(t)
            return c, -s, cx - cx * c + cy * s, s, c, cy - cx * s - cy * c
        return f
    return fused(xp, "rotation_coefficients", (height, width), make)(angles.astype(xp.float64))


def zoom_coefficients(height_zoom: Array, width_zoom: Array, height: int, width: int) -> tuple[Array, ...]:
    """The six entries of zoom_matrices, each (B,) float64; on a GPU in one kernel."""
    xp = get_array_module(height_zoom, width_zoom)

    def make() -> Callable:
        def f(zy: Array, zx: Array) -> tuple[Array, ...]:
            return zx, zx * 0.0, (width - 1) / 2.0 * (1.0 - zx), zy * 0.0, zy, (height - 1) / 2.0 * (1.0 - zy)
        return f
    return fused(xp, "zoom_coefficients", (height, width), make)(height_zoom, width_zoom)


def rotation_reach(factor: float | tuple[float, float], height: int, width: int) -> tuple[float, float]:
    """Bounds (ry, rx) on how far a rotation by U(lo, hi) * 2 pi turns (see draw_angles) moves any output
    pixel's input point from the centre, per axis: with s = max |sin theta| <= min(1, max |theta|) and
    |cos theta| <= 1, |y_in - cy| <= s cx + cy and |x_in - cx| <= cx + s cy. For affine_resample's ``reach``."""
    lo, hi = factor_bounds(factor, "factor")
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
        lo, hi = factor_bounds(factor, name)
        return max(abs(1.0 + lo), abs(1.0 + hi))

    zy = largest(height_factor, "height_factor")
    zx = zy if width_factor is None else largest(width_factor, "width_factor")
    return zy * (height - 1) / 2.0, zx * (width - 1) / 2.0


# -------------------------------------------------------------------------------------- rotation, zoom
def draw_angles(batch: int, factor: float | tuple[float, float], rng: Any, xp: Any = numpy) -> Array:
    """(batch,) float64 angles in radians, U(lo, hi) * 2 pi with (lo, hi) the bounds of Keras ``factor``."""
    lo, hi = factor_bounds(factor, "factor")
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
    lo, hi = factor_bounds(height_factor, "height_factor")
    zy = _uniform(rng, 1.0 + lo, 1.0 + hi, batch, xp)
    if width_factor is None:
        return zy, zy
    lo, hi = factor_bounds(width_factor, "width_factor")
    return zy, _uniform(rng, 1.0 + lo, 1.0 + hi, batch, xp)


def random_rotation(x: Array, factor: float | tuple[float, float], rng: Any) -> Array:
    """Keras ``RandomRotation(factor)`` in training: each image turned by its own angle
    theta ~ U(-factor, factor) * 2 pi about its centre, bilinear, reflected outside."""
    check_images(x)
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
    check_images(x)
    _, h, w, _ = x.shape
    zy, zx = draw_zooms(x.shape[0], height_factor, width_factor, rng, get_array_module(x))
    return affine_resample(x, zoom_matrices(zy, zx, h, w), zoom_reach(height_factor, width_factor, h, w))
