"""npvit.gradcheck_model: the whole model's gradients against finite differences, for users."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import npvit
import npvit.model.mlp


def tiny_model(dtype: str = "float64") -> npvit.ViT:
    cfg = dataclasses.replace(npvit.ViTConfig.tiny(num_classes=3), dropout=0.2, attention_dropout=0.2,
                              drop_path=0.3)
    return npvit.ViT(cfg, dtype=dtype, seed=0)


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 8, 8, 3)), np.array([0, 2, 1])


def test_passes_on_the_model_with_dropout_and_drop_path() -> None:
    model = tiny_model()
    before = {n: p.copy() for n, p in model.params.items()}
    result = npvit.gradcheck_model(model, *data(), max_checks=4, label_smoothing=0.1)
    assert result.passed and result.max_error < 1e-6
    assert result.names == list(model.params) + ["images"]
    assert all(np.array_equal(before[n], p) for n, p in model.params.items())  # restored after perturbing


def test_catches_a_wrong_backward_pass(monkeypatch) -> None:
    right = npvit.model.mlp.gelu_backward
    monkeypatch.setattr(npvit.model.mlp, "gelu_backward", lambda dy, cache: 1.01 * right(dy, cache))
    result = npvit.gradcheck_model(tiny_model(), *data(), names=["blocks.0.mlp.fc0.w"], images_too=False,
                                   max_checks=4, raise_on_failure=False)
    assert not result.passed and result.max_error > 1e-3
    assert "FAIL blocks.0.mlp.fc0.w" in result.report()
    with pytest.raises(AssertionError, match="gradient check failed"):
        npvit.gradcheck_model(tiny_model(), *data(), names=["blocks.0.mlp.fc0.w"], images_too=False, max_checks=2)


def test_refuses_what_it_cannot_check() -> None:
    images, labels = data()
    with pytest.raises(ValueError, match="needs a float64 model .* got float32.*dtype='float64'"):
        npvit.gradcheck_model(tiny_model("float32"), images, labels)
    with pytest.raises(ValueError, match=r"no parameters \['blocks.9.w'\]"):
        npvit.gradcheck_model(tiny_model(), images, labels, names=["blocks.9.w"])
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        npvit.gradcheck_model(tiny_model(), images, labels[:2])
