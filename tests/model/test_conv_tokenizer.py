"""The convolutional tokenizer and sequence pooling in the model: the whole-model gradient check in float64,
the config fields, the batch cut into threads and pieces, and the training step's skipped input gradient."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import npvit
from npvit import ViT, ViTConfig
from npvit.model import batched


def tiny_conv(**changes) -> ViTConfig:
    """8x8 images, conv layers of 3 and 4 channels (8 -> 4 -> 2: 4 tokens), projected to width 8."""
    base = dict(tokenizer="conv", conv_channels=(3, 4), pool="seq", dropout=0.0, attention_dropout=0.0,
                head_dropout=0.0)
    return dataclasses.replace(ViTConfig.tiny(num_classes=3), **{**base, **changes})


def data(size: int = 3, side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((size, side, side, 3)), rng.integers(0, 3, size)


@pytest.mark.parametrize("changes", [
    {},                                                     # projection to dim, seq pool
    dict(conv_channels=(5, 8), head_units=()),              # the last map is already dim wide: no projection
    dict(conv_channels=(4,), pool="cls", dropout=0.2, attention_dropout=0.2, head_dropout=0.2, drop_path=0.3),
    dict(pool="seq", class_token=True, fc_norm=True),
    dict(pool="gap", image_size=9),                          # 9 -> 5 -> 3: 9 tokens
])
def test_whole_model_gradients(changes) -> None:
    cfg = tiny_conv(**changes)
    model = ViT(cfg, dtype="float64", seed=1)
    images, labels = data(side=cfg.image_size)
    result = npvit.gradcheck_model(model, images, labels, max_checks=6, label_smoothing=0.1)
    assert result.passed and result.max_error < 1e-6
    assert "tokenizer.conv0.w" in result.names and ("attention_pool.w" in result.names) == (cfg.pool == "seq")
    assert ("tokenizer.proj.w" in result.names) == (cfg.conv_channels[-1] != cfg.dim)


def test_sizes_and_parameter_names() -> None:
    cfg = ViTConfig.compact()
    assert (cfg.grid_size, cfg.num_tokens, cfg.pooled_dim) == (8, 64, 64)
    model = ViT(cfg)
    assert model.num_params() == cfg.num_params() == 158_122
    shapes = {n: tuple(p.shape) for n, p in model.params.items()}
    assert shapes["tokenizer.conv0.w"] == (3, 3, 3, 32) and shapes["tokenizer.conv1.w"] == (3, 3, 32, 64)
    assert shapes["pos_embed"] == (64, 64) and shapes["attention_pool.w"] == (64, 1)
    assert not any(n.startswith("patch_embed") or n.startswith("tokenizer.proj") for n in shapes)
    cct = dataclasses.replace(cfg, conv_channels=(64, 128), dim=128, depth=2, key_dim=64, mlp_units=(128, 128))
    assert ViT(cct).num_params() == cct.num_params() == 284_490  # CCT-2/3x2: 0.28M, as its paper
    projected = tiny_conv()
    assert ViT(projected).num_params() == projected.num_params()


def test_he_normal_kernels() -> None:
    w = ViT(dataclasses.replace(ViTConfig.compact(), conv_channels=(256, 64)), seed=3).params["tokenizer.conv1.w"]
    assert abs(float(np.std(w)) - np.sqrt(2 / (9 * 256))) < 0.02 * np.sqrt(2 / (9 * 256))


def test_threads_and_pieces_change_nothing(monkeypatch) -> None:
    cfg = tiny_conv(conv_channels=(4, 8), image_size=16)
    images, labels = data(size=7, side=16)
    results = []
    for threads, piece_bytes in ((1, None), (2, None), (2, 1)):
        if piece_bytes:  # every piece one image
            monkeypatch.setattr(batched, "token_bytes_per_image", lambda config: 10**12)
        model = ViT(cfg, dtype="float64", seed=4, threads=threads)
        logits = model.forward(images, training=True)
        dimages = model.backward(npvit.cross_entropy_backward(npvit.cross_entropy_forward(logits, labels)[1]))
        results.append((logits, dimages, {n: g.copy() for n, g in model.grads.items()}))
    for logits, dimages, grads in results[1:]:
        np.testing.assert_allclose(logits, results[0][0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dimages, results[0][1], rtol=1e-11, atol=1e-14)
        for name, g in grads.items():
            np.testing.assert_allclose(g, results[0][2][name], rtol=1e-11, atol=1e-14, err_msg=name)


def test_conv_values_count_in_the_piece_size() -> None:
    cfg = ViTConfig.compact()
    assert batched.conv_values_per_image(cfg) == 16 * 16 * 9 * 32  # the second layer's im2col
    assert batched.token_bytes_per_image(cfg) == 16 * 16 * 9 * 32 * 4
    assert batched.conv_values_per_image(ViTConfig.fast()) == 0


def test_training_backward_skips_the_image_gradient() -> None:
    model = ViT(tiny_conv(), dtype="float64", threads=2)
    images, labels = data(size=4)
    dlogits = npvit.cross_entropy_backward(npvit.cross_entropy_forward(model.forward(images, training=True),
                                                                        labels)[1])
    assert model.backward(dlogits, input_grad=False) is None
    grads = {n: g.copy() for n, g in model.grads.items()}
    model.forward(images, training=True)
    assert model.backward(dlogits).shape == images.shape
    for name, g in model.grads.items():
        np.testing.assert_array_equal(g, grads[name], err_msg=name)


@pytest.mark.parametrize("changes,message", [
    (dict(conv_channels=()), "needs conv_channels"),
    (dict(conv_channels=(4, 0)), "needs conv_channels"),
    (dict(tokenizer="patch"), "belongs to tokenizer \"conv\""),
    (dict(tokenizer="cnn"), "tokenizer must be one of"),
    (dict(arrangement="timm"), "timm has no counterpart"),
    (dict(conv_channels=(2,) * 9), "too many"),
    (dict(pool="mean"), "pool must be one of"),
])
def test_config_refuses_what_does_not_fit(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_conv(**changes)


def test_old_configs_read_with_the_patch_tokenizer() -> None:
    doc = ViTConfig.fast().to_dict()
    del doc["tokenizer"], doc["conv_channels"]  # a config written before the fields existed
    assert ViTConfig.from_dict(doc) == ViTConfig.fast()
    assert ViTConfig.from_dict(ViTConfig.compact().to_dict()) == ViTConfig.compact()
