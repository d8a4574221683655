"""The backend layer: lookup, clear errors, array-module dispatch, erf, transfers, generators."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import npvit
from npvit.backend import BackendUnavailableError, get_array_module, to_numpy
from npvit.parallel import batch_chunks
from npvit.kernels.erf import erf


def test_numpy_backend_basics() -> None:
    b = npvit.get_backend("numpy")
    assert b.name == "numpy" and b.xp is np
    assert npvit.get_backend(b) is b
    x = b.asarray([1.0, 2.0], dtype="float32")
    assert x.dtype == np.float32
    assert isinstance(b.to_numpy(x), np.ndarray)
    b.synchronize()
    assert "numpy" in npvit.available_backends()


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown backend 'torch'.*numpy, cupy"):
        npvit.get_backend("torch")


def test_missing_cupy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # Make "import cupy" fail as it does where CuPy is not installed.
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(npvit.backend, "_BACKENDS", {})
    with pytest.raises(BackendUnavailableError, match=r"npvit\[cuda12\]"):
        npvit.get_backend("cupy")
    assert npvit.available_backends() == ["numpy"]


def test_get_array_module_on_numpy_inputs() -> None:
    assert get_array_module(np.zeros(2)) is np
    assert get_array_module(1.0, np.zeros(1)) is np


def test_get_array_module_and_transfers(backend: npvit.Backend) -> None:
    x = backend.asarray(np.arange(6.0).reshape(2, 3))
    assert get_array_module(x) is backend.xp
    assert np.array_equal(to_numpy(x), np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_erf_matches_math_erf_and_keeps_dtype(backend: npvit.Backend, dtype: str) -> None:
    values = np.linspace(-4, 4, 41)
    y = erf(backend.asarray(values, dtype=dtype))
    assert y.dtype == np.dtype(dtype)
    expected = np.array([math.erf(v) for v in values])
    tol = 1e-6 if dtype == "float32" else 1e-15
    np.testing.assert_allclose(to_numpy(y), expected, rtol=tol, atol=tol)


def test_rng_is_seeded(backend: npvit.Backend) -> None:
    a = to_numpy(backend.rng(7).random((5,), dtype="float32"))
    b = to_numpy(backend.rng(7).random((5,), dtype="float32"))
    c = to_numpy(backend.rng(8).random((5,), dtype="float32"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_fast_float32_erf_handles_any_memory_order_and_extremes() -> None:
    a = np.random.default_rng(0).standard_normal((6, 9)).astype(np.float32) * 3
    for x in (a, a.T, a[:, ::2]):
        np.testing.assert_allclose(erf(x), [[math.erf(v) for v in row] for row in x.astype(float)], atol=5e-7)
    ends = erf(np.float32([np.inf, -np.inf, 50.0, -50.0, 0.0]))
    assert ends.tolist() == [1.0, -1.0, 1.0, -1.0, 0.0] and np.isnan(erf(np.float32([np.nan])))[0]


def test_batch_chunks_cover_the_batch_in_near_equal_cache_sized_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(npvit.parallel.CHUNK_BYTES, "l2", 1000)
    chunks = batch_chunks(np, 10, 300)  # 3 items fit: 4 slices, sized 3, 3, 2, 2 rather than 3, 3, 3, 1
    assert [(c.start, c.stop) for c in chunks] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert batch_chunks(np, 5, 10**9) == [slice(i, i + 1) for i in range(5)]  # never fewer than one item
    assert batch_chunks(np, 4, 1) == [slice(0, 4)]
    monkeypatch.setitem(npvit.parallel.CHUNK_BYTES, "l3", 600)
    assert len(batch_chunks(np, 10, 300, cache="l3")) == 5
    assert batch_chunks(object(), 10, 10**9) == [slice(0, 10)]  # a GPU module: one slice, the whole batch
