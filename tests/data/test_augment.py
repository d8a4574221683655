"""Preprocessing and augmentation (npvit.data.augment) against independent slow references: explicit per-pixel
formulas and scipy.ndimage, whose modes are the ones Keras' affine_transform uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from npvit.data.affine import (
    affine_resample,
    draw_angles,
    draw_zooms,
    random_rotation,
    random_zoom,
    rotation_matrices,
    zoom_matrices,
)
from npvit.data.augment import (
    EPSILON,
    Augmenter,
    channel_stats,
    crop_padded,
    draw_crops,
    draw_flips,
    normalize,
    random_crop,
    random_flip,
    resize_bilinear,
)
from npvit.backend import to_numpy



class FixedRng:
    """A generator stub: each ``random(size)`` call returns the next of the given arrays."""

    def __init__(self, *draws: list[float]) -> None:
        self.draws = [np.asarray(d, dtype=np.float64) for d in draws]

    def random(self, size: int, dtype: object = None) -> np.ndarray:
        out = self.draws.pop(0)
        assert out.shape == (size,), f"asked for {size} draws, the stub holds {out.shape}"
        return out


def scipy_affine(x: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """Reference: scipy.ndimage.affine_transform image by image, channel by channel, in (row, col) form.
    An (x, y) matrix [[a0, a1, a2], [b0, b1, b2]] is [[b1, b0], [a1, a0]] with offset (b2, a2) on (row, col)."""
    out = np.empty_like(x, dtype=np.float64)
    for b in range(x.shape[0]):
        m = mats[b] if mats.ndim == 3 else mats
        rc = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
        for c in range(x.shape[-1]):
            out[b, :, :, c] = ndimage.affine_transform(
                x[b, :, :, c].astype(np.float64), rc, offset=(m[1, 2], m[0, 2]), order=1, mode="reflect"
            )
    return out


# ----------------------------------------------------------------------------------------- normalization
def test_channel_stats_chunked_equals_direct(backend, rng) -> None:
    x = rng.integers(0, 256, (37, 5, 6, 3), dtype=np.uint8)
    mean, var = channel_stats(backend.asarray(x), chunk=4)  # 10 chunks, the last one short
    assert isinstance(mean, np.ndarray) and mean.dtype == np.float64 and mean.shape == (3,)
    np.testing.assert_allclose(mean, np.mean(x, axis=(0, 1, 2)), rtol=1e-14)  # Keras' adapt on an array
    np.testing.assert_allclose(var, np.var(x, axis=(0, 1, 2)), rtol=1e-13)
    xi = (x.astype(np.int16) - 128).astype(np.int8)
    mean, var = channel_stats(backend.asarray(xi), chunk=5)
    np.testing.assert_allclose(mean, np.mean(xi, axis=(0, 1, 2)), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(var, np.var(xi, axis=(0, 1, 2)), rtol=1e-13)
    xf = rng.standard_normal((9, 4, 4, 2)).astype(np.float32) * 3 + 100
    mean, var = channel_stats(backend.asarray(xf), chunk=2)
    np.testing.assert_allclose(mean, xf.astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-13)
    np.testing.assert_allclose(var, xf.astype(np.float64).var(axis=(0, 1, 2)), rtol=1e-11)


def test_normalize_matches_formula(backend, rng) -> None:
    x = rng.integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    mean, var = np.array([120.0, 3.0, 50.5]), np.array([4000.0, 0.0, 1e-15])  # zero / tiny variance: eps
    y = normalize(backend.asarray(x), mean, var)
    assert y.dtype == np.float32  # integer images become float32, Keras' compute dtype
    y = to_numpy(y)
    for c in range(3):
        expected = (x[..., c].astype(np.float64) - mean[c]) / max(math.sqrt(var[c]), EPSILON)
        np.testing.assert_allclose(y[..., c], expected, rtol=1e-6)
    y64 = to_numpy(normalize(backend.asarray(x.astype(np.float64)), backend.asarray(mean), var))
    np.testing.assert_allclose(y64[..., 0], (x[..., 0] - 120.0) / math.sqrt(4000.0), rtol=1e-14)


# ---------------------------------------------------------------------------------------------- resizing
def resize_reference(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """jax.image.resize "bilinear" written pixel by pixel: sample u = (i + 1/2) n_in / n_out - 1/2 with the
    triangle kernel max(0, 1 - |u - j|) over the pixels j that exist, the weights renormalised to sum 1."""

    def weights(n_in: int, n_out: int, i: int) -> list[float]:
        u = (i + 0.5) * n_in / n_out - 0.5
        k = [max(0.0, 1.0 - abs(u - j)) for j in range(n_in)]
        return [v / sum(k) for v in k]

    b, h, w, c = x.shape
    out = np.zeros((b, oh, ow, c))
    for i in range(oh):
        wy = weights(h, oh, i)
        for j in range(ow):
            wx = weights(w, ow, j)
            for p in range(h):
                for q in range(w):
                    out[:, i, j, :] += wy[p] * wx[q] * x[:, p, q, :]
    return out


@pytest.mark.parametrize("size", [(11, 9), (3, 4), (10, 14), (5, 7)])
def test_resize_matches_per_pixel_formula(backend, rng, size) -> None:
    x = rng.standard_normal((2, 5, 7, 3))
    y = to_numpy(resize_bilinear(backend.asarray(x), size))
    np.testing.assert_allclose(y, resize_reference(x, *size), rtol=1e-12, atol=1e-12)
    # scipy.ndimage.zoom with grid_mode=True (pixel-area grid: half-pixel centres), edges clamped
    z = np.stack([ndimage.zoom(im, (size[0] / 5, size[1] / 7, 1), order=1, mode="nearest", grid_mode=True)
                  for im in x])
    np.testing.assert_allclose(y, z, rtol=1e-12, atol=1e-12)


def test_resize_doubles_a_ramp(backend) -> None:
    # 2x with half-pixel centres samples u = -1/4, 1/4, 3/4, ...: the two ends clamp to the edge pixels
    x = np.broadcast_to(np.arange(4.0)[None, None, :, None], (1, 1, 4, 1))
    y = to_numpy(resize_bilinear(backend.asarray(x), (2, 8)))
    expected = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]
    np.testing.assert_allclose(y[0, :, :, 0], [expected, expected], atol=1e-15)
    u8 = resize_bilinear(backend.asarray(np.full((1, 3, 3, 2), 7, dtype=np.uint8)), 6)
    assert u8.dtype == np.float32 and u8.shape == (1, 6, 6, 2)
    np.testing.assert_array_equal(to_numpy(u8), 7.0)


# ------------------------------------------------------------------------------------ affine resampling
def test_affine_resample_matches_map_coordinates(backend, rng) -> None:
    b, h, w, c = 4, 6, 7, 2
    x = rng.standard_normal((b, h, w, c))
    mats = np.zeros((b, 2, 3))
    mats[:, :, :2] = np.eye(2) + 0.6 * rng.standard_normal((b, 2, 2))  # general affine maps
    mats[:, :, 2] = rng.uniform(-4, 4, (b, 2))
    mats[3, :, 2] = [3.3 * w, -2.7 * h]  # far outside: exercises the folding of far coordinates
    y = to_numpy(affine_resample(backend.asarray(x), backend.asarray(mats)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    for i in range(b):
        x_in = mats[i, 0, 0] * xx + mats[i, 0, 1] * yy + mats[i, 0, 2]
        y_in = mats[i, 1, 0] * xx + mats[i, 1, 1] * yy + mats[i, 1, 2]
        for ch in range(c):
            ref = ndimage.map_coordinates(x[i, :, :, ch], [y_in, x_in], order=1, mode="reflect")
            np.testing.assert_allclose(y[i, :, :, ch], ref, rtol=1e-11, atol=1e-11)


def test_affine_resample_matches_keras_numpy_backend(rng) -> None:
    # Keras' NumPy backend: np.pad(mode="symmetric") around the image, then scipy map_coordinates
    # (mode="reflect") at the shifted coordinates.
    x = rng.standard_normal((2, 5, 8, 3))
    mats = rotation_matrices(np.array([0.4, -1.1]), 5, 8) @ zoom_matrices(np.array([1.3, 0.7]),
                                                                           np.array([0.9, 1.2]), 5, 8)
    y = affine_resample(x, mats)
    yy, xx = np.mgrid[0:5, 0:8].astype(np.float64)
    for i in range(2):
        x_in = mats[i, 0, 0] * xx + mats[i, 0, 1] * yy + mats[i, 0, 2]
        y_in = mats[i, 1, 0] * xx + mats[i, 1, 1] * yy + mats[i, 1, 2]
        pad = 6
        for ch in range(3):
            padded = np.pad(x[i, :, :, ch], pad, mode="symmetric")
            ref = ndimage.map_coordinates(padded, [y_in + pad, x_in + pad], order=1, mode="reflect")
            np.testing.assert_allclose(y[i, :, :, ch], ref, rtol=1e-12, atol=1e-12)


def test_reflect_fill_at_borders(backend) -> None:
    # (d c b a | a b c d | d c b a): index -1 reads pixel 0, -2 pixel 1, n pixel n - 1, n + 1 pixel n - 2
    x = np.broadcast_to(np.arange(4.0)[None, None, :, None], (1, 2, 4, 1))

    def shifted(dx: float) -> np.ndarray:
        m = np.array([[1.0, 0.0, dx], [0.0, 1.0, 0.0]])  # x_in = x + dx
        return to_numpy(affine_resample(backend.asarray(x), m))[0, 0, :, 0]

    np.testing.assert_allclose(shifted(-2.0), [1, 0, 0, 1], atol=1e-15)
    np.testing.assert_allclose(shifted(2.0), [2, 3, 3, 2], atol=1e-15)
    np.testing.assert_allclose(shifted(-0.5), [0, 0.5, 1.5, 2.5], atol=1e-15)
    np.testing.assert_allclose(shifted(-5.0), [3, 3, 2, 1], atol=1e-15)  # period 2n = 8
    np.testing.assert_allclose(shifted(-8.0), [0, 1, 2, 3], atol=1e-15)


def test_affine_resample_accepts_one_matrix_and_float32(backend, rng) -> None:
    x = rng.standard_normal((3, 6, 6, 2))
    m = rotation_matrices(np.array([0.3]), 6, 6)[0]  # (3, 3), shared by the batch
    y = affine_resample(backend.asarray(x.astype(np.float32)), m)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(to_numpy(y), scipy_affine(x, m), atol=2e-5)
    with pytest.raises(ValueError, match="matrices"):
        affine_resample(backend.asarray(x), np.zeros((2, 2, 3)))


# --------------------------------------------------------------------------------------------- rotation
def test_rotation_matrix_is_keras(rng) -> None:
    h, w = 5, 8
    t = rng.uniform(-1, 1, 4)
    m = rotation_matrices(t, h, w)
    c, s = np.cos(t), np.sin(t)
    # Keras 3.0's RandomRotation wrote the offsets this way (the current _compute_affine_matrix is the same)
    x_off = ((w - 1) - (c * (w - 1) - s * (h - 1))) / 2
    y_off = ((h - 1) - (s * (w - 1) + c * (h - 1))) / 2
    keras = np.stack([c, -s, x_off, s, c, y_off], axis=1).reshape(4, 2, 3)
    np.testing.assert_allclose(m[:, :2], keras, atol=1e-15)
    np.testing.assert_allclose(m[:, 2], np.tile([0, 0, 1.0], (4, 1)))
    centre = np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
    np.testing.assert_allclose(m @ centre, np.tile(centre, (4, 1)), atol=1e-14)  # the centre stays put


def test_quarter_turn_is_rot90(backend, rng) -> None:
    x = rng.standard_normal((2, 5, 5, 3))
    y = to_numpy(affine_resample(backend.asarray(x), rotation_matrices(np.full(2, np.pi / 2), 5, 5)))
    # positive angles turn the content counter-clockwise as displayed, like np.rot90
    np.testing.assert_allclose(y, np.rot90(x, k=1, axes=(1, 2)), atol=1e-12)


def test_random_rotation_with_fixed_draws_matches_scipy(backend, rng) -> None:
    b, h, w = 3, 7, 6
    x = rng.standard_normal((b, h, w, 2))
    u = np.array([0.0, 0.8, 1.0])
    y = to_numpy(random_rotation(backend.asarray(x), 0.02, FixedRng(u)))
    theta = (-0.02 + 0.04 * u) * 2 * np.pi  # U(-factor, factor) of a full turn
    ref = np.empty_like(x)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    for i in range(b):
        # (row, col) = (y, x): input = A (output - centre) + centre, A the rotation seen in (row, col)
        a = np.array([[np.cos(theta[i]), np.sin(theta[i])], [-np.sin(theta[i]), np.cos(theta[i])]])
        offset = np.array([cy, cx]) - a @ np.array([cy, cx])
        for ch in range(2):
            ref[i, :, :, ch] = ndimage.affine_transform(x[i, :, :, ch], a, offset=offset, order=1, mode="reflect")
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------- zoom
def test_random_zoom_with_fixed_draws_matches_scipy(backend, rng) -> None:
    b, h, w = 3, 6, 9
    x = rng.standard_normal((b, h, w, 2))
    uh, uw = np.array([0.0, 0.5, 1.0]), np.array([0.9, 0.1, 0.5])  # heights are drawn first, then widths
    y = to_numpy(random_zoom(backend.asarray(x), 0.2, 0.3, FixedRng(uh, uw)))
    zy, zx = 1 + (-0.2 + 0.4 * uh), 1 + (-0.3 + 0.6 * uw)
    ref = np.empty_like(x)
    for i in range(b):
        centre = np.array([(h - 1) / 2, (w - 1) / 2])
        z = np.array([zy[i], zx[i]])
        for ch in range(2):
            ref[i, :, :, ch] = ndimage.affine_transform(x[i, :, :, ch], z, offset=centre * (1 - z), order=1,
                                                        mode="reflect")
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_zoom_direction_and_identity(backend) -> None:
    x = np.zeros((1, 21, 21, 1))
    x[0, 6:15, 6:15] = 1.0  # a centred 9x9 square

    def out(z: float) -> np.ndarray:
        return to_numpy(affine_resample(backend.asarray(x), zoom_matrices([z], [z], 21, 21)))

    np.testing.assert_array_equal(out(1.0), x)
    assert (out(1.2) > 0.5).sum() < 81 < (out(0.8) > 0.5).sum()  # z > 1 (positive factor) zooms out


# ------------------------------------------------------------------------------------------------- flip
def test_random_flip_flips_where_draw_at_most_half(backend, rng) -> None:
    x = rng.standard_normal((4, 3, 5, 2))
    y = to_numpy(random_flip(backend.asarray(x), FixedRng([0.2, 0.7, 0.5, 0.51])))
    for i, flipped in enumerate([True, False, True, False]):
        np.testing.assert_array_equal(y[i], x[i, :, ::-1] if flipped else x[i])


# ----------------------------------------------------------------------------------------------- crop
def crop_reference(x: np.ndarray, padding: int, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Image by image: numpy.pad with zeros, then a slice."""
    h, w = x.shape[1:3]
    return np.stack([np.pad(x[b], ((padding, padding), (padding, padding), (0, 0)))[dy[b] : dy[b] + h,
                                                                                     dx[b] : dx[b] + w]
                     for b in range(len(x))])


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_crop_matches_pad_and_slice(backend, rng, dtype) -> None:
    padding = 3
    x = rng.integers(1, 256, (40, 7, 9, 2)).astype(dtype)  # 1..255: every padded zero is visible
    dy, dx = rng.integers(0, 2 * padding + 1, (2, 40))
    dy[:2], dx[:2] = (0, 2 * padding), (2 * padding, 0)  # the extreme corners
    y = crop_padded(backend.asarray(x), padding, backend.asarray(dy), backend.asarray(dx))
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(to_numpy(y), crop_reference(x, padding, dy, dx))
    centre = np.full(40, padding)
    np.testing.assert_array_equal(to_numpy(crop_padded(backend.asarray(x), padding, centre, centre)), x)
    gen = backend.rng(3)
    dy, dx = (to_numpy(d) for d in draw_crops(40, padding, backend.rng(3), backend.xp))
    np.testing.assert_array_equal(to_numpy(random_crop(backend.asarray(x), padding, gen)),
                                  crop_reference(x, padding, dy, dx))
    with pytest.raises(ValueError, match="offset per image"):
        crop_padded(backend.asarray(x), padding, dy[:3], dx)


def test_crop_offsets_are_uniform(backend) -> None:
    n, padding = 45000, 4
    dy, dx = (to_numpy(d) for d in draw_crops(n, padding, backend.rng(0), backend.xp))
    k = 2 * padding + 1
    for d in (dy, dx):
        assert np.issubdtype(d.dtype, np.integer) and d.min() == 0 and d.max() == k - 1
        counts = np.bincount(d, minlength=k)
        # Each count is Binomial(n, 1/k): n/k = 5000 with sd 66.7; 5 sd either side, for each of 18 counts.
        assert np.abs(counts - n / k).max() < 5 * np.sqrt(n / k * (1 - 1 / k)), counts
    assert abs(np.corrcoef(dy, dx)[0, 1]) < 0.03  # rows and columns drawn independently (about 6 sd)
    # u just below 1 never makes the offset 2P + 1; u = 0 is offset 0.
    edge = FixedRng([0.0, np.nextafter(1.0, 0.0), 0.5], [1 / 9 - 1e-12, 1 / 9, 8 / 9])
    dy, dx = (to_numpy(d) for d in draw_crops(3, padding, edge, backend.xp))
    np.testing.assert_array_equal(dy, [0, 8, 4])
    np.testing.assert_array_equal(dx, [0, 1, 8])


def test_augmenter_crop_is_first_on_raw_images_with_black_padding(backend, rng) -> None:
    images, aug = _cifar_like(rng)
    x = backend.asarray(images)
    crop = Augmenter(aug.mean, aug.variance, image_size=12, crop_padding=2)
    out = to_numpy(crop(x, training=True, rng=backend.rng(11)))
    gen = backend.rng(11)
    y = random_crop(x, 2, gen)  # raw uint8: the padding is black, then normalised
    y = resize_bilinear(normalize(y.astype(np.float32), aug.mean, aug.variance), 12)
    y = random_zoom(random_rotation(random_flip(y, gen), 0.02, gen), 0.2, 0.2, gen)
    np.testing.assert_array_equal(out, to_numpy(y))
    only = Augmenter(aug.mean, aug.variance, image_size=8, flip=False, rotation=0, zoom=0, crop_padding=2)
    dy, dx = (to_numpy(d) for d in draw_crops(6, 2, backend.rng(4), backend.xp))
    cropped = crop_reference(images, 2, dy, dx)
    expected = ((cropped - aug.mean) / np.sqrt(aug.variance)).astype(np.float32)
    np.testing.assert_allclose(to_numpy(only(x, True, backend.rng(4))), expected, rtol=1e-5, atol=1e-5)
    assert (cropped == 0).all(axis=-1).any()  # some padding shows, and above it came out as black
    # Inference never crops and draws nothing.
    gen = np.random.default_rng(0)
    state = gen.bit_generator.state
    np.testing.assert_array_equal(to_numpy(crop(x, False, gen)), to_numpy(aug(x, False)))
    assert gen.bit_generator.state == state


def test_crop_padding_zero_is_the_keras_pipeline_bit_for_bit(backend, rng) -> None:
    images, aug = _cifar_like(rng)
    x = backend.asarray(images)
    zero = Augmenter(aug.mean, aug.variance, image_size=12, crop_padding=0)
    np.testing.assert_array_equal(to_numpy(zero(x, True, backend.rng(9))), to_numpy(aug(x, True, backend.rng(9))))
    gen = np.random.default_rng(5)
    aug(images, True, gen)
    after_keras = gen.bit_generator.state
    gen = np.random.default_rng(5)
    zero(images, True, gen)
    assert gen.bit_generator.state == after_keras  # no draw consumed for the crop
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="crop_padding"):
            Augmenter(aug.mean, aug.variance, crop_padding=bad)


def test_crop_slices_of_a_global_batch_equal_the_whole_batch(backend, rng) -> None:
    images = rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
    aug = Augmenter(*channel_stats(images), image_size=12, crop_padding=3)
    x = backend.asarray(images)
    whole = to_numpy(aug(x, training=True, rng=backend.rng(21)))
    bounds = [0, 2, 3, 7, 9]
    parts = [to_numpy(aug(x[a:b], training=True, rng=backend.rng(21), first=a, total=len(images)))
             for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    crop_only = Augmenter(aug.mean, aug.variance, image_size=8, flip=False, rotation=0, zoom=0, crop_padding=3)
    whole = to_numpy(crop_only(x, True, backend.rng(2)))
    part = to_numpy(crop_only(x[4:6], True, backend.rng(2), first=4, total=9))
    np.testing.assert_array_equal(part, whole[4:6])
    assert not np.array_equal(part, to_numpy(crop_only(x[4:6], True, backend.rng(2))))  # keyed by the row


# ----------------------------------------------------------------------------------------- randomness
def test_draw_statistics(backend) -> None:
    n, xp = 20000, backend.xp
    flips = to_numpy(draw_flips(n, backend.rng(0), xp))
    assert flips.dtype == bool and abs(flips.mean() - 0.5) < 0.02  # 0.02 is about 5.7 standard deviations
    angles = to_numpy(draw_angles(n, 0.02, backend.rng(1), xp))
    bound = 0.02 * 2 * np.pi
    assert angles.min() >= -bound and angles.max() <= bound
    assert angles.min() < -0.99 * bound and angles.max() > 0.99 * bound and abs(angles.mean()) < 0.02 * bound
    zy, zx = (to_numpy(z) for z in draw_zooms(n, 0.2, 0.2, backend.rng(2), xp))
    for z in (zy, zx):
        assert z.min() >= 0.8 and z.max() <= 1.2 and abs(z.mean() - 1.0) < 0.005
    assert abs(np.corrcoef(zy, zx)[0, 1]) < 0.05  # the axes are drawn independently
    same = draw_zooms(5, 0.2, None, backend.rng(3), xp)
    np.testing.assert_array_equal(to_numpy(same[0]), to_numpy(same[1]))  # width_factor=None: one zoom
    with pytest.raises(ValueError, match="factor"):
        draw_angles(3, 1.5, backend.rng(0), xp)
    with pytest.raises(ValueError, match="factor"):
        draw_zooms(3, (-0.2, 1.2), None, backend.rng(0), xp)


# ----------------------------------------------------------------------------------------- the pipeline
def _cifar_like(rng: np.random.Generator, n: int = 6, size: int = 8) -> tuple[np.ndarray, Augmenter]:
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return images, Augmenter(*channel_stats(images), image_size=12)


def test_inference_is_normalize_then_resize_and_deterministic(backend, rng) -> None:
    images, aug = _cifar_like(rng)
    gen = np.random.default_rng(0)
    state = gen.bit_generator.state
    a = aug(backend.asarray(images), training=False, rng=gen)
    b = aug(backend.asarray(images), training=False)
    assert a.dtype == np.float32 and a.shape == (6, 12, 12, 3) and type(a) is type(backend.asarray(images))
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert gen.bit_generator.state == state  # inference draws nothing
    expected = resize_reference((images - aug.mean) / np.sqrt(aug.variance), 12, 12)
    np.testing.assert_allclose(to_numpy(a), expected, rtol=1e-5, atol=1e-5)


def test_training_same_seed_same_output(backend, rng) -> None:
    images, aug = _cifar_like(rng)
    x = backend.asarray(images)
    a = to_numpy(aug(x, training=True, rng=backend.rng(7)))
    b = to_numpy(aug(x, training=True, rng=backend.rng(7)))
    c = to_numpy(aug(x, training=True, rng=backend.rng(8)))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, to_numpy(aug(x, training=False)))
    first, second = (Augmenter(aug.mean, aug.variance, image_size=12, seed=3) for _ in range(2))
    np.testing.assert_array_equal(to_numpy(first(x, True)), to_numpy(second(x, True)))  # rng=None: seed


def test_training_is_flip_rotate_zoom_in_order(backend, rng) -> None:
    images, aug = _cifar_like(rng)
    x = backend.asarray(images)
    out = to_numpy(aug(x, training=True, rng=backend.rng(11)))
    gen = backend.rng(11)
    y = resize_bilinear(normalize(x.astype(np.float32), aug.mean, aug.variance), 12)
    y = random_zoom(random_rotation(random_flip(y, gen), 0.02, gen), 0.2, 0.2, gen)
    np.testing.assert_allclose(out, to_numpy(y), rtol=1e-6, atol=1e-6)


def test_slices_of_a_global_batch_augment_as_the_whole_batch(backend, rng) -> None:
    # Keyed per sample: processes taking disjoint slices of one global batch (each with a generator seeded
    # alike) produce exactly the rows that one process augmenting the whole batch produces.
    images, aug = _cifar_like(rng)
    x = backend.asarray(images)
    whole = to_numpy(aug(x, training=True, rng=backend.rng(21)))
    bounds = [0, 1, 4, len(images)]
    parts = [to_numpy(aug(x[a:b], training=True, rng=backend.rng(21), first=a, total=len(images)))
             for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert not np.array_equal(parts[0], to_numpy(aug(x[:1], training=True, rng=backend.rng(21))))  # keyed
    wild = Augmenter(aug.mean, aug.variance, image_size=12, rotation=1.0, zoom=1.0)  # full turns, zooms 0-2x
    whole = to_numpy(wild(x, training=True, rng=backend.rng(5)))
    parts = [to_numpy(wild(x[a:b], training=True, rng=backend.rng(5), first=a, total=len(images)))
             for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    for first, total in ((-1, 6), (3, 6), (2, 5), (0.5, 6)):
        with pytest.raises(ValueError, match="global batch"):
            aug(x[:4], training=True, rng=backend.rng(0), first=first, total=total)


def test_reach_bounds_every_sampled_point(rng) -> None:
    # affine_resample's padding on a GPU comes from these host-side bounds: they must hold at the extremes.
    from npvit.data.affine import rotation_reach, zoom_reach

    h, w = 9, 14
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    for factor in (0.02, (-0.1, 0.05), 0.3, 1.0):
        lo, hi = (-factor, factor) if isinstance(factor, float) else factor
        angles = np.concatenate([np.linspace(lo, hi, 101), [lo, hi]]) * 2 * np.pi
        mats = rotation_matrices(angles, h, w)
        ry, rx = rotation_reach(factor, h, w)
        x_in = mats[:, 0, 0, None, None] * xx + mats[:, 0, 1, None, None] * yy + mats[:, 0, 2, None, None]
        y_in = mats[:, 1, 0, None, None] * xx + mats[:, 1, 1, None, None] * yy + mats[:, 1, 2, None, None]
        assert np.abs(x_in - cx).max() <= rx + 1e-9 and np.abs(y_in - cy).max() <= ry + 1e-9
        assert np.abs(x_in - cx).max() >= 0.7 * rx  # and not far from tight
    for hf, wf in ((0.2, 0.2), ((-0.5, 0.1), None), (1.0, (0.0, 0.3))):
        z = np.linspace(-1, 1, 101)
        zy = 1 + np.interp(z, [-1, 1], (-hf, hf) if isinstance(hf, float) else hf)
        zx = zy if wf is None else 1 + np.interp(z, [-1, 1], (-wf, wf) if isinstance(wf, float) else wf)
        mats = zoom_matrices(zy, zx, h, w)
        ry, rx = zoom_reach(hf, wf, h, w)
        x_in = mats[:, 0, 0, None, None] * xx + mats[:, 0, 2, None, None]
        y_in = mats[:, 1, 1, None, None] * yy + mats[:, 1, 2, None, None]
        assert np.abs(x_in - cx).max() <= rx + 1e-9 and np.abs(y_in - cy).max() <= ry + 1e-9


def test_flags_disable_steps(backend, rng) -> None:
    images, aug = _cifar_like(rng)
    x = backend.asarray(images)
    off = Augmenter(aug.mean, aug.variance, image_size=12, flip=False, rotation=0, zoom=0.0)
    np.testing.assert_array_equal(to_numpy(off(x, True, backend.rng(0))), to_numpy(off(x, False)))
    only_flip = Augmenter(aug.mean, aug.variance, image_size=12, rotation=0, zoom=0)
    gen = backend.rng(4)
    expected = random_flip(aug(x, False), gen)
    np.testing.assert_array_equal(to_numpy(only_flip(x, True, backend.rng(4))), to_numpy(expected))


def test_float32_pipeline_tracks_float64(backend, rng) -> None:
    images, aug = _cifar_like(rng)
    x = backend.asarray(images)
    a64 = Augmenter(aug.mean, aug.variance, image_size=12, dtype="float64")
    y32, y64 = aug(x, True, backend.rng(5)), a64(x, True, backend.rng(5))
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    np.testing.assert_allclose(to_numpy(y32), to_numpy(y64), atol=1e-4)


def test_bad_input(backend, rng) -> None:
    images, aug = _cifar_like(rng)
    with pytest.raises(ValueError, match="batch, height, width, channels"):
        aug(backend.asarray(images[0]), training=False)
    with pytest.raises(ValueError, match="channels"):
        aug(backend.asarray(images[..., :2]), training=False)
    with pytest.raises(ValueError, match="match"):
        Augmenter(np.zeros(3), np.ones(2))
    with pytest.raises(ValueError, match="zoom"):
        Augmenter(np.zeros(3), np.ones(3), zoom=1.5)
    with pytest.raises(ValueError, match="float"):
        Augmenter(np.zeros(3), np.ones(3), dtype="int32")
