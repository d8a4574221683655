"""kernels/compiled/approx.py: the float32 exp2 and tanh polynomials hold the error bounds their docstring states."""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="the compiled tier needs Numba (pip install numba)")

from npvit.kernels.compiled.approx import FASTMATH, exp2_f32, tanh_f32, tanh_sigmoid_f32  # noqa: E402

EXP2_BOUND = 2e-7  # relative, on [-126, 127]
TANH_BOUND = 4e-7  # relative, everywhere


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def _exp2(x, y):  # pragma: no cover - compiled
    for i in range(x.size):
        y[i] = exp2_f32(x[i])


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def _tanh(x, y):  # pragma: no cover - compiled
    for i in range(x.size):
        y[i] = tanh_f32(x[i])


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def _sigmoid2(x, y):  # pragma: no cover - compiled
    for i in range(x.size):
        y[i] = tanh_sigmoid_f32(x[i])[1]


def _apply(f, x: np.ndarray) -> np.ndarray:
    y = np.empty_like(x)
    f(x, y)
    return y


def test_exp2_is_within_its_bound_over_the_normal_range() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-126, 127, 2_000_003), rng.uniform(-2, 2, 500_000),
                        np.arange(-126, 128), np.arange(-126, 127) + 0.5]).astype(np.float32)
    y = _apply(_exp2, x)
    rel = np.abs(y / np.exp2(x.astype(np.float64)) - 1)
    assert rel.max() <= EXP2_BOUND, f"exp2: relative error {rel.max():.2e} at x = {x[rel.argmax()]}"
    assert np.all(np.isfinite(y)) and y.dtype == np.float32


def test_exp2_clamps_below_the_normal_range_instead_of_returning_garbage() -> None:
    x = np.array([-126.0, -127.0, -150.0, -1e30, -np.inf], dtype=np.float32)
    y = _apply(_exp2, x)
    np.testing.assert_allclose(y, np.float32(2.0 ** -126), rtol=EXP2_BOUND)  # the softmax's tails: tiny, not 0
    assert _apply(_exp2, np.array([0.0], np.float32))[0] == 1.0


def test_tanh_is_within_its_bound_for_small_large_and_clamped_inputs() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([np.linspace(-10, 10, 2_000_001), np.linspace(-1e-3, 1e-3, 200_001),
                        rng.standard_normal(500_000) * 3, [1e-30, -1e-30, 7.9, 8.0, 50.0, -50.0, 1e30]])
    x = x.astype(np.float32)
    x = x[x != 0]
    y = _apply(_tanh, x)
    expected = np.tanh(x.astype(np.float64))
    rel = np.abs(y / expected - 1)
    assert rel.max() <= TANH_BOUND, f"tanh: relative error {rel.max():.2e} at x = {x[rel.argmax()]}"
    assert np.all(np.abs(y) <= 1) and np.all(np.sign(y) == np.sign(x))
    assert _apply(_tanh, np.array([0.0], np.float32))[0] == 0.0


def test_sigmoid_of_twice_x_is_within_the_tanh_bound_also_where_one_plus_tanh_cancels() -> None:
    # down to x = -40 (sigmoid 2e-35; below, 1 / (exp(2 |x|) + 1) nears float32's smallest normal number);
    # 1.5e-7 |x|: the rounding of 2 |x| log2(e), amplified by exp2
    x = np.concatenate([np.linspace(-40, 20, 2_000_001), np.linspace(-1e-3, 1e-3, 20_001)]).astype(np.float32)
    y = _apply(_sigmoid2, x)
    x64 = x.astype(np.float64)
    expected = 1 / (1 + np.exp(-2 * x64))  # (1 + tanh x) / 2
    rel = np.abs(y / expected - 1) / (TANH_BOUND + 1.5e-7 * np.abs(x64))
    assert rel.max() <= 1, f"sigmoid(2x): relative error {rel.max():.2e} at x = {x[rel.argmax()]}"


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def _tanh_of_pair(x, y):  # pragma: no cover - compiled
    for i in range(x.size):
        y[i] = tanh_sigmoid_f32(x[i])[0]


def test_the_gelus_tanh_is_within_its_absolute_bound() -> None:
    x = np.concatenate([np.linspace(-12, 12, 2_000_001), np.linspace(-1e-3, 1e-3, 20_001)]).astype(np.float32)
    err = np.abs(_apply(_tanh_of_pair, x) - np.tanh(x.astype(np.float64)))
    assert err.max() <= 1.2e-7, f"tanh of the pair: absolute error {err.max():.2e} at x = {x[err.argmax()]}"
