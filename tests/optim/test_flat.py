"""FlatDict: named views into one flat buffer; the model's parameters, gradients and AdamW's moments use it."""

from __future__ import annotations

import numpy as np
import pytest

import npvit
from npvit import ViT, ViTConfig
from npvit.optim.flat import FlatDict


def test_views_share_one_buffer_and_assignment_copies() -> None:
    d = FlatDict.zeros(np, {"w": (2, 3), "b": (3,)}, np.float32)
    assert d.flat.shape == (9,) and d["w"].shape == (2, 3) and d["b"].shape == (3,)
    w = d["w"]
    d["w"] = np.arange(6).reshape(2, 3)
    assert d["w"] is w  # the same view, filled in place
    np.testing.assert_array_equal(d.flat[:6], np.arange(6))
    d.update(b=[7, 8, 9])
    np.testing.assert_array_equal(d.flat[6:], [7, 8, 9])
    like = d.zeros_like()
    assert like.layout == d.layout and not like.flat.any() and d.same_layout(like)
    with pytest.raises(KeyError, match="not one of"):
        d["new"] = np.zeros(1)
    with pytest.raises(TypeError):
        del d["w"]
    with pytest.raises(TypeError):
        d.pop("w")


def test_model_params_and_grads_are_flat() -> None:
    model = ViT(ViTConfig.tiny(), seed=0)
    assert isinstance(model.params, FlatDict) and isinstance(model.grads, FlatDict)
    assert model.params.same_layout(model.grads) and model.params.flat.size == model.num_params()
    for name, p in model.params.items():
        assert np.shares_memory(p, model.params.flat), name


def test_backward_fills_the_flat_gradient_buffer() -> None:
    model = ViT(ViTConfig.tiny(), dtype="float64", seed=0, threads=2)
    images = np.random.default_rng(0).standard_normal((4, 8, 8, 3))
    logits = model.forward(images, training=True, dropout_seed=1)
    _, cache = npvit.cross_entropy_forward(logits, np.array([0, 1, 2, 3]))
    model.backward(npvit.cross_entropy_backward(cache))
    stacked = np.concatenate([g.reshape(-1) for g in model.grads.values()])
    np.testing.assert_array_equal(model.grads.flat, stacked)
    assert np.count_nonzero(model.grads.flat) > 0.9 * stacked.size  # every parameter's gradient arrived
