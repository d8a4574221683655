"""kernels/fused.py: GELU and layer norm on the CuPy path in fewer kernels, computing what NumPy computes."""

from __future__ import annotations

import numpy as np
import pytest

from fakecupy import LAUNCHES, fake_cupy, from_fake, host_syncs, to_fake  # noqa: F401 (fixtures)

from npvit.kernels import gelu_backward, gelu_forward, layernorm_backward, layernorm_forward


@pytest.mark.parametrize("kind", ["tanh", "erf"])
def test_gelu_on_the_gpu_path_is_one_kernel_each_way_and_numpys_values(fake_cupy, host_syncs, kind) -> None:
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 6, 33)) * 3
    y, cache = gelu_forward(x, kind)
    dx = gelu_backward(dy, cache, kind)
    LAUNCHES.reset()
    gy, gcache = gelu_forward(to_fake(x), kind)
    forward = LAUNCHES.total
    LAUNCHES.reset()
    gdx = gelu_backward(to_fake(dy), gcache, kind)
    assert (forward, LAUNCHES.total) == ((1, 1) if kind == "tanh" else (2, 1))  # erf: ndtr, then x * Phi
    assert host_syncs.gets == 0
    np.testing.assert_array_equal(from_fake(gy), y)
    np.testing.assert_array_equal(from_fake(gdx), dx)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layernorm_on_the_gpu_path_takes_fewer_kernels_and_gives_numpys_values(fake_cupy, host_syncs, dtype) -> None:
    rng = np.random.default_rng(1)
    x, dy = (rng.standard_normal((2, 5, 7, 24)) * 2 + 1).astype(dtype)
    gamma, beta = (rng.standard_normal((2, 24)) + 1).astype(dtype)
    y, cache = layernorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = layernorm_backward(dy, cache, gamma)
    LAUNCHES.reset()
    gy, gcache = layernorm_forward(to_fake(x), to_fake(gamma), to_fake(beta))
    forward = LAUNCHES.total
    layernorm_backward(to_fake(dy), gcache, to_fake(gamma))  # the first call makes a small constant, once
    LAUNCHES.reset()
    got = layernorm_backward(to_fake(dy), gcache, to_fake(gamma))
    assert forward == 3 and LAUNCHES.total <= 4 and host_syncs.gets == 0  # kernels/device.py
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(from_fake(gy), y, **tol)  # NumPy's row means are BLAS products: not bit-equal
    for g, e in zip(got, (dx, dgamma, dbeta)):
        np.testing.assert_allclose(from_fake(g), e, **tol)
