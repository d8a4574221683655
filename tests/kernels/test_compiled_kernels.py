"""kernels/compiled: every compiled kernel equals its NumPy twin, element by element.

The compiled tier runs float32 only (float64 arrays, the gradient checks' dtype, take the NumPy kernels), so
each compiled kernel is compared (a) with the NumPy kernel on the same float32 input and (b) with the NumPy
kernel in float64 on the same values, the one whose gradients tests/kernels/test_kernels_grad.py proves
against finite differences; and each backward pass is checked against central differences of its own
float32 forward pass along a random direction.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the compiled tier needs Numba (pip install numba)")

from npvit.kernels import (gelu_backward, gelu_forward, layernorm_backward, layernorm_forward,  # noqa: E402
                           softmax_backward, softmax_forward)
from npvit.kernels.compiled import kernel_tier_set  # noqa: E402

SHAPES = [(1, 1), (7, 5), (3, 17, 33), (2, 3, 64, 64), (5, 64)]
# float32 against float64, relative to each array's largest entry: a few float32 roundings (2^-24 = 6e-8)
# per element, the sums over a row (up to 64 terms) included
TOL = 2e-6


def _close(actual: np.ndarray, expected: np.ndarray, what: str, tol: float = TOL) -> None:
    assert actual.shape == expected.shape and actual.dtype == np.float32, what
    scale = max(float(np.abs(expected).max()), 1e-30)
    err = float(np.abs(actual.astype(np.float64) - expected).max()) / scale
    assert err <= tol, f"{what}: error {err:.2e} of the largest entry > {tol:.0e}"


def _data(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _compiled_and_numpy(f, *args):
    """f(*args) on the compiled tier, on the NumPy tier, and on the NumPy kernels in float64."""
    with kernel_tier_set("compiled"):
        got = f(*args)
    with kernel_tier_set("numpy"):
        same = f(*args)
    wide = f(*[a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args])
    return got, same, wide


def _directional(forward, backward, x: np.ndarray, seed: int, h: float = 1e-2) -> tuple[float, float]:
    """(<dx, v>, (L(x + h v) - L(x - h v)) / 2h) for L(x) = <dy, forward(x)>, in float64 sums of float32 values."""
    rng = np.random.default_rng(seed)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    v = rng.standard_normal(x.shape).astype(np.float32)
    dx = backward(dy, forward(x)[1])
    loss = [float(np.sum(dy.astype(np.float64) * forward((x + s * h * v).astype(np.float32))[0])) for s in (1, -1)]
    return float(np.sum(dx.astype(np.float64) * v)), (loss[0] - loss[1]) / (2 * h)


@pytest.mark.parametrize("shape", SHAPES)
def test_layernorm_compiled_equals_numpy(shape) -> None:
    x = _data(shape, 0, 3) + 1
    dy = _data(shape, 1)
    gamma, beta = _data(shape[-1:], 2) + 1, _data(shape[-1:], 3)

    def both(x, dy, gamma, beta):
        y, cache = layernorm_forward(x, gamma, beta)
        return (y, *cache, *layernorm_backward(dy, cache, gamma))

    got, same, wide = _compiled_and_numpy(both, x, dy, gamma, beta)
    for name, g, s, w in zip(("y", "xhat", "rstd", "dx", "dgamma", "dbeta"), got, same, wide):
        assert g.shape == s.shape
        if shape[-1] == 1:  # a single column: xhat is 0, rstd 1 / sqrt(eps) = 1000, and dx = 1000 (g - mean g)
            # is 0 but for the rounding of g = dy gamma, which a fused multiply-add may keep (1000 ulp of g)
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-4 if name == "dx" else 1e-6, err_msg=name)
            continue
        _close(g, w, name, 4 * TOL if name in ("dgamma", "dbeta") else TOL)
        _close(g, s.astype(np.float64), f"{name} against the float32 NumPy kernel", 8 * TOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("axis", [-1, -2])
@pytest.mark.parametrize("base2", [False, True])
def test_softmax_compiled_equals_numpy(shape, axis, base2) -> None:
    if len(shape) < 2:
        pytest.skip("two axes needed")
    x, dy = _data(shape, 4, 4), _data(shape, 5)

    def both(x, dy):
        y, cache = softmax_forward(x, axis=axis, base2=base2)
        return y, softmax_backward(dy, cache)

    got, same, wide = _compiled_and_numpy(both, x, dy)
    for name, g, s, w in zip(("y", "dx"), got, same, wide):
        _close(g, w, f"{name}, axis {axis}, base2 {base2}")
        _close(g, s.astype(np.float64), f"{name} against the float32 NumPy kernel", 2 * TOL)


def test_softmax_in_place_as_the_attention_core_calls_it() -> None:
    s, dp = _data((3, 2, 64, 64), 6, 5), _data((3, 2, 64, 64), 7)
    with kernel_tier_set("numpy"):
        y_ref, cache = softmax_forward(s, axis=-2, base2=True)
        dx_ref = softmax_backward(dp, cache)
    with kernel_tier_set("compiled"):
        buf, dbuf = s.copy(), dp.copy()
        y, cache = softmax_forward(buf, axis=-2, out=buf, base2=True)
        dx = softmax_backward(dbuf, cache, out=dbuf)
    assert y is buf and dx is dbuf  # in place, as asked
    _close(y, y_ref.astype(np.float64), "y")
    _close(dx, dx_ref.astype(np.float64), "dx", 2 * TOL)
    np.testing.assert_allclose(y.sum(axis=-2), 1, rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES + [(2, 1000, 3)])
def test_gelu_tanh_compiled_equals_numpy(shape) -> None:
    x, dy = _data(shape, 8, 3), _data(shape, 9)

    def both(x, dy):
        y, cache = gelu_forward(x, "tanh")
        return y, cache[1], gelu_backward(dy, cache)

    got, same, wide = _compiled_and_numpy(both, x, dy)
    (y, t, dx), (y64, t64, dx64), x64 = got, wide, x.astype(np.float64)
    # element by element: y = x sigmoid(2 u) to 1e-6 relative, against that form in float64 (NumPy's
    # x (1 + t) / 2 cancels for x << 0, to 0 below x = -6 even in float64), t to the tanh's bound, and dx to
    # the rounding of t (abs error 6e-8, times x u'(x)) and of its own few operations
    y_exact = x64 / (1 + np.exp(-2 * np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    np.testing.assert_allclose(y64, y_exact, rtol=1e-12, atol=1e-15)  # the NumPy kernel: to 1e-15 absolutely
    u = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)
    # 4e-7 |u|: u's float32 rounding (3e-7 |u| absolutely), amplified by exp(2 u) in sigmoid(2 u); 1e-36:
    # below x = -10.4 (|y| < 1e-37) exp(2 u) reaches its clamp, 2^127, and y is x 2^-127 or 0
    assert np.all(np.abs(y - y_exact) <= (1e-6 + 4e-7 * np.abs(u)) * np.abs(y_exact) + 1e-36), "y"
    assert np.all(np.abs(t - t64) <= 1.2e-7), "t"  # +-(1 - 2 r): absolutely, what the backward pass needs
    deriv_scale = 1 + np.abs(x64) * (1 + 3 * 0.044715 * x64 * x64)
    assert np.all(np.abs(dx - dx64) <= 2e-7 * np.abs(dy) * deriv_scale), "dx"
    # against the float32 NumPy kernel: t (its y and, through t, its dx cancel for x << 0, see above)
    _close(t, same[1].astype(np.float64), "tanh(u) against the float32 NumPy kernel")


def test_float64_and_cupy_never_take_the_compiled_kernels() -> None:
    x = np.random.default_rng(10).standard_normal((4, 8))
    with kernel_tier_set("compiled"):
        y, cache = gelu_forward(x, "tanh")
    with kernel_tier_set("numpy"):
        y_np, _ = gelu_forward(x, "tanh")
    np.testing.assert_array_equal(y, y_np)  # float64: the NumPy kernel on either tier, bit for bit
    # a strided float32 view is not C-contiguous: the NumPy kernel takes it too
    xs = np.random.default_rng(11).standard_normal((8, 16)).astype(np.float32)[:, ::2]
    with kernel_tier_set("compiled"):
        got, _ = softmax_forward(xs)
    with kernel_tier_set("numpy"):
        np.testing.assert_array_equal(got, softmax_forward(xs)[0])


@pytest.mark.parametrize("kernel", ["layernorm", "softmax-rows", "softmax-columns", "gelu"])
def test_compiled_backward_matches_central_differences_of_its_forward(kernel) -> None:
    x = _data((4, 6, 32), 12, 2)
    gamma, beta = _data((32,), 13) + 1, _data((32,), 14)
    pairs = {
        "layernorm": (lambda a: layernorm_forward(a, gamma, beta), lambda d, c: layernorm_backward(d, c, gamma)[0]),
        "softmax-rows": (lambda a: softmax_forward(a, axis=-1), softmax_backward),
        "softmax-columns": (lambda a: softmax_forward(a, axis=-2), softmax_backward),
        "gelu": (lambda a: gelu_forward(a, "tanh"), gelu_backward),
    }
    with kernel_tier_set("compiled"):
        analytic, numeric = _directional(*pairs[kernel], x, seed=15)
    assert abs(analytic - numeric) <= 2e-3 * max(abs(analytic), 1.0), (analytic, numeric)


def test_overflowing_activations_give_what_numpy_gives_not_nan() -> None:
    # A diverging run's activations: rows whose squares overflow float32, GELU inputs whose cubes do
    x = np.array([[3e19, -3e19, 1e19, 0.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    gamma, beta = np.ones(4, np.float32), np.full(4, 0.5, np.float32)
    big = np.array([1e13, -1e13, 3e38, -3e38, np.inf, 50.0, -50.0], np.float32)
    with kernel_tier_set("compiled"):
        ln, _ = layernorm_forward(x, gamma, beta)
        gelu, _ = gelu_forward(big, "tanh")
    with kernel_tier_set("numpy"), np.errstate(over="ignore", invalid="ignore"):
        ln_np, _ = layernorm_forward(x, gamma, beta)
        gelu_np, _ = gelu_forward(big, "tanh")
    np.testing.assert_array_equal(ln[0], ln_np[0])  # rstd 1/sqrt(inf) = 0: beta, as NumPy
    np.testing.assert_allclose(ln[1], ln_np[1], rtol=1e-6)
    assert np.all(np.isfinite(gelu[big != np.inf])) and gelu[4] == np.inf
    np.testing.assert_allclose(gelu[[0, 5]], gelu_np[[0, 5]], rtol=1e-6)  # x for large x
    assert gelu[2] == big[2]  # NumPy: x (1 + 1) / 2 overflows to inf on the way
    assert np.all(np.abs(gelu[[1, 3, 6]]) <= 1e-20)  # 0 for very negative x, to float32's tiniest


# ------------------------------------------------------------------ the convolutional tokenizer's loops
POOLS = [(3, 2, 1), (2, 2, 0), (3, 1, 1), (3, 3, 0)]  # (kernel, stride, padding); CCT's is the first


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 5, 7, 3), (3, 9, 8, 16), (2, 16, 16, 64)])
def test_conv_tokenizer_loops_equal_numpy_bit_for_bit(shape) -> None:
    # The loops add in the NumPy kernels' order, so equality is exact; ReLU outputs (many zeros) make ties,
    # where max-pooling's first-entry rule decides.
    from npvit.kernels import max_pool2d_backward, max_pool2d_forward, relu_backward
    from npvit.kernels.conv2d import col2im, conv2d_backward, conv2d_forward, im2col

    rng = np.random.default_rng(sum(shape))
    x = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    x[..., 0] = 0.0  # a channel of ties only
    dcols = rng.standard_normal((*shape[:3], 3, 3, shape[3])).astype(np.float32)
    w = rng.standard_normal((3, 3, shape[3], 5)).astype(np.float32)
    dy = rng.standard_normal((*shape[:3], 5)).astype(np.float32)

    def run() -> list[np.ndarray]:
        y, cache = conv2d_forward(x, w)
        dx, dw = conv2d_backward(dy, cache, w)
        out = [im2col(x, 3), np.ascontiguousarray(col2im(dcols, 3)), y, dx, dw, relu_backward(dy, y)]
        for k, s, p in POOLS:
            pooled, c = max_pool2d_forward(x, k, s, p)
            g = np.random.default_rng(k + s + p).standard_normal(pooled.shape).astype(np.float32)
            out += [pooled, np.ascontiguousarray(max_pool2d_backward(g, c))]
        return out

    with kernel_tier_set("compiled"):
        got = run()
    with kernel_tier_set("numpy"):
        same = run()
    for i, (a, b) in enumerate(zip(got, same)):
        assert a.dtype == np.float32 and a.shape == b.shape, i
        np.testing.assert_array_equal(a, b, err_msg=f"output {i}")


def test_max_pool_loops_keep_numpys_rule_for_nan_and_signs() -> None:
    from npvit.kernels import max_pool2d_backward, max_pool2d_forward, relu_backward

    x = np.array([[[[1.0], [np.nan], [2.0]], [[-1.0], [0.0], [-0.0]], [[3.0], [3.0], [-5.0]]]], np.float32)
    # NaN inputs make NaN maxima, whose gradient goes nowhere; dy stays finite: a NaN there spreads over its whole
    # window in the NumPy kernel (its masks multiply, NaN * 0) and reaches only the winner in the loop (as in
    # PyTorch), and either way the step is refused, its gradient norm not being finite.
    dy = np.array([-0.0, 1.5, 2.0, -3.0], np.float32).reshape(1, 2, 2, 1)
    results = []
    for tier in ("compiled", "numpy"):
        with kernel_tier_set(tier):
            y, c = max_pool2d_forward(x, 3, 2, 1)
            results.append((y, np.ascontiguousarray(max_pool2d_backward(dy, c)), relu_backward(x.copy(), x)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b))
