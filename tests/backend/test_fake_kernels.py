"""The fake CuPy's ElementwiseKernel and ReductionKernel run their C source with C's rules, and refuse C they
cannot run rather than guess (tests/support/fakekernels.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fakecupy import LAUNCHES, fake_cupy, from_fake, to_fake  # noqa: F401 (fixtures)


def test_elementwise_source_runs_with_cs_types(fake_cupy) -> None:
    cp = fake_cupy.cupy
    k = cp.ElementwiseKernel("T x, T b", "T y, T z", "T u = x + b; y = u * 0.1f; z = u * 0.1", "t_types")
    x = to_fake(np.array([1.0, 2.0, 3.0], np.float32))
    y, z = k(x, to_fake(np.float32(0.5)))
    u = np.array([1.5, 2.5, 3.5], np.float32)
    np.testing.assert_array_equal(from_fake(y), u * np.float32(0.1))  # a float literal: float arithmetic
    np.testing.assert_array_equal(from_fake(z), (u.astype(np.float64) * 0.1).astype(np.float32))  # a double
    div = cp.ElementwiseKernel("int64 n", "int64 q, int64 r", "q = (i - 7) / n; r = (i - 7) % n", "t_div")
    q, r = cp.empty(6, dtype=np.int64), cp.empty(6, dtype=np.int64)
    div(np.int64(3), q, r)
    assert from_fake(q).tolist() == [-2, -2, -1, -1, -1, 0] and from_fake(r).tolist() == [-1, 0, -2, -1, 0, -2]
    wrap = cp.ElementwiseKernel("uint64 k", "uint64 z", "unsigned long long n = i; z = (n + k) * 3ull", "t_u64")
    out = cp.empty(2, dtype=np.uint64)
    wrap(np.uint64(2**63), out)
    assert from_fake(out).tolist() == [(2**63 * 3) % 2**64, ((2**63 + 1) * 3) % 2**64]


@pytest.mark.parametrize("code", ["y = x > 0 ? x : 0", "y = (T)x", "if (x > 0) y = x", "y = x && x",
                                  "z = x", "T y = x", "T x = 1; y = x"])
def test_c_the_fake_cannot_run_is_refused(fake_cupy, code) -> None:
    cp = fake_cupy.cupy
    with pytest.raises(NotImplementedError):
        k = cp.ElementwiseKernel("T x", "T y", code, "t_refused")
        k(to_fake(np.ones(3)))


def test_reduction_kernel_maps_reduces_and_post_maps(fake_cupy) -> None:
    cp = fake_cupy.cupy
    k = cp.ReductionKernel("T x, T w", "T y", "x * w", "a + b", "y = sqrt(a)", "0", "t_norm")
    x = np.arange(12.0).reshape(3, 4)
    LAUNCHES.reset()
    got = k(to_fake(x), to_fake(np.full(4, 2.0)), axis=-1, keepdims=True)
    assert LAUNCHES.total == 1 and got.shape == (3, 1)
    np.testing.assert_allclose(from_fake(got), np.sqrt((x * 2).sum(-1, keepdims=True)), rtol=1e-15)
    top = cp.ReductionKernel("T x", "T y", "x", "max(a, b)", "y = a", "0", "t_max")
    np.testing.assert_array_equal(from_fake(top(to_fake(x - 100), axis=0)), (x - 100).max(0))
