"""Dropout masks keyed by (seed, layer, global image index): however a batch is cut, the masks are the same."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import npvit
from npvit import ViT, ViTConfig, cross_entropy_backward, cross_entropy_forward
from npvit.kernels.random import keep_mask, splitmix64
from npvit.kernels import DropoutKey, dropout_forward, dropout_mask


def test_mask_rows_depend_on_the_global_index_only() -> None:
    whole = keep_mask(np, 7, "blocks.0.mlp.drop0", 0, (9, 5, 3), 6554)
    for first, stop in ((0, 4), (4, 9), (3, 4), (8, 9)):
        part = keep_mask(np, 7, "blocks.0.mlp.drop0", first, (stop - first, 5, 3), 6554)
        np.testing.assert_array_equal(part, whole[first:stop])
    other_site = keep_mask(np, 7, "blocks.0.mlp.drop1", 0, (9, 5, 3), 6554)
    other_seed = keep_mask(np, 8, "blocks.0.mlp.drop0", 0, (9, 5, 3), 6554)
    assert not np.array_equal(whole, other_site) and not np.array_equal(whole, other_seed)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_keep_probability(rate) -> None:
    mask = dropout_mask((64, 1000), rate, DropoutKey(3, "x"))
    keep = 1 - round(rate * 65536) / 65536
    assert abs(mask.mean() - keep) < 4 * np.sqrt(keep * (1 - keep) / mask.size)


def test_splitmix64_is_the_published_stream() -> None:
    # SplitMix64 seeded with 1234567: the first outputs of the reference C implementation (Vigna's splitmix64.c).
    expected = [6457827717110365317, 3203168211198807973, 9817491932198370423]
    np.testing.assert_array_equal(splitmix64(np, 1234567, 0, 3), np.array(expected, dtype=np.uint64))
    np.testing.assert_array_equal(splitmix64(np, 1234567, 1, 2), np.array(expected[1:], dtype=np.uint64))


def test_dropout_needs_a_key() -> None:
    with pytest.raises(ValueError, match="DropoutKey"):
        dropout_forward(np.ones((2, 3)), 0.5)
    with pytest.raises(TypeError, match="DropoutKey"):
        dropout_mask((2, 3), 0.5, np.random.default_rng(0))


def _run(model: ViT, images: np.ndarray, labels: np.ndarray, first: int = 0):
    logits = model.forward(images, training=True, dropout_seed=11, first_sample=first)
    loss, cache = cross_entropy_forward(logits, labels)
    dimages = model.backward(cross_entropy_backward(cache))
    return logits, dimages, {n: g.copy() for n, g in model.grads.items()}


@pytest.mark.parametrize("pool", ["flatten", "cls"])
def test_threads_and_pieces_draw_the_same_masks(monkeypatch, pool) -> None:
    cfg = dataclasses.replace(ViTConfig.tiny(), pool=pool, dropout=0.3, attention_dropout=0.3, head_dropout=0.4,
                              drop_path=0.4)
    data = np.random.default_rng(0)
    images, labels = data.standard_normal((7, 8, 8, 3)), data.integers(0, cfg.num_classes, 7)
    base = _run(ViT(cfg, dtype="float64", seed=4, threads=1), images, labels)
    monkeypatch.setitem(npvit.parallel.CHUNK_BYTES, "l3", 1)  # one image per piece ...
    monkeypatch.setitem(npvit.parallel.CHUNK_BYTES, "l2", 1)  # ... and per attention chunk
    cut = _run(ViT(cfg, dtype="float64", seed=4, threads=3), images, labels)
    np.testing.assert_allclose(cut[0], base[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(cut[1], base[1], rtol=1e-10, atol=1e-15)
    for name in base[2]:
        np.testing.assert_allclose(cut[2][name], base[2][name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_a_slice_of_the_batch_with_its_first_index_matches_the_whole() -> None:
    cfg = dataclasses.replace(ViTConfig.tiny(), dropout=0.3, attention_dropout=0.3, head_dropout=0.4,
                              drop_path=0.4)
    images = np.random.default_rng(0).standard_normal((6, 8, 8, 3))
    model = ViT(cfg, dtype="float64", seed=4, threads=1)
    whole = model.forward(images, training=True, dropout_seed=5)
    part = model.forward(images[2:5], training=True, dropout_seed=5, first_sample=2)
    np.testing.assert_allclose(part, whole[2:5], rtol=1e-12)
    shifted = model.forward(images[2:5], training=True, dropout_seed=5, first_sample=0)
    assert not np.allclose(shifted, whole[2:5])  # the index, not the position in the array, picks the mask
