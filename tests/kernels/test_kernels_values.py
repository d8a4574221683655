"""Forward values of every kernel against independent, slow references written element by element."""

from __future__ import annotations

import math

import numpy as np
import pytest

import npvit
from npvit.backend import to_numpy
from npvit.kernels import (
    DropoutKey,
    attention_core_backward,
    attention_core_forward,
    cross_entropy_forward,
    dense_forward,
    dropout_forward,
    gelu_forward,
    layernorm_forward,
    mha_forward,
    patches_forward,
    softmax_forward,
)
from npvit.kernels.cross_entropy import check_labels


def test_patches_follow_extract_patches_layout(backend) -> None:
    # Reference: tf.image.extract_patches(sizes=strides=[1,P,P,1], padding="VALID") takes patch (r, c) of
    # the grid in row-major order and flattens it in (row, column, channel) order.
    b, h, w, c, p = 2, 9, 13, 3, 4  # 9x13 with P=4: a 2x3 grid, the leftover pixels dropped
    images = np.arange(b * h * w * c, dtype=np.float64).reshape(b, h, w, c)
    out = to_numpy(patches_forward(backend.asarray(images), p)[0])
    assert out.shape == (b, (h // p) * (w // p), p * p * c)
    for bi in range(b):
        for r in range(h // p):
            for col in range(w // p):
                n = r * (w // p) + col
                expected = [images[bi, r * p + i, col * p + j, ch] for i in range(p) for j in range(p) for ch in range(c)]
                assert np.array_equal(out[bi, n], expected)


@pytest.mark.parametrize("overlap", [1, 2])
def test_overlapping_patches_are_the_windows_around_each_cell(backend, overlap) -> None:
    # Patch (r, c) holds pixels [r P - O, r P + P + O) x [c P - O, c P + P + O), zero outside the image: what
    # a convolution of kernel P + 2 O, stride P and zero padding O reads.
    b, h, w, c, p, o = 2, 9, 13, 2, 4, overlap
    k = p + 2 * o
    images = np.arange(1, 1 + b * h * w * c, dtype=np.float64).reshape(b, h, w, c)  # no pixel is 0
    out = to_numpy(patches_forward(backend.asarray(images), p, o)[0])
    assert out.shape == (b, (h // p) * (w // p), k * k * c)

    def pixel(bi: int, y: int, x: int, ch: int) -> float:
        return images[bi, y, x, ch] if 0 <= y < h and 0 <= x < w else 0.0

    for bi in range(b):
        for r in range(h // p):
            for col in range(w // p):
                n = r * (w // p) + col
                expected = [pixel(bi, r * p - o + i, col * p - o + j, ch)
                            for i in range(k) for j in range(k) for ch in range(c)]
                assert np.array_equal(out[bi, n], expected)


def test_dense_matches_loops(backend, rng) -> None:
    x, w, bias = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    y = to_numpy(dense_forward(backend.asarray(x), backend.asarray(w), backend.asarray(bias))[0])
    for i in range(2):
        for j in range(3):
            for o in range(5):
                assert y[i, j, o] == pytest.approx(sum(x[i, j, k] * w[k, o] for k in range(4)) + bias[o], rel=1e-12)


def test_layernorm_matches_definition(backend, rng) -> None:
    x = rng.standard_normal((3, 7)) * 5 + 2
    g, b = rng.standard_normal(7), rng.standard_normal(7)
    y = to_numpy(layernorm_forward(backend.asarray(x), backend.asarray(g), backend.asarray(b), 1e-6)[0])
    for row in range(3):
        mu = sum(x[row]) / 7
        var = sum((v - mu) ** 2 for v in x[row]) / 7  # biased variance, as Keras and PyTorch use
        expected = [(x[row, k] - mu) / math.sqrt(var + 1e-6) * g[k] + b[k] for k in range(7)]
        np.testing.assert_allclose(y[row], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gelu_matches_formulas(backend, dtype) -> None:
    xs = np.linspace(-6, 6, 49)
    exact = to_numpy(gelu_forward(backend.asarray(xs, dtype=dtype), "erf")[0])
    approx = to_numpy(gelu_forward(backend.asarray(xs, dtype=dtype), "tanh")[0])
    assert exact.dtype == approx.dtype == np.dtype(dtype)
    ref_exact = [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in xs]
    ref_tanh = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in xs]
    tol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(exact, ref_exact, rtol=tol, atol=tol)
    np.testing.assert_allclose(approx, ref_tanh, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="unknown GELU kind"):
        gelu_forward(backend.asarray(xs), "relu")


def test_softmax_is_stable_and_normalised(backend) -> None:
    x = np.array([[1000.0, 1001.0, 1002.0], [-5.0, 0.0, 5.0]])
    y = to_numpy(softmax_forward(backend.asarray(x))[0])
    e = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(y[0], e / e.sum(), rtol=1e-14)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-15)


def test_dropout_statistics_and_scaling(backend) -> None:
    x = backend.asarray(np.ones((200, 500)), dtype="float32")
    y, (mask, scale) = dropout_forward(x, 0.25, DropoutKey(0))
    y, mask = to_numpy(y), to_numpy(mask)
    assert scale == pytest.approx(1 / 0.75)
    assert abs(mask.mean() - 0.75) < 0.01  # 100,000 draws: std of the mean is 0.0014
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert y.mean() == pytest.approx(1.0, abs=0.015)
    same, _ = dropout_forward(x, 0.0)
    assert same is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout_forward(x, 1.0, DropoutKey(0))


def test_dropout_masks_do_not_depend_on_dtype(backend) -> None:
    a = to_numpy(dropout_forward(backend.asarray(np.ones(1000), dtype="float32"), 0.5, DropoutKey(3))[1][0])
    b = to_numpy(dropout_forward(backend.asarray(np.ones(1000), dtype="float64"), 0.5, DropoutKey(3))[1][0])
    assert np.array_equal(a, b)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_definition(backend, rng, smoothing) -> None:
    z = rng.standard_normal((4, 6)) * 3
    labels = np.array([5, 0, 3, 3])
    loss = float(cross_entropy_forward(backend.asarray(z), backend.asarray(labels), smoothing)[0])
    total = 0.0
    for b in range(4):
        logsum = math.log(sum(math.exp(v) for v in z[b]))
        q = [(1 - smoothing) * (k == labels[b]) + smoothing / 6 for k in range(6)]
        total += -sum(q[k] * (z[b, k] - logsum) for k in range(6))
    assert loss == pytest.approx(total / 4, rel=1e-12)


def test_cross_entropy_rejects_bad_labels(backend) -> None:
    z = backend.asarray(np.zeros((3, 4)))
    for bad in ([0, 4, 1], [0, -1, 1]):
        # Values: on the host, once per dataset (check_labels); inside the loss too where that is free (NumPy).
        with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
            check_labels(np.array(bad), 4)
        if backend.name == "numpy":
            with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
                cross_entropy_forward(z, backend.asarray(np.array(bad)))
    with pytest.raises(ValueError, match="integers"):
        check_labels(np.array([0.0, 1.0]), 4)
    check_labels(np.array([0, 3, 3], dtype=np.uint8), 4)
    check_labels(np.array([], dtype=np.int64), 4)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        cross_entropy_forward(z, backend.asarray(np.array([0, 1])))
    with pytest.raises(ValueError, match="integers"):
        cross_entropy_forward(z, backend.asarray(np.array([0.0, 1.0, 2.0])))
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy_forward(z, backend.asarray(np.array([0, 1, 2])), 1.0)


def naive_attention(x, w_qkv, b_qkv, w_out, b_out, heads):
    """Keras MultiHeadAttention, one batch item and one head at a time."""
    bsz, n, _ = x.shape
    key_dim = w_qkv.shape[1] // (3 * heads)
    hd = heads * key_dim
    y = np.zeros((bsz, n, w_out.shape[1]))
    for b in range(bsz):
        qkv = x[b] @ w_qkv + b_qkv
        concat = []
        for h in range(heads):
            cols = slice(h * key_dim, (h + 1) * key_dim)
            q, k, v = qkv[:, :hd][:, cols], qkv[:, hd:2 * hd][:, cols], qkv[:, 2 * hd:][:, cols]
            s = (q / math.sqrt(key_dim)) @ k.T
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            concat.append(p @ v)
        y[b] = np.concatenate(concat, axis=1) @ w_out + b_out
    return y


def test_attention_matches_per_head_loop(backend, rng) -> None:
    dim, heads, key_dim = 8, 3, 5
    x = rng.standard_normal((2, 6, dim))
    w_qkv, b_qkv = rng.standard_normal((dim, 3 * heads * key_dim)), rng.standard_normal(3 * heads * key_dim)
    w_out, b_out = rng.standard_normal((heads * key_dim, dim)), rng.standard_normal(dim)
    args = [backend.asarray(a) for a in (x, w_qkv, b_qkv, w_out, b_out)]
    y, _, probs = mha_forward(*args, heads)
    np.testing.assert_allclose(to_numpy(y), naive_attention(x, w_qkv, b_qkv, w_out, b_out, heads), rtol=1e-10)
    assert probs.shape == (2, heads, 6, 6)
    np.testing.assert_allclose(to_numpy(probs).sum(axis=-1), 1.0, rtol=1e-12)


def test_attention_dropout_drops_probabilities(backend, rng) -> None:
    q, k, v = (backend.asarray(rng.standard_normal((2, 2, 5, 3))) for _ in range(3))
    o_train, p, cache = attention_core_forward(q, k, v, 0.5, DropoutKey(1))
    o_eval, p_eval, _ = attention_core_forward(q, k, v, 0.0)
    keep = to_numpy(cache[4][0]).swapaxes(-1, -2)  # the core keeps its matrices transposed
    assert 0 < keep.mean() < 1
    expected = (to_numpy(p) * keep * 2.0) @ to_numpy(v)
    np.testing.assert_allclose(to_numpy(o_train), expected, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(p), to_numpy(p_eval), rtol=0)


def test_attention_core_gives_the_same_numbers_chunk_by_chunk(rng, monkeypatch) -> None:
    """NumPy runs the core a few images at a time; one image per chunk must change nothing, dropout included
    (masks are keyed by image, so cutting the batch cannot change them)."""
    q, k, v, do = (rng.standard_normal((4, 2, 6, 3)) for _ in range(4))
    whole = attention_core_forward(q, k, v, 0.3, DropoutKey(2))
    grads_whole = attention_core_backward(do, whole[2])
    monkeypatch.setitem(npvit.parallel.CHUNK_BYTES, "l2", 1)
    chunked = attention_core_forward(q, k, v, 0.3, DropoutKey(2))
    grads_chunked = attention_core_backward(do, chunked[2])
    for a, b in zip((whole[0], whole[1], *grads_whole), (chunked[0], chunked[1], *grads_chunked)):
        np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-15)
    o_eval, p_eval, c_eval = attention_core_forward(q, k, v, return_probs=False)  # inference: nothing kept
    assert p_eval is None and c_eval is None
    np.testing.assert_allclose(o_eval, attention_core_forward(q, k, v)[0], rtol=1e-13)
