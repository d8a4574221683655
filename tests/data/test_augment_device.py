"""The augmentation's GPU paths (npvit.data.fused: TrivialAugment in one gather and one kernel, the crop in
one gather, normalisation + resize + flip in one, rotation and zoom in four kernels each) against the NumPy
paths on the fake CuPy: the same pixels, element by element, for every operation and strength and for whole
batches with a fixed seed, and a bound on the kernels each launches."""

from __future__ import annotations

import numpy as np
import pytest

from fakecupy import LAUNCHES, fake_cupy, from_fake, host_syncs, to_fake  # noqa: F401 (fixtures)
from npvit.data import trivial_augment as ta
from npvit.data.affine import affine_resample, rotation_matrices, rotation_reach, zoom_matrices
from npvit.data.augment import Augmenter, channel_stats, crop_padded


def batch(dtype: object = np.uint8) -> np.ndarray:
    """Six 9x11 RGB images, one nearly flat and one with a flat channel (as test_trivial_augment's)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 9, 11, 3), dtype=np.uint8)
    x[4] = rng.integers(100, 104, (9, 11, 3))
    x[5, ..., 1] = 77
    return x if dtype == np.uint8 else x.astype(dtype) + 0.25  # float pixels between the integers too


@pytest.mark.parametrize("source", [np.uint8, np.float32])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_operation_and_strength_gives_the_numpy_pixels(fake_cupy, host_syncs, source, dtype) -> None:
    x = batch(source)
    signs = np.array([1.0, -1.0] * 3)
    for op in range(len(ta.OPS)):
        for k in (0, 1, 7, 15, 29, 30):
            ops, bins = np.full(6, op), np.full(6, k)
            expected = ta.trivial_augment(x, ops, bins, signs, dtype)
            LAUNCHES.reset()
            got = ta.trivial_augment(to_fake(x), to_fake(ops), to_fake(bins), to_fake(signs), dtype)
            assert LAUNCHES.total <= (14 if source == np.uint8 else 16)  # whatever the operation
            np.testing.assert_array_equal(from_fake(got), expected, err_msg=f"{ta.OPS[op]} bin {k}")
            assert from_fake(got).dtype == expected.dtype
    assert host_syncs.gets == 0 and not host_syncs.sites


def test_a_drawn_batch_and_a_cropped_one_give_the_numpy_pixels(fake_cupy) -> None:
    x = np.concatenate([batch()] * 5)  # 30 images: most operations appear
    ops, bins, signs = ta.draw_trivial_augment(len(x), np.random.default_rng(3))
    assert len(set(ops.tolist())) >= 10
    got = ta.trivial_augment(to_fake(x), to_fake(ops), to_fake(bins), to_fake(signs))
    np.testing.assert_array_equal(from_fake(got), ta.trivial_augment(x, ops, bins, signs))
    dy, dx = np.arange(30) % 7, (np.arange(30) * 3) % 7  # every offset of a padding of 3, both extremes
    expected = ta.trivial_augment(crop_padded(x, 3, dy, dx), ops, bins, signs)
    got = ta.trivial_augment_device(to_fake(x), to_fake(ops), to_fake(bins), to_fake(signs), np.float32,
                                    crop=(3, to_fake(dy), to_fake(dx)))
    np.testing.assert_array_equal(from_fake(got), expected)
    np.testing.assert_array_equal(from_fake(crop_padded(to_fake(x), 3, to_fake(dy), to_fake(dx))),
                                  crop_padded(x, 3, dy, dx))


def test_device_draws_are_the_numpy_draws(fake_cupy) -> None:
    import npvit

    for prob in (1.0, 0.3):
        host = ta.draw_trivial_augment(50, np.random.default_rng(4), prob=prob)
        device = ta.draw_trivial_augment(50, np.random.default_rng(4), npvit.get_backend("cupy").xp, prob)
        for h, d in zip(host, device):
            np.testing.assert_array_equal(from_fake(d), h)


def test_affine_resample_gives_the_numpy_pixels(fake_cupy) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 12, 12, 3)).astype(np.float32)
    angles = rng.uniform(-0.3, 0.3, 5)
    reach = rotation_reach(0.05, 12, 12)  # bounds both maps below: NumPy and the device fold alike
    for m in (rotation_matrices(angles, 12, 12), zoom_matrices(1 + angles, 1 - angles, 12, 12)):
        np.testing.assert_array_equal(from_fake(affine_resample(to_fake(x), to_fake(m), reach)),
                                      affine_resample(x, m, reach))
        # Without a bound a device folds the coordinates always (NumPy only when needed): equal to rounding.
        np.testing.assert_allclose(from_fake(affine_resample(to_fake(x), to_fake(m))), affine_resample(x, m),
                                   rtol=0, atol=1e-5)


AUGMENTERS = {  # recipe-like settings, and the least common combinations
    "fast": dict(image_size=32, rotation=0.0, zoom=0.0, crop_padding=4, trivial_augment=True,
                 trivial_augment_prob=0.3),
    "keras": dict(image_size=72),
    "crop, resize and flip": dict(image_size=40, rotation=0.0, zoom=0.0, crop_padding=4),
    "everything": dict(image_size=20, crop_padding=2, trivial_augment=True),
    "no flip": dict(image_size=32, flip=False, rotation=0.1, zoom=0.0),
}
LIMITS = {"fast": 20, "keras": 18, "crop, resize and flip": 8, "everything": 35, "no flip": 12}


@pytest.mark.parametrize("name", list(AUGMENTERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_augmenter_gives_the_numpy_pixels_in_few_kernels(fake_cupy, host_syncs, name, dtype) -> None:
    x = np.random.default_rng(2).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    aug = Augmenter(*channel_stats(x), dtype=dtype, **AUGMENTERS[name])
    expected = aug(x, training=True, rng=np.random.default_rng(7))
    LAUNCHES.reset()
    got = aug(to_fake(x), training=True, rng=np.random.default_rng(7))  # the same host draws
    assert LAUNCHES.total <= LIMITS[name]
    np.testing.assert_array_equal(from_fake(got), expected)
    np.testing.assert_array_equal(from_fake(aug(to_fake(x), training=False)), aug(x, training=False))
    halves = [aug(to_fake(x[:4]), training=True, rng=np.random.default_rng(7), first=0, total=10),
              aug(to_fake(x[4:]), training=True, rng=np.random.default_rng(7), first=4, total=10)]
    np.testing.assert_array_equal(np.concatenate([from_fake(h) for h in halves]), expected)  # keyed by rows
    assert host_syncs.gets == 0 and not host_syncs.sites
