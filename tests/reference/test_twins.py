"""Every kernel of npvit.kernels and its twin in npvit.reference are called the same way and agree.

For each pair: the same arguments, the same returns, the same numbers (float64, random inputs) forward and
backward; where the caches mean the same, each backward pass accepts the other's cache; where they differ
(attention: docs/math.md section 15), a crossed call fails loudly instead of returning a wrong gradient.
"""

from __future__ import annotations

import numpy as np
import pytest

import npvit.kernels as K
import npvit.reference as R
from npvit.kernels import DropoutKey
from npvit.optim.adamw import AdamW

TOL = dict(rtol=1e-12, atol=1e-13)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(26)


def close(a, b) -> None:
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            close(x, y)
    else:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)


def swap(forward_args: tuple, dy, ref_pair, fast_pair, backward_extra: tuple = (), crossed: bool = True,
         **kwargs) -> None:
    """Both forward passes on the same arguments, both backward passes on their own caches, then on each
    other's: every result equal."""
    (rf, rb), (kf, kb) = ref_pair, fast_pair
    y_ref, c_ref = rf(*(a.copy() if isinstance(a, np.ndarray) else a for a in forward_args), **kwargs)
    y_fast, c_fast = kf(*(a.copy() if isinstance(a, np.ndarray) else a for a in forward_args), **kwargs)
    close(y_ref, y_fast)
    g_ref = rb(dy.copy(), c_ref, *backward_extra)
    close(g_ref, kb(dy.copy(), c_fast, *backward_extra))
    if crossed:
        close(g_ref, rb(dy.copy(), c_fast, *backward_extra))
        close(g_ref, kb(dy.copy(), c_ref, *backward_extra))


def test_dense(rng) -> None:
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    swap((x, w, b), rng.standard_normal((2, 3, 5)), (R.dense_forward, R.dense_backward),
         (K.dense_forward, K.dense_backward), (w,))


@pytest.mark.parametrize("eps", [None, 1e-3])
def test_layernorm(rng, eps) -> None:
    x, g, b = rng.standard_normal((2, 3, 6)) * 3 + 1, rng.standard_normal(6), rng.standard_normal(6)
    args = (x, g, b) if eps is None else (x, g, b, eps)  # the same default epsilon in both
    swap(args, rng.standard_normal((2, 3, 6)), (R.layernorm_forward, R.layernorm_backward),
         (K.layernorm_forward, K.layernorm_backward), (g,))


@pytest.mark.parametrize("kind", ["erf", "tanh"])
def test_gelu(rng, kind) -> None:
    x = rng.standard_normal((3, 7)) * 2
    swap((x, kind), rng.standard_normal((3, 7)), (R.gelu_forward, R.gelu_backward),
         (K.gelu_forward, K.gelu_backward))


@pytest.mark.parametrize("axis", [-1, -2])
def test_softmax(rng, axis) -> None:
    x = rng.standard_normal((2, 4, 5)) * 3
    swap((x, axis), rng.standard_normal((2, 4, 5)), (R.softmax_forward, R.softmax_backward),
         (K.softmax_forward, K.softmax_backward))


@pytest.mark.parametrize("how", ["key", "mask", "rate 0"])
def test_dropout(rng, how) -> None:
    x, dy = rng.standard_normal((6, 40)), rng.standard_normal((6, 40))
    pairs = (R.dropout_forward, R.dropout_backward), (K.dropout_forward, K.dropout_backward)
    if how == "key":
        swap((x, 0.3, DropoutKey(5, "site", 2)), dy, *pairs)
    elif how == "mask":
        swap((x, 0.3), dy, *pairs, mask=rng.random((6, 40)) >= 0.3)
    else:
        swap((x, 0.0), dy, *pairs)


@pytest.mark.parametrize("how", ["key", "mask"])
def test_drop_path(rng, how) -> None:
    x, dy = rng.standard_normal((8, 3, 4)), rng.standard_normal((8, 3, 4))
    pairs = (R.drop_path_forward, R.drop_path_backward), (K.drop_path_forward, K.drop_path_backward)
    if how == "key":
        swap((x, 0.5, DropoutKey(9, "blocks.0.drop_path1")), dy, *pairs)
    else:
        swap((x, 0.5), dy, *pairs, mask=rng.random((8, 1, 1)) >= 0.5)


@pytest.mark.parametrize("overlap", [0, 1])
def test_patches(rng, overlap) -> None:
    images = rng.standard_normal((2, 9, 9, 3))  # 9 = 2 * 4 + 1: a row and a column of pixels dropped
    k = 4 + 2 * overlap
    swap((images, 4, overlap), rng.standard_normal((2, 4, k * k * 3)), (R.patches_forward, R.patches_backward),
         (K.patches_forward, K.patches_backward))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(rng, smoothing) -> None:
    logits, labels = rng.standard_normal((5, 4)) * 2, np.array([0, 3, 1, 3, 2])
    ref, fast = R.cross_entropy_forward(logits, labels, smoothing), K.cross_entropy_forward(logits, labels, smoothing)
    close(ref[0], fast[0])
    for backward in (R.cross_entropy_backward, K.cross_entropy_backward):  # each on both caches
        for cache in (ref[1], fast[1]):
            close(backward(cache, 0.7), R.cross_entropy_backward(ref[1], 0.7))


@pytest.mark.parametrize("rate", [0.0, 0.2])
def test_attention(rng, rate) -> None:
    """reference attention_forward and the fast mha_forward: same arguments, (y, cache, P), same gradients.
    Their caches differ (the fast one holds the scaled query and the backend's score layout): crossed calls
    raise."""
    heads, d, tokens, dim = 2, 3, 5, 4
    x, dy = rng.standard_normal((3, tokens, dim)), rng.standard_normal((3, tokens, dim))
    w_qkv, b_qkv = rng.standard_normal((dim, 3 * heads * d)), rng.standard_normal(3 * heads * d)
    w_out, b_out = rng.standard_normal((heads * d, dim)), rng.standard_normal(dim)
    args = (x, w_qkv, b_qkv, w_out, b_out, heads, rate, DropoutKey(4, "blocks.0.attn.attn_drop"))
    y_ref, c_ref, p_ref = R.attention_forward(*args)
    y_fast, c_fast, p_fast = K.mha_forward(*args)
    close(y_ref, y_fast)
    close(p_ref, p_fast)
    close(R.attention_backward(dy, c_ref, w_qkv, w_out), K.mha_backward(dy, c_fast, w_qkv, w_out))
    with pytest.raises(TypeError, match="mha_forward"):
        K.mha_backward(dy, c_ref, w_qkv, w_out)
    with pytest.raises(TypeError, match="attention_forward"):
        R.attention_backward(dy, c_fast, w_qkv, w_out)


def test_the_gelu_kind_travels_in_the_cache(rng) -> None:
    """After a tanh forward pass, the backward pass computes the tanh derivative with no kind given, and
    refuses a contradicting kind instead of applying the erf formula to tanh data."""
    x, dy = rng.standard_normal(50) * 2, rng.standard_normal(50)
    for forward, backward in ((K.gelu_forward, K.gelu_backward), (R.gelu_forward, R.gelu_backward)):
        _, cache = forward(x, "tanh")
        t = np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))
        exact = dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x * x))
        np.testing.assert_allclose(backward(dy, cache), exact, rtol=1e-13)
    with pytest.raises(ValueError, match="'erf'.*'tanh'"):
        K.gelu_backward(dy, K.gelu_forward(x, "tanh")[1], "erf")
    with pytest.raises(TypeError, match="gelu_forward returned"):
        K.gelu_backward(dy, (x, x))  # a cache without its kind


def test_wrong_caches_fail_loudly(rng) -> None:
    y, dy = rng.random((2, 3)), rng.random((2, 3))
    with pytest.raises(TypeError, match="softmax_forward returned"):
        K.softmax_backward(dy, y)  # the output alone, without the axis it was normalised over
    with pytest.raises(ValueError, match="mask="):
        R.dropout_forward(y, y > 0.5, 0.1)  # the reference's former (x, keep, rate) order


@pytest.mark.parametrize("option", ["decay_convention", "epsilon_convention"])
def test_reference_adamw_refuses_unknown_conventions(option) -> None:
    params, grads = {"w": np.ones(3)}, {"w": np.ones(3)}
    state = R.adamw_init(params)
    with pytest.raises(ValueError, match=f"{option} must be one of .* got 'Keras'"):
        R.adamw_step(params, grads, state, **{option: "Keras"})
    assert state.t == 0 and np.array_equal(params["w"], np.ones(3))  # refused before anything changed
    with pytest.raises(ValueError, match=f"{option} must be one of .* got 'Keras'"):
        AdamW(params, **{option: "Keras"})  # as the fast optimizer refuses it
