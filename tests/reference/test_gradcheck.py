"""The gradient checker itself: it must catch wrong gradients, not only pass right ones."""

from __future__ import annotations

import numpy as np
import pytest

from npvit import gradcheck


def test_passes_a_correct_gradient() -> None:
    x = np.random.default_rng(0).standard_normal(6)
    result = gradcheck(lambda x: np.sin(x) * x, lambda x, dy: (dy * (np.cos(x) * x + np.sin(x)),), [x])
    assert result.passed and result.max_error < 1e-8
    assert result.checked == [6] and "ok" in result.report()


def test_catches_a_wrong_gradient() -> None:
    x = np.random.default_rng(0).standard_normal(6)
    with pytest.raises(AssertionError, match="gradient check failed"):
        gradcheck(lambda x: x**3, lambda x, dy: (dy * 3 * x**2 * 1.001,), [x])  # off by 0.1%


def test_catches_one_wrong_element() -> None:
    def backward(x, dy):
        g = dy * 2 * x
        g[3] += 1e-4
        return (g,)

    x = np.random.default_rng(1).standard_normal(10)
    result = gradcheck(lambda x: x * x, backward, [x], raise_on_failure=False)
    assert not result.passed and "FAIL" in result.report()


def test_restores_inputs_and_samples_large_inputs() -> None:
    x = np.random.default_rng(2).standard_normal(500)
    before = x.copy()
    result = gradcheck(lambda x: np.tanh(x), lambda x, dy: (dy * (1 - np.tanh(x) ** 2),), [x],
                            max_checks=20)
    assert np.array_equal(x, before)
    assert 20 <= result.checked[0] <= 21 and result.sizes == [500]


def test_rejects_float32_and_skips_none() -> None:
    with pytest.raises(ValueError, match="float64"):
        gradcheck(lambda x: x, lambda x, dy: (dy,), [np.zeros(2, dtype=np.float32)])
    a, b = np.ones(2), np.ones(2)
    result = gradcheck(lambda a, b: a * b, lambda a, b, dy: (dy * b, None), [a, b])
    assert len(result.errors) == 1
