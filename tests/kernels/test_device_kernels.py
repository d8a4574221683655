"""kernels/device.py and attention_device.py: the CuPy path's few-launch kernels against their NumPy twins,
element by element, on the fake CuPy -- which runs each kernel's own C source (tests/support/fakekernels.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fakecupy import LAUNCHES, fake_cupy, from_fake, host_syncs, to_fake  # noqa: F401 (fixtures)

from npvit.kernels import (DropoutKey, dropout_backward, dropout_forward, gelu_backward, gelu_forward,
                           mha_backward, mha_forward, softmax_backward, softmax_forward)
from npvit.kernels import device
from npvit.kernels.random import drop_threshold, dropout_scale, keep_mask

F64 = dict(rtol=1e-12, atol=1e-12)


def test_dropout_draws_keep_masks_exactly_and_applies_them_in_one_kernel(fake_cupy, host_syncs) -> None:
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 5, 7, 9))
    key = DropoutKey(seed=11, site="blocks.0.mlp.drop0", first=3)
    LAUNCHES.reset()
    y, cache = dropout_forward(to_fake(x), 0.3, key)
    dx = dropout_backward(to_fake(dy), cache)
    assert LAUNCHES.total == 2 and host_syncs.gets == 0
    expected = from_fake(keep_mask(fake_cupy.cupy, 11, key.site, 3, x.shape, drop_threshold(0.3)))  # the stream
    keep = from_fake(cache[0])
    np.testing.assert_array_equal(keep, expected)
    assert 0.6 < keep.mean() < 0.8
    np.testing.assert_allclose(from_fake(y), x * dropout_scale(0.3) * keep, **F64)
    np.testing.assert_allclose(from_fake(dx), dy * dropout_scale(0.3) * keep, **F64)
    # A piece of the batch draws the rows of the whole batch (the key's first sample).
    _, piece = dropout_forward(to_fake(x[2:]), 0.3, key.shifted(2))
    np.testing.assert_array_equal(from_fake(piece[0]), keep[2:])


@pytest.mark.parametrize("kind", ["erf", "tanh", "none"])
@pytest.mark.parametrize("rate", [0.0, 0.25])
def test_bias_gelu_dropout_is_one_kernel_each_way_and_the_twins_values(fake_cupy, host_syncs, kind, rate) -> None:
    rng = np.random.default_rng(1)
    h, dy = rng.standard_normal((2, 4, 6, 10)) * 2
    b = rng.standard_normal(10)
    key = DropoutKey(seed=3, site="head.drop0")
    z = h + b
    y, c_gelu = gelu_forward(z, kind) if kind != "none" else (z, None)
    keep = np.ones(h.shape, bool)
    if rate:
        keep = from_fake(keep_mask(fake_cupy.cupy, 3, "head.drop0", 0, h.shape, drop_threshold(rate)))
        y = y * dropout_scale(rate) * keep
    dz = dy * (dropout_scale(rate) * keep if rate else 1)
    dz = gelu_backward(dz, c_gelu) if kind != "none" else dz
    LAUNCHES.reset()
    gy, cache = device.bias_act_forward(to_fake(h), to_fake(b), kind, rate, key if rate else None)
    gdz = device.bias_act_backward(to_fake(dy), cache)
    assert LAUNCHES.total == (1 if kind == "none" and not rate else 2) and host_syncs.gets == 0
    np.testing.assert_allclose(from_fake(gy), y, **F64)
    np.testing.assert_allclose(from_fake(gdz), dz, **F64)


def test_bias_gelu_backward_matches_finite_differences(fake_cupy) -> None:
    rng = np.random.default_rng(2)
    h, dy = rng.standard_normal((2, 3, 5))
    b = rng.standard_normal(5)
    for kind in ("erf", "tanh"):
        _, cache = device.bias_act_forward(to_fake(h), to_fake(b), kind)
        dz = from_fake(device.bias_act_backward(to_fake(dy), cache))
        eps, num = 1e-6, np.empty_like(h)
        for idx in np.ndindex(h.shape):
            hp, hm = h.copy(), h.copy()
            hp[idx] += eps
            hm[idx] -= eps
            fp = from_fake(device.bias_act_forward(to_fake(hp), to_fake(b), kind)[0])
            fm = from_fake(device.bias_act_forward(to_fake(hm), to_fake(b), kind)[0])
            num[idx] = ((fp - fm) * dy).sum() / (2 * eps)
        np.testing.assert_allclose(dz, num, rtol=1e-6, atol=1e-8)


def test_softmax_with_dropout_in_three_kernels_and_its_backward_in_two(fake_cupy, host_syncs) -> None:
    rng = np.random.default_rng(3)
    s, da = rng.standard_normal((2, 3, 2, 5, 7)) * 3
    key, rate = DropoutKey(seed=8, site="blocks.1.attn.attn_drop"), 0.2
    p, _ = softmax_forward(s, axis=-1, base2=True)
    keep = from_fake(keep_mask(fake_cupy.cupy, 8, key.site, 0, (3, 2, 7, 5), drop_threshold(rate))).swapaxes(-1, -2)
    c = dropout_scale(rate)
    ds = softmax_backward(da * keep * c, (p, -1))
    LAUNCHES.reset()
    gp, ga, gkeep = device.softmax_forward_device(to_fake(s), (rate, key))
    forward = LAUNCHES.total
    LAUNCHES.reset()
    gds = device.softmax_backward_device(to_fake(da), gp, gkeep, c)
    assert (forward, LAUNCHES.total) == (3, 2) and host_syncs.gets == 0
    np.testing.assert_array_equal(from_fake(gkeep), keep)
    np.testing.assert_allclose(from_fake(gp), p, **F64)
    np.testing.assert_allclose(from_fake(ga), p * keep * c, **F64)
    np.testing.assert_allclose(from_fake(gds), ds, **F64)
    gp, ga, _ = device.softmax_forward_device(to_fake(s))  # no dropout
    assert ga is None
    np.testing.assert_allclose(from_fake(gp), p, **F64)
    np.testing.assert_allclose(from_fake(device.softmax_backward_device(to_fake(da), gp)),
                               softmax_backward(da, (p, -1)), **F64)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_attention_on_the_gpu_path_gives_the_numpy_gradients(fake_cupy, host_syncs, rate) -> None:
    """Without dropout both paths compute the same numbers; with it the masks are the CuPy stream's, so the
    NumPy twin is given the very mask the kernel drew (through attention_core_forward's fixed-mask path)."""
    rng = np.random.default_rng(4)
    b, n, dim, heads = 2, 5, 8, 2
    x, dy = rng.standard_normal((2, b, n, dim))
    w_qkv, w_out = rng.standard_normal((dim, 3 * dim)) * 0.5, rng.standard_normal((dim, dim)) * 0.5
    b_qkv, b_out = rng.standard_normal(3 * dim), rng.standard_normal(dim)
    key = DropoutKey(seed=4, site="blocks.0.attn.attn_drop")
    args = [to_fake(a) for a in (w_qkv, b_qkv, w_out, b_out)]
    y, cache, _ = mha_forward(to_fake(x), *args, heads, rate, key if rate else None)
    grads = mha_backward(to_fake(dy), cache, args[0], args[2])
    assert host_syncs.gets == 0
    if rate:  # the NumPy twin with the kernel's mask: drawn (B, h, Tk, Tq) on the fake, then given as fixed
        import npvit.kernels.attention as attention
        mask = keep_mask(fake_cupy.cupy, 4, key.site, 0, (b, heads, n, n), drop_threshold(rate))
        real = attention.dropout_mask
        attention.dropout_mask = lambda *a, **k: from_fake(mask)
        try:
            ey, ecache, _ = mha_forward(x, w_qkv, b_qkv, w_out, b_out, heads, rate, key)
        finally:
            attention.dropout_mask = real
    else:
        ey, ecache, _ = mha_forward(x, w_qkv, b_qkv, w_out, b_out, heads)
    expected = mha_backward(dy, ecache, w_qkv, w_out)
    np.testing.assert_allclose(from_fake(y), ey, **F64)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(from_fake(g), e, **F64)


def test_qkv_layout_adds_the_bias_scales_the_query_and_splits_the_heads(fake_cupy) -> None:
    rng = np.random.default_rng(5)
    h, bias = rng.standard_normal((2, 3, 12)), rng.standard_normal(12)
    got = from_fake(device.qkv_layout(to_fake(h), to_fake(bias), 2, 0.5))
    expected = ((h + bias) * np.repeat([0.5, 1.0, 1.0], 4)).reshape(2, 3, 3, 2, 2).transpose(2, 0, 3, 1, 4)
    assert got.shape == (3, 2, 2, 3, 2) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind, rate", [("none", 0.0), ("erf", 0.25), ("tanh", 0.0)])
def test_the_residual_sum_rides_in_the_bias_kernel(fake_cupy, kind, rate) -> None:
    rng = np.random.default_rng(6)
    h, r = rng.standard_normal((2, 3, 4, 8))
    b = rng.standard_normal(8)
    key = DropoutKey(seed=2, site="blocks.0.mlp.drop1")
    plain, _ = device.bias_act_forward(to_fake(h), to_fake(b), kind, rate, key)
    LAUNCHES.reset()
    got, _ = device.bias_act_forward(to_fake(h), to_fake(b), kind, rate, key, residual=to_fake(r))
    assert LAUNCHES.total == 1
    np.testing.assert_allclose(from_fake(got), from_fake(plain) + r, **F64)


def test_the_residual_gradient_rides_in_the_layer_norm_backward_kernel(fake_cupy) -> None:
    from npvit.kernels import layernorm_backward, layernorm_forward

    rng = np.random.default_rng(7)
    x, dy, r = rng.standard_normal((3, 2, 5, 16))
    gamma, beta = rng.standard_normal((2, 16))
    _, cache = layernorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = layernorm_backward(dy, cache, gamma)
    _, (xhat, rstd) = layernorm_forward(to_fake(x), to_fake(gamma), to_fake(beta))
    got = device.layernorm_backward_device(to_fake(dy), xhat, rstd, to_fake(gamma), residual=to_fake(r))
    for g, e in zip(got, (dx + r, dgamma, dbeta)):
        np.testing.assert_allclose(from_fake(g), e, **F64)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_in_four_kernels_and_its_backward_in_one(fake_cupy, host_syncs, smoothing) -> None:
    from npvit.kernels import cross_entropy_backward, cross_entropy_forward

    rng = np.random.default_rng(9)
    logits, labels = rng.standard_normal((6, 5)) * 3, rng.integers(0, 5, 6)
    loss, cache = cross_entropy_forward(logits, labels, smoothing)
    dz = cross_entropy_backward(cache, 0.5)
    gloss, gcache = cross_entropy_forward(to_fake(logits), to_fake(labels), smoothing)  # makes the columns once
    LAUNCHES.reset()
    gloss, gcache = cross_entropy_forward(to_fake(logits), to_fake(labels), smoothing)
    gdz = cross_entropy_backward(gcache, 0.5)
    assert LAUNCHES.total == 5 and host_syncs.gets == 0
    np.testing.assert_allclose(from_fake(gloss), loss, **F64)
    np.testing.assert_allclose(from_fake(gcache[0]), cache[0], **F64)
    np.testing.assert_allclose(from_fake(gdz), dz, **F64)
