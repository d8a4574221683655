"""CCT's kernels (conv2d, relu, max_pool2d, seq_pool): float64 gradient checks, element-by-element loops, and
PyTorch (nn.functional.conv2d, max_pool2d, softmax) in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import npvit
from npvit import gradcheck
from npvit.backend import to_numpy
from npvit.kernels import (
    conv2d_backward,
    conv2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
    pool_output_size,
    relu_backward,
    relu_forward,
    seq_pool_backward,
    seq_pool_forward,
)

RTOL = 1e-6


def arr(backend: npvit.Backend, rng: np.random.Generator, *shape: int, scale: float = 1.0):
    return backend.asarray(rng.standard_normal(shape) * scale, dtype="float64")


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_()


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


# ---- gradient checks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 5])
def test_conv2d_gradients(backend, rng, k) -> None:
    x, w = arr(backend, rng, 2, 5, 4, 3), arr(backend, rng, k, k, 3, 4)
    gradcheck(lambda x, w: conv2d_forward(x, w)[0],
              lambda x, w, dy: conv2d_backward(dy, conv2d_forward(x, w)[1], w),
              [x, w], rtol=RTOL, names=["x", "w"])


def test_conv2d_without_the_input_gradient(backend, rng) -> None:
    x, w = arr(backend, rng, 2, 4, 4, 3), arr(backend, rng, 3, 3, 3, 5)
    y, cache = conv2d_forward(x, w)
    dy = arr(backend, rng, *y.shape)
    dx, dw = conv2d_backward(dy, cache, w, need_dx=False)
    assert dx is None
    np.testing.assert_array_equal(to_numpy(dw), to_numpy(conv2d_backward(dy, cache, w)[1]))


def test_relu_gradients(backend, rng) -> None:
    x = arr(backend, rng, 3, 4, 5)
    x[abs(x) < 0.05] = 0.5  # finite differences straddling the kink would be meaningless
    gradcheck(lambda x: relu_forward(x)[0], lambda x, dy: (relu_backward(dy, relu_forward(x)[1]),), [x], rtol=RTOL)


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (2, 3)])
def test_max_pool_gradients(backend, rng, size) -> None:
    x = arr(backend, rng, 2, *size, 3)  # distinct values: the argmax is stable under the finite-difference step
    gradcheck(lambda x: max_pool2d_forward(x)[0],
              lambda x, dy: (max_pool2d_backward(dy, max_pool2d_forward(x)[1]),), [x], rtol=RTOL)


def test_seq_pool_gradients(backend, rng) -> None:
    x, g = arr(backend, rng, 3, 5, 4), arr(backend, rng, 4)
    gradcheck(lambda x, g: seq_pool_forward(x, g)[0],
              lambda x, g, dy: seq_pool_backward(dy, seq_pool_forward(x, g)[1], g),
              [x, g], rtol=RTOL, names=["x", "g"])


def test_seq_pool_ignores_a_score_offset(rng) -> None:
    """Why the kernel has no bias: a constant added to the scores changes nothing (its gradient is 0)."""
    x, g = rng.standard_normal((3, 5, 4)), rng.standard_normal(4)
    x1 = np.concatenate([x, np.ones((3, 5, 1))], axis=2)  # a constant feature: its weight acts as a bias
    y, _ = seq_pool_forward(x1, np.append(g, 2.5))
    np.testing.assert_allclose(y[:, :4], seq_pool_forward(x, g)[0], rtol=1e-14)


# ---- element by element ---------------------------------------------------------------------------------------
def test_conv2d_element_by_element(rng) -> None:
    x, w = rng.standard_normal((2, 5, 4, 3)), rng.standard_normal((3, 3, 3, 2))
    y, _ = conv2d_forward(x, w)
    expected = np.zeros((2, 5, 4, 2))
    for b in range(2):
        for r in range(5):
            for c in range(4):
                for o in range(2):
                    for i in range(3):
                        for j in range(3):
                            rr, cc = r + i - 1, c + j - 1
                            if 0 <= rr < 5 and 0 <= cc < 4:
                                expected[b, r, c, o] += x[b, rr, cc] @ w[i, j, :, o]
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)


def test_relu_element_by_element(rng) -> None:
    x = rng.standard_normal(50)
    x[:5] = 0.0
    y, cache = relu_forward(x.copy())
    assert list(y) == [v if v > 0 else 0.0 for v in x]
    dy = rng.standard_normal(50)
    assert list(relu_backward(dy, cache)) == [d if v > 0 else 0.0 for d, v in zip(dy, x)]
    z = x.copy()
    assert relu_forward(z, out=z)[0] is z and list(z) == list(y)  # in place


def test_max_pool_element_by_element_with_ties(rng) -> None:
    """Windows full of zeros (a ReLU's output) and repeated maxima: the first in row-major order takes the
    gradient, as in PyTorch."""
    x = np.maximum(rng.integers(-3, 3, size=(2, 7, 6, 2)).astype(np.float64), 0)
    y, cache = max_pool2d_forward(x)
    ho, wo = pool_output_size(7), pool_output_size(6)
    assert y.shape == (2, ho, wo, 2) == (2, 4, 3, 2)
    dy = rng.standard_normal(y.shape)
    dx = max_pool2d_backward(dy, cache)
    expected_y, expected_dx = np.zeros_like(y), np.zeros_like(x)
    for b in range(2):
        for r in range(ho):
            for c in range(wo):
                for ch in range(2):
                    best, where = -np.inf, None
                    for i in range(3):
                        for j in range(3):
                            rr, cc = 2 * r + i - 1, 2 * c + j - 1
                            if 0 <= rr < 7 and 0 <= cc < 6 and x[b, rr, cc, ch] > best:
                                best, where = x[b, rr, cc, ch], (rr, cc)
                    expected_y[b, r, c, ch] = best
                    expected_dx[b, where[0], where[1], ch] += dy[b, r, c, ch]
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-15, atol=1e-15)


def test_seq_pool_element_by_element(rng) -> None:
    x, g = rng.standard_normal((2, 5, 3)), rng.standard_normal(3)
    y, _ = seq_pool_forward(x, g)
    for n in range(2):
        scores = [float(x[n, t] @ g) for t in range(5)]
        weights = np.exp(scores) / np.exp(scores).sum()
        np.testing.assert_allclose(y[n], sum(weights[t] * x[n, t] for t in range(5)), rtol=1e-14)


# ---- against PyTorch, float64 -------------------------------------------------------------------------------
@pytest.mark.parametrize("cin,cout", [(3, 4), (5, 2)])
def test_conv2d_against_torch(rng, cin, cout) -> None:
    x, w = rng.standard_normal((2, 6, 5, cin)), rng.standard_normal((3, 3, cin, cout))
    y, cache = conv2d_forward(x, w)
    dy = rng.standard_normal(y.shape)
    tx, tw = nchw(x), torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))).requires_grad_()
    ty = F.conv2d(tx, tw, padding=1)
    ty.backward(torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2))))
    dx, dw = conv2d_backward(dy, cache, w)
    np.testing.assert_allclose(y, nhwc(ty), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, nhwc(tx.grad), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, tw.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [(8, 8), (9, 7), (1, 2)])
def test_max_pool_against_torch(rng, size) -> None:
    """After a ReLU (ties everywhere): the same maxima, and the gradient routed to the very same pixels."""
    x = np.maximum(rng.standard_normal((2, *size, 3)), 0)
    x[0, :3, :3] = 0.0  # a window of zeros
    y, cache = max_pool2d_forward(x)
    dy = rng.standard_normal(y.shape)
    tx = nchw(x)
    ty = F.max_pool2d(tx, 3, 2, 1)
    ty.backward(torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2))))
    dx = max_pool2d_backward(dy, cache)
    np.testing.assert_array_equal(y, nhwc(ty))
    torch_dx = nhwc(tx.grad)
    np.testing.assert_array_equal(dx != 0, torch_dx != 0)  # the same pixels take the gradient
    np.testing.assert_allclose(dx, torch_dx, rtol=1e-15, atol=1e-15)  # sums of a few values, in another order


def test_seq_pool_against_torch(rng) -> None:
    x, g = rng.standard_normal((3, 6, 4)), rng.standard_normal(4)
    y, cache = seq_pool_forward(x, g)
    dy = rng.standard_normal(y.shape)
    tx, tg = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, g))
    weights = torch.softmax(tx @ tg, dim=1)  # (B, T)
    ty = (weights[:, None, :] @ tx)[:, 0]
    ty.backward(torch.from_numpy(dy))
    for ours, theirs in zip((y, *seq_pool_backward(dy, cache, g)), (ty, tx.grad, tg.grad)):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-12, atol=1e-13)


def test_conv2d_refuses_a_kernel_that_does_not_fit(rng) -> None:
    with pytest.raises(ValueError, match="odd square kernel"):
        conv2d_forward(rng.standard_normal((1, 4, 4, 3)), rng.standard_normal((2, 2, 3, 4)))
    with pytest.raises(ValueError, match="Cin is the input's channels"):
        conv2d_forward(rng.standard_normal((1, 4, 4, 2)), rng.standard_normal((3, 3, 3, 4)))
