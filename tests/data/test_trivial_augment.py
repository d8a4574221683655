"""TrivialAugment Wide (npvit.data.trivial_augment) against slow references: every operation, one image at a time,
pixel by pixel for the geometric ones; Pillow's ImageOps for posterize, solarize and equalize (exactly) and
ImageEnhance for the colour operations (to its rounding); the strength table; the draws; the Augmenter
keyed by rows; and the GPU path (fake CuPy: no host read, the same numbers)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fakecupy import fake_cupy, from_fake, host_syncs, to_fake  # noqa: F401 (fixtures)
from npvit.data import trivial_augment as ta
from npvit.data.augment import Augmenter, channel_stats
from npvit.backend import to_numpy

PIL_Image = pytest.importorskip("PIL.Image")
from PIL import ImageEnhance, ImageOps  # noqa: E402


@pytest.fixture
def images() -> np.ndarray:
    """Six 9x11 RGB images (not square, so that rows and columns cannot be swapped unnoticed), uint8, one of
    them nearly flat (a few grey levels) and one with a flat channel."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 9, 11, 3), dtype=np.uint8)
    x[4] = rng.integers(100, 104, (9, 11, 3))
    x[5, ..., 1] = 77
    return x


def per_image(op: str, image: np.ndarray, s: float) -> np.ndarray:
    """The operation on one (H, W, C) image with signed strength s, written out with loops and plain formulas."""
    x = image.astype(np.float64)
    h, w, c = x.shape
    if op in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        out = np.zeros_like(x)
        cx, cy = (w - 1) / 2, (h - 1) / 2
        t = math.radians(s)
        for y in range(h):
            for xx in range(w):
                src = {
                    "shear_x": (xx + s * y, y),
                    "shear_y": (xx, s * xx + y),
                    "translate_x": (xx - s, y),
                    "translate_y": (xx, y - s),
                    "rotate": (math.cos(t) * (xx - cx) - math.sin(t) * (y - cy) + cx,
                               math.sin(t) * (xx - cx) + math.cos(t) * (y - cy) + cy),
                }[op]
                sx, sy = round(src[0]), round(src[1])  # Python's round: ties to even, as rint
                if 0 <= sx < w and 0 <= sy < h:
                    out[y, xx] = x[sy, sx]
        return out
    f = 1 + s
    gray = 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    if op == "brightness":
        return np.clip(f * x, 0, 255)
    if op == "color":
        return np.clip(f * x + (1 - f) * gray[..., None], 0, 255)
    if op == "contrast":
        return np.clip(f * x + (1 - f) * gray.mean(), 0, 255)
    if op == "sharpness":
        blurred = x.copy()
        for y in range(1, h - 1):
            for xx in range(1, w - 1):
                window = x[y - 1:y + 2, xx - 1:xx + 2]  # (3, 3, C)
                blurred[y, xx] = (window.sum(axis=(0, 1)) + 4 * x[y, xx]) / 13
        return np.clip(f * x + (1 - f) * blurred, 0, 255)
    if op == "posterize":
        q = 2 ** (8 - int(s))
        return np.floor(x / q) * q
    if op == "solarize":
        return np.where(x >= s, 255 - x, x)
    if op == "autocontrast":
        out = x.copy()
        for ch in range(c):
            lo, hi = x[..., ch].min(), x[..., ch].max()
            if hi > lo:
                out[..., ch] = np.clip((x[..., ch] - lo) * 255 / (hi - lo), 0, 255)
        return out
    if op == "equalize":
        return np.asarray(ImageOps.equalize(PIL_Image.fromarray(image)), dtype=np.float64)
    assert op == "identity"
    return x


CASES = [(op, k) for op in ta.OPS for k in (0, 7, 15, 30)]


@pytest.mark.parametrize("op,k", CASES)
def test_every_operation_against_its_per_image_reference(backend, images, op, k) -> None:
    n = len(images)
    ops = np.full(n, ta.OPS.index(op))
    bins = np.full(n, k)
    signs = np.array([1.0, -1.0] * (n // 2))
    got = to_numpy(ta.trivial_augment(backend.asarray(images), backend.asarray(ops), backend.asarray(bins),
                                      backend.asarray(signs), dtype=np.float64))
    for i in range(n):
        s = ta.STRENGTHS[ta.OPS.index(op), k] * (signs[i] if op in ta.SIGNED else 1.0)
        np.testing.assert_allclose(got[i], per_image(op, images[i], s), rtol=0, atol=1e-9,
                                   err_msg=f"{op} bin {k} image {i}")


def test_a_mixed_batch_gives_each_image_its_own_operation(backend, images) -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([images] * 5)  # 30 images: most operations appear
    ops, bins, signs = ta.draw_trivial_augment(len(x), rng)
    got = to_numpy(ta.trivial_augment(backend.asarray(x), backend.asarray(ops), backend.asarray(bins),
                                      backend.asarray(signs), dtype=np.float64))
    assert len(set(ops.tolist())) >= 10
    for i in range(len(x)):
        op = ta.OPS[ops[i]]
        s = ta.STRENGTHS[ops[i], bins[i]] * (signs[i] if op in ta.SIGNED else 1.0)
        np.testing.assert_allclose(got[i], per_image(op, x[i], s), rtol=0, atol=1e-9, err_msg=f"{op} image {i}")


def test_the_strength_table_is_torchvisions_wide_space() -> None:
    table = dict(zip(ta.OPS, ta.STRENGTHS))
    assert table["shear_x"][30] == pytest.approx(0.99) and table["rotate"][30] == pytest.approx(135.0)
    assert table["translate_x"][15] == 16 and table["translate_x"][1] == 1 and table["translate_x"][30] == 32
    assert table["translate_x"][2] == 2 and table["translate_x"][29] == 30  # int(32 k / 30), truncated
    assert list(table["posterize"][[0, 2, 3, 5, 8, 30]]) == [8, 8, 7, 7, 6, 2]
    assert table["solarize"][0] == 255 and table["solarize"][30] == 0
    assert not table["identity"].any() and not table["equalize"].any()
    assert ta.SIGNED == {"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                         "contrast", "sharpness"}


def test_pillow_agrees_on_posterize_solarize_and_equalize(images) -> None:
    for k in (0, 10, 20, 30):
        bits, threshold = int(ta.STRENGTHS[ta.OPS.index("posterize"), k]), ta.STRENGTHS[ta.OPS.index("solarize"), k]
        for image in images:
            pil = PIL_Image.fromarray(image)
            s = np.ones(1)
            np.testing.assert_array_equal(ta.posterize(image[None].astype(np.float64), s * bits)[0],
                                          np.asarray(ImageOps.posterize(pil, bits)))
            np.testing.assert_array_equal(ta.solarize(image[None].astype(np.float64), s * threshold)[0],
                                          np.asarray(ImageOps.solarize(pil, threshold)))
    np.testing.assert_array_equal(ta.equalize(images.astype(np.float64), np.zeros(len(images))),
                                  np.stack([np.asarray(ImageOps.equalize(PIL_Image.fromarray(i))) for i in images]))


def test_equalize_is_pillows_on_images_large_enough_to_change(backend) -> None:
    """Equalisation changes an image only when it has at least 255 pixels outside its highest bin (step >= 1):
    40x40 images, some with narrow histograms (step up to 6), one flat (kept), one of a single channel value."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    x[1] = rng.integers(60, 90, (40, 40, 3))  # a narrow histogram, stretched over [0, 255]
    x[2] = np.clip(rng.normal(128, 10, (40, 40, 3)), 0, 255).astype(np.uint8)
    x[3, ..., 0] = 200  # one bin: kept
    x[4, :20] = 7  # half the pixels in one low bin
    got = to_numpy(ta.equalize(backend.asarray(x.astype(np.float64)), backend.asarray(np.zeros(5))))
    expected = np.stack([np.asarray(ImageOps.equalize(PIL_Image.fromarray(i))) for i in x])
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got[1], x[1]) and np.array_equal(got[3, ..., 0], x[3, ..., 0])


@pytest.mark.parametrize("name,enhancer", [("brightness", ImageEnhance.Brightness), ("color", ImageEnhance.Color),
                                           ("contrast", ImageEnhance.Contrast),
                                           ("sharpness", ImageEnhance.Sharpness)])
def test_pillow_agrees_on_the_colour_operations_to_its_rounding(images, name, enhancer) -> None:
    """Pillow works in 8-bit integers (its grey level, the contrast's mean and the result rounded), npvit in
    floats: they agree to about a grey level; a wrong formula is tens of levels off."""
    for f in (0.01, 0.5, 1.5, 1.99):
        got = ta.OPERATIONS[name](images.astype(np.float64), np.full(len(images), f - 1.0))
        expected = np.stack([np.asarray(enhancer(PIL_Image.fromarray(i)).enhance(f)) for i in images])
        assert np.abs(got - expected).max() <= 2.0, (name, f, np.abs(got - expected).max())


def test_rotation_by_a_quarter_turn_is_rot90_and_translation_moves_content(images) -> None:
    square = images[:, :9, :9]
    turned = ta.rotate(square.astype(np.float64), np.full(len(square), 90.0))
    np.testing.assert_array_equal(turned, np.rot90(square, k=1, axes=(1, 2)))  # counter-clockwise as displayed
    moved = ta.translate_x(images.astype(np.float64), np.full(len(images), 3.0))
    np.testing.assert_array_equal(moved[:, :, 3:], images[:, :, :-3])
    assert not moved[:, :, :3].any()  # filled with black
    down = ta.translate_y(images.astype(np.float64), np.full(len(images), -2.0))
    np.testing.assert_array_equal(down[:, :-2], images[:, 2:])


def test_draws_cover_every_operation_bin_and_sign() -> None:
    ops, bins, signs = ta.draw_trivial_augment(14_000, np.random.default_rng(2))
    counts = np.bincount(ops, minlength=14)
    assert counts.min() > 850 and counts.max() < 1150  # 1,000 expected each
    assert bins.min() == 0 and bins.max() == 30 and set(np.unique(signs)) == {-1.0, 1.0}
    assert 0.47 < (signs > 0).mean() < 0.53


def test_a_probability_below_one_leaves_the_other_images_unchanged() -> None:
    full = ta.draw_trivial_augment(28_000, np.random.default_rng(4))
    half = ta.draw_trivial_augment(28_000, np.random.default_rng(4), prob=0.5)
    np.testing.assert_array_equal(half[1], full[1])  # bins and signs: the same draws, in the same order
    np.testing.assert_array_equal(half[2], full[2])
    kept = half[0] == full[0]
    assert np.all(half[0][~kept] == 0)  # an image is either as drawn or the identity
    assert 0.48 < (full[0] != 0)[~kept].sum() / (full[0] != 0).sum() < 0.52  # about half of the changes undone
    identity = (half[0] == 0).mean()
    assert abs(identity - (0.5 + 0.5 / 14)) < 0.01  # 1 - p + p / 14
    assert np.all(ta.draw_trivial_augment(100, np.random.default_rng(4), prob=0.0)[0] == 0)
    one = ta.draw_trivial_augment(100, np.random.default_rng(4), prob=1.0)
    np.testing.assert_array_equal(one[0], ta.draw_trivial_augment(100, np.random.default_rng(4))[0])
    with pytest.raises(ValueError, match="prob must be in"):
        ta.draw_trivial_augment(10, np.random.default_rng(0), prob=1.5)


def test_the_augmenter_passes_its_probability_on(images) -> None:
    x = np.concatenate([images] * 4)  # 24 images
    aug = Augmenter(*channel_stats(x), image_size=9, flip=False, rotation=0, zoom=0, trivial_augment=True,
                    trivial_augment_prob=0.3)
    plain = Augmenter(aug.mean, aug.variance, image_size=9, flip=False, rotation=0, zoom=0)
    ops, bins, signs = ta.draw_trivial_augment(24, np.random.default_rng(7), prob=0.3)
    expected = plain(ta.trivial_augment(x, ops, bins, signs), training=False)
    np.testing.assert_allclose(aug(x, training=True, rng=np.random.default_rng(7)), expected, rtol=1e-6, atol=1e-5)
    none = Augmenter(aug.mean, aug.variance, image_size=9, flip=False, rotation=0, zoom=0, trivial_augment=True,
                     trivial_augment_prob=0.0)
    np.testing.assert_allclose(none(x, training=True, rng=np.random.default_rng(7)), plain(x, training=False),
                               rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="trivial_augment_prob"):
        Augmenter(aug.mean, aug.variance, trivial_augment=True, trivial_augment_prob=-0.1)


def test_the_augmenter_applies_it_keyed_by_rows(images) -> None:
    x = np.concatenate([images] * 2)  # 12 images
    aug = Augmenter(*channel_stats(x), image_size=9, flip=False, rotation=0, zoom=0, trivial_augment=True)
    plain = Augmenter(aug.mean, aug.variance, image_size=9, flip=False, rotation=0, zoom=0)
    whole = aug(x, training=True, rng=np.random.default_rng(5))
    halves = np.concatenate([aug(x[:5], training=True, rng=np.random.default_rng(5), first=0, total=12),
                             aug(x[5:], training=True, rng=np.random.default_rng(5), first=5, total=12)])
    np.testing.assert_array_equal(whole, halves)  # each image's operation is drawn for its global row
    ops, bins, signs = ta.draw_trivial_augment(12, np.random.default_rng(5))
    expected = plain(ta.trivial_augment(x, ops, bins, signs), training=False)  # then normalised and resized
    np.testing.assert_allclose(whole, expected, rtol=1e-6, atol=1e-5)
    assert not np.allclose(whole, plain(x, training=False))
    np.testing.assert_array_equal(aug(x, training=False), plain(x, training=False))  # inference: untouched


def test_gpu_path_has_no_sync_and_equals_numpy(fake_cupy, host_syncs, images) -> None:
    x = np.concatenate([images] * 5)
    ops, bins, signs = ta.draw_trivial_augment(len(x), np.random.default_rng(3))
    expected = ta.trivial_augment(x, ops, bins, signs, dtype=np.float64)
    host_syncs.reset()
    got = ta.trivial_augment(to_fake(x), to_fake(ops), to_fake(bins), to_fake(signs), dtype=np.float64)
    assert host_syncs.gets == 0
    np.testing.assert_allclose(from_fake(got), expected, rtol=0, atol=1e-9)


def test_augmenter_on_the_gpu_path_draws_and_applies_on_the_device(fake_cupy, host_syncs, images) -> None:
    import npvit

    x = np.concatenate([images] * 3)
    aug = Augmenter(*channel_stats(x), image_size=9, crop_padding=2, trivial_augment=True, dtype="float64")
    expected = aug(x, training=True, rng=np.random.default_rng(6))  # host draws, NumPy path
    host_syncs.reset()
    got = aug(to_fake(x), training=True, rng=np.random.default_rng(6))  # host draws, GPU path
    assert host_syncs.gets == 0
    np.testing.assert_allclose(from_fake(got), expected, rtol=1e-11, atol=1e-11)
    device_rng = npvit.get_backend("cupy").rng(1)
    host_syncs.reset()
    out = aug(to_fake(x), training=True, rng=device_rng)  # drawn on the device too
    assert host_syncs.gets == 0 and out.shape == (18, 9, 9, 3)
    half = Augmenter(aug.mean, aug.variance, image_size=9, crop_padding=2, trivial_augment=True,
                     trivial_augment_prob=0.5, dtype="float64")
    expected = half(x, training=True, rng=np.random.default_rng(8))
    host_syncs.reset()
    got = half(to_fake(x), training=True, rng=np.random.default_rng(8))  # the probability's draw on the GPU path
    assert host_syncs.gets == 0
    np.testing.assert_allclose(from_fake(got), expected, rtol=1e-11, atol=1e-11)
    half(to_fake(x), training=True, rng=device_rng)
    assert host_syncs.gets == 0


def test_a_training_run_with_trivial_augment_records_it(tmp_path) -> None:
    import json

    from npvit.train import command as train_cli

    out = tmp_path / "run"
    assert train_cli.main(["--dataset", "synthetic", "--synthetic-size", "64,16", "--synthetic-image-size", "16",
                           "--preset", "tiny", "--batch-size", "32", "--epochs", "1", "--threads", "1", "--quiet",
                           "--crop-padding", "2", "--trivial-augment", "--trivial-augment-prob", "0.5",
                           "--out", str(out)]) == 0
    run = json.loads((out / "config.json").read_text())["run"]
    assert run["trivial_augment"] is True and run["trivial_augment_prob"] == 0.5
    with pytest.raises(SystemExit):  # a probability outside [0, 1] is refused by the command line
        train_cli.main(["--dataset", "synthetic", "--trivial-augment-prob", "2", "--out", str(tmp_path / "bad")])
