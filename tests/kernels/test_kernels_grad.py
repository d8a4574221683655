"""Every kernel's backward pass, every input and parameter, against central finite differences (float64).

Each check uses a random output gradient dy, so the whole Jacobian is exercised, and a relative error bound
of 1e-6 (the measured errors are around 1e-9 and below).
"""

from __future__ import annotations

import numpy as np
import pytest

import npvit
from npvit import gradcheck
from npvit.kernels import (
    DropoutKey,
    attention_core_backward,
    attention_core_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    dense_backward,
    dense_forward,
    dropout_backward,
    dropout_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    mha_backward,
    mha_forward,
    patches_backward,
    patches_forward,
    softmax_backward,
    softmax_forward,
)

RTOL = 1e-6


def arr(backend: npvit.Backend, rng: np.random.Generator, *shape: int, scale: float = 1.0):
    return backend.asarray(rng.standard_normal(shape) * scale, dtype="float64")


def test_dense(backend, rng) -> None:
    x, w, b = arr(backend, rng, 2, 3, 5), arr(backend, rng, 5, 4), arr(backend, rng, 4)
    gradcheck(
        lambda x, w, b: dense_forward(x, w, b)[0],
        lambda x, w, b, dy: dense_backward(dy, dense_forward(x, w, b)[1], w),
        [x, w, b], rtol=RTOL, names=["x", "w", "b"],
    )


def test_layernorm(backend, rng) -> None:
    x, g, b = arr(backend, rng, 3, 2, 6), arr(backend, rng, 6), arr(backend, rng, 6)
    gradcheck(
        lambda x, g, b: layernorm_forward(x, g, b, 1e-6)[0],
        lambda x, g, b, dy: layernorm_backward(dy, layernorm_forward(x, g, b, 1e-6)[1], g),
        [x, g, b], rtol=RTOL, names=["x", "gamma", "beta"],
    )


@pytest.mark.parametrize("kind", ["erf", "tanh"])
def test_gelu(backend, rng, kind) -> None:
    x = arr(backend, rng, 4, 7, scale=2.0)
    gradcheck(
        lambda x: gelu_forward(x, kind)[0],
        lambda x, dy: (gelu_backward(dy, gelu_forward(x, kind)[1]),),
        [x], rtol=RTOL,
    )


def test_softmax(backend, rng) -> None:
    x = arr(backend, rng, 2, 3, 5, scale=3.0)
    gradcheck(
        lambda x: softmax_forward(x)[0],
        lambda x, dy: (softmax_backward(dy, softmax_forward(x)[1]),),
        [x], rtol=RTOL,
    )


def test_dropout_with_fixed_mask(backend, rng) -> None:
    x = arr(backend, rng, 5, 6)
    mask = backend.asarray(rng.random((5, 6)) >= 0.3)
    assert 0 < int(mask.sum()) < mask.size
    gradcheck(
        lambda x: dropout_forward(x, 0.3, mask=mask)[0],
        lambda x, dy: (dropout_backward(dy, dropout_forward(x, 0.3, mask=mask)[1]),),
        [x], rtol=RTOL,
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(backend, rng, smoothing) -> None:
    z = arr(backend, rng, 4, 5, scale=2.0)
    labels = backend.asarray(np.array([0, 4, 2, 2]))
    gradcheck(
        lambda z: cross_entropy_forward(z, labels, smoothing)[0],
        lambda z, dy: (cross_entropy_backward(cross_entropy_forward(z, labels, smoothing)[1], float(dy)),),
        [z], rtol=RTOL,
    )


@pytest.mark.parametrize("size", [8, 9])  # 9: VALID padding drops the last pixel row and column
@pytest.mark.parametrize("overlap", [0, 1, 3])  # overlapping windows: pixels shared by up to 4 patches a side
def test_patches(backend, rng, size, overlap) -> None:
    images = arr(backend, rng, 2, size, size, 3)
    gradcheck(
        lambda im: patches_forward(im, 4, overlap)[0],
        lambda im, dy: (patches_backward(dy, patches_forward(im, 4, overlap)[1]),),
        [images], rtol=RTOL,
    )


@pytest.fixture(params=["whole batch", "one image per chunk"])
def score_chunks(request, monkeypatch):
    """Run the attention core on the whole batch at once, and again one image at a time (its NumPy path for
    batches whose scores outgrow the cache)."""
    if request.param == "one image per chunk":
        monkeypatch.setitem(npvit.parallel.CHUNK_BYTES, "l2", 1)
    return request.param


@pytest.mark.parametrize("rate", [0.0, 0.25])
def test_attention_core(backend, rng, rate, score_chunks) -> None:
    q, k, v = (arr(backend, rng, 3, 2, 5, 4) for _ in range(3))
    seed = 11  # the same dropout mask at every evaluation

    def forward(q, k, v):
        return attention_core_forward(q, k, v, rate, DropoutKey(seed))[0]

    def backward(q, k, v, do):
        return attention_core_backward(do, attention_core_forward(q, k, v, rate, DropoutKey(seed))[2])

    gradcheck(forward, backward, [q, k, v], rtol=RTOL, names=["q", "k", "v"])


def test_attention_core_with_a_prescaled_query(backend, rng) -> None:
    """q_scale: the query arrives multiplied by a factor; the output is unchanged and the gradient is the one
    with respect to the query given."""
    q, k, v = (arr(backend, rng, 2, 2, 5, 4) for _ in range(3))
    expected = attention_core_forward(q, k, v)[0]
    np.testing.assert_allclose(npvit.backend.to_numpy(attention_core_forward(q * 0.3, k, v, q_scale=0.3)[0]),
                               npvit.backend.to_numpy(expected), rtol=1e-12)
    gradcheck(
        lambda q, k, v: attention_core_forward(q, k, v, q_scale=0.3)[0],
        lambda q, k, v, do: attention_core_backward(do, attention_core_forward(q, k, v, q_scale=0.3)[2]),
        [q, k, v], rtol=RTOL, names=["q", "k", "v"],
    )


@pytest.mark.parametrize("rate", [0.0, 0.25])
def test_multi_head_attention(backend, rng, rate, score_chunks) -> None:
    dim, heads, key_dim = 6, 2, 5  # key_dim need not be dim / heads (Keras semantics)
    x = arr(backend, rng, 2, 4, dim)
    w_qkv, b_qkv = arr(backend, rng, dim, 3 * heads * key_dim, scale=0.5), arr(backend, rng, 3 * heads * key_dim)
    w_out, b_out = arr(backend, rng, heads * key_dim, dim, scale=0.5), arr(backend, rng, dim)
    seed = 5

    def forward(x, wq, bq, wo, bo):
        return mha_forward(x, wq, bq, wo, bo, heads, rate, DropoutKey(seed))[0]

    def backward(x, wq, bq, wo, bo, dy):
        cache = mha_forward(x, wq, bq, wo, bo, heads, rate, DropoutKey(seed))[1]
        return mha_backward(dy, cache, wq, wo)

    gradcheck(forward, backward, [x, w_qkv, b_qkv, w_out, b_out], rtol=RTOL,
                   names=["x", "w_qkv", "b_qkv", "w_out", "b_out"])
