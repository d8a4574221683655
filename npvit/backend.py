"""Array backends: the one place where NumPy and CuPy differ.

Everything else in npvit is written against the array API that NumPy and CuPy share. Kernels find the
array module from their inputs with :func:`get_array_module` (as Chainer does), and the few things the two
libraries spell differently -- the error function, random generators, host/device copies, waiting for the
device -- are reached through a :class:`Backend` object or the helpers below.

CuPy is imported lazily, only when asked for, so a CPU-only install never touches it. Where the fastest way to
compute something differs between the two (the attention scores' layout, row means), the choice is made by a
small function here and the kernels keep one formula.

Reproducibility on CuPy: every generator is a Philox4x32-10 with a fixed number of states (PHILOX_STATES), so
its draws depend on the seed alone -- the same on every GPU model for a given CuPy version. CuPy's default sizes
the state by the GPU's multiprocessor count, which made the draws differ between GPU models. The arithmetic
does not travel as well: cuBLAS picks its kernels by GPU architecture (and CUB tunes its reductions by it), so
two runs give bit-identical numbers only on the same GPU model with the same driver, CUDA and CuPy versions;
across models a run sees the same random draws and arithmetic that agrees to rounding.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Hashable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import numpy


BACKEND_NAMES = ("numpy", "cupy")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine (missing package or device)."""


def _cupy_if_imported() -> ModuleType | None:
    # If CuPy was never imported, no array can be a CuPy array: don't pay for the import.
    return sys.modules.get("cupy")


def get_array_module(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    cp = _cupy_if_imported()
    if cp is not None:
        for a in arrays:
            if isinstance(a, cp.ndarray):
                return cp
    return numpy


def scores_transposed(xp: ModuleType) -> bool:
    """Whether the attention core keeps its scores transposed, keys along axis -2 (True on NumPy only).

    NumPy: reductions across rows (axis -2) are several times faster than along 144-long rows, and BLAS reads
    every transposed operand through its transpose flags, so the transposed layout costs no copies. CuPy: a
    batched matmul (ndim > 2) copies every operand that is not C-contiguous (``ascontiguousarray``) and writes
    a strided ``out=`` through a temporary, so the scores stay (..., N_query, N_key) with the softmax over the
    last axis, and the products are arranged so that no (N, N) matrix is ever transposed.
    """
    return xp is numpy


def row_dot(a: Any, w: Any) -> Any:
    """Per-row weighted sums ``a @ w`` of a (rows, D) array and a (D,) vector, as a (rows,) array.

    NumPy: a BLAS matrix-vector product, several times faster than NumPy's reduction over short rows. CuPy: an
    elementwise product and a reduction over the last axis -- never cuBLAS, whose products round their inputs
    to TF32 when TF32 is on (npvit's layer norm statistics, like PyTorch's, stay in float32).
    """
    xp = get_array_module(a)
    if xp is numpy:
        return a @ w
    return _fused(xp, "npvit_row_dot", _row_dot)(a, w)  # one kernel, not a product and a reduction


def _row_dot(a: Any, w: Any) -> Any:
    return (a * w).sum(axis=-1)


_FUSED: dict[tuple, Callable] = {}


def _fused(xp: ModuleType, name: str, fn: Callable) -> Callable:
    """``fn`` compiled by ``xp.fuse`` into one kernel named ``name``, made once per array module."""
    key = (xp, name)
    if key not in _FUSED:
        _FUSED[key] = xp.fuse(kernel_name=name)(fn)
    return _FUSED[key]


def bin_counts(index: Any, length: int) -> Any:
    """How many times each of 0 .. length-1 occurs in the integer array ``index`` (all its values in that
    range), as a (length,) integer array: ``numpy.bincount(index, minlength=length)``.

    NumPy: bincount. CuPy: an atomic scatter-add into zeros (two kernels) -- CuPy's own bincount reads the
    input's minimum and maximum on the host (two waits for the device per call), this never does.
    """
    xp = get_array_module(index)
    if xp is numpy:
        return numpy.bincount(index.reshape(-1), minlength=length)
    import cupyx

    counts = xp.zeros(length, dtype=xp.int32)  # (length,): 32-bit atomics, enough for any image batch
    cupyx.scatter_add(counts, index.reshape(-1), 1)
    return counts


COLUMN_CHUNK = 256  # rows summed by each part of column_sum's first stage


def column_sum(x: Any, out: Any = None) -> Any:
    """The sums over the rows of a (N, C) array, as a (C,) array: the bias, gamma and beta gradients.

    NumPy: ``x.sum(axis=0)``. CuPy: in two stages, (N, C) as (N/256, 256, C) summed over its middle axis and
    then over the first, plus the rows left over: CuPy's reduction gives each output element one block, so
    the one-stage sum of C = 64..256 columns keeps only C blocks busy on a GPU of a hundred or more
    multiprocessors; the first stage gives it C N/256 (parts of 64 to 256 rows that divide N when there are
    such, so that no rows are left over for a third and fourth launch). The order of additions differs from
    one stage's (float32 results differ in the last bits, as any two GPU reductions do). ``out``: a (C,) array to write
    the sums into (a view of a flat gradient buffer), returned.
    """
    if get_array_module(x) is numpy or x.shape[0] < 2 * COLUMN_CHUNK:
        return x.sum(axis=0, out=out)
    n, c = x.shape
    # Rows are B T tokens: a part size between 64 and 256 that divides them leaves no rows over (2 launches).
    part = next((p for p in range(COLUMN_CHUNK, COLUMN_CHUNK // 4 - 1, -1) if n % p == 0), None)
    if part is not None:
        return x.reshape(n // part, part, c).sum(axis=1).sum(axis=0, out=out)  # (n/part, C), then (C,)
    k = n // COLUMN_CHUNK
    head = x[:k * COLUMN_CHUNK].reshape(k, COLUMN_CHUNK, c).sum(axis=1)  # (k, C)
    total = head.sum(axis=0, out=out)  # (C,)
    if n > k * COLUMN_CHUNK:
        total += x[k * COLUMN_CHUNK:].sum(axis=0)
    return total


_CONSTANTS: dict[tuple, Any] = {}
_CONSTANTS_MAX = 64  # distinct constants kept (the resize: three per input size, output size and dtype)


def cached_constant(xp: ModuleType, key: Hashable, make: Callable[[], numpy.ndarray], dtype: Any) -> Any:
    """The host array ``make()`` as a ``dtype`` array of module ``xp``, built and moved there once per
    (module, key, dtype) and reused afterwards; ``key`` must identify what ``make`` returns.

    The result is shared: never write to it (on NumPy it is read-only). Saves a host-to-device copy per call on
    CuPy for constants such as the resize's interpolation taps.
    """
    cache_key = (xp, key, numpy.dtype(dtype).str)
    value = _CONSTANTS.get(cache_key)
    if value is None:
        if len(_CONSTANTS) >= _CONSTANTS_MAX:
            _CONSTANTS.pop(next(iter(_CONSTANTS)))  # oldest first
        if xp is numpy:
            value = numpy.array(make(), dtype=dtype)  # a copy of its own, made read-only
            value.flags.writeable = False
        else:
            value = xp.asarray(numpy.asarray(make(), dtype=dtype))
        _CONSTANTS[cache_key] = value
    return value


def as_array(xp: ModuleType, a: Any, dtype: Any = None) -> Any:
    """``a`` (an array of either backend, a list, a scalar) as an array of module ``xp``: a device array comes
    to the host for NumPy, a host one goes to the device for CuPy."""
    if xp is numpy:
        return numpy.asarray(to_numpy(a), dtype=dtype)
    return xp.asarray(a, dtype=dtype)


def to_numpy(x: Any) -> numpy.ndarray:
    """Copy an array (or scalar) to a host NumPy array; NumPy inputs are returned as they are."""
    if get_array_module(x) is numpy:
        return numpy.asarray(x)
    return x.get()


@dataclass(frozen=True)
class Backend:
    """An array library and the few backend-specific operations npvit needs.

    Attributes:
        name: ``"numpy"`` or ``"cupy"``.
        xp: the array module (``numpy`` or ``cupy``).
    """

    name: str
    xp: ModuleType

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Move ``x`` (host or device array, list, scalar) onto this backend."""
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> numpy.ndarray:
        """Copy an array of this backend to the host."""
        return to_numpy(x)

    def rng(self, seed: int | None = None) -> Any:
        """A seeded random generator of this backend (use ``random(size, dtype)`` and ``uniform``).

        See :func:`make_rng`.
        """
        return make_rng(self.xp, seed)

    def synchronize(self) -> None:
        """Wait until queued device work is done (a no-op on NumPy); call before reading a timer."""
        if self.name == "cupy":
            self.xp.cuda.get_current_stream().synchronize()

    def device_free_bytes(self) -> int | None:
        """Free memory of the current GPU, counting what CuPy's pool holds unused; None on NumPy."""
        if self.name != "cupy":
            return None
        free, _ = self.xp.cuda.runtime.memGetInfo()
        return int(free) + int(self.xp.get_default_memory_pool().free_bytes())

    def set_tf32(self, enabled: bool) -> bool:
        """Allow (True) or forbid (False) TF32 tensor cores in float32 matrix products. Returns whether TF32
        is now in use: False on NumPy, and on GPUs older than compute capability 8.0 (Ampere), which lack it.

        On CuPy, TF32 on means: every float32 matrix product npvit makes -- the dense layers (patch embedding,
        query/key/value and output projections, MLPs, head; forward and backward) and the attention's batched
        products (Q K^T, A V and their gradients) -- multiplies inputs rounded to TF32 (10-bit mantissa),
        accumulating in float32. Nothing else changes: layer norm statistics, softmax, GELU, dropout, the loss,
        AdamW and the preprocessing (its resize interpolates, it multiplies no matrices) are elementwise or
        reduction kernels in full float32. This is
        what PyTorch's ``torch.backends.cuda.matmul.allow_tf32 = True`` does to its matmuls; PyTorch's layer
        norm never uses TF32. Two switches do it, both needed: CuPy's compute type for float32, which its 2-D
        products (``cublasGemmEx``) read, and the cuBLAS handle's math mode, which its batched products
        (``cublasGemmStridedBatchedEx``, given no compute type of its own) follow; the environment variable
        ``CUPY_TF32`` reaches only the first. The compute type is process-wide (a module global of CuPy's: every
        thread and device), the math mode belongs to the current device's cuBLAS handle in this thread. The
        CuPy backend applies ``CUPY_TF32`` (1 on, else off) this way when it loads.
        """
        if self.name != "cupy":
            return False
        return _set_cupy_tf32(self.xp, enabled)


# PHILOX_STATES: the number of Philox states of a CuPy generator. A multiple of 256 because CuPy's random kernels
# run ceil(size / 256) blocks of 256 threads and every thread reads and writes its state without a bounds check;
# 65,536 (4 MiB of state) fill a mid-size GPU for large draws, while a small draw (a batch of augmentation
# parameters) touches 4 MiB instead of the 17 MiB that CuPy's default (8 x 256 x the SM count) gives an H100.
# Fixed, it also makes the draws independent of the GPU model: element i of a draw comes from state i % size.
PHILOX_STATES = 1 << 16


def make_rng(xp: ModuleType, seed: int | None = None) -> Any:
    """A seeded generator of array module ``xp`` with ``random(size, dtype)``, ``uniform`` and ``integers``.

    NumPy: ``numpy.random.default_rng(seed)`` (PCG64). CuPy: a Philox4x32-10 generator of PHILOX_STATES states
    -- cheap to set up (the default XORWOW initialises a quarter-million states, too slow for the fresh
    generator the training program makes at every step) and the same draws on every GPU model.
    """
    if xp is numpy:
        return numpy.random.default_rng(seed)
    return xp.random.Generator(xp.random.Philox4x3210(seed, size=PHILOX_STATES))


# cublasMath_t values (cublas_api.h); CuPy names only the first two of them.
_CUBLAS_DEFAULT_MATH = 0
_CUBLAS_TF32_TENSOR_OP_MATH = 3


def _set_cupy_tf32(cupy: ModuleType, enabled: bool) -> bool:
    """Backend.set_tf32 on CuPy (see there). Returns whether TF32 is in use."""
    if cupy.cuda.runtime.is_hip:  # ROCm: no TF32, and cuBLAS' math modes do not exist
        return False
    from cupy._core import _routines_linalg  # CuPy's own matmul tests set the compute type the same way

    enabled = bool(enabled) and int(cupy.cuda.Device().compute_capability) >= 80
    compute_type = _routines_linalg.COMPUTE_TYPE_TF32 if enabled else _routines_linalg.COMPUTE_TYPE_DEFAULT
    cupy._core.set_compute_type(numpy.float32, compute_type)
    cupy.cuda.cublas.setMathMode(cupy.cuda.device.get_cublas_handle(),
                                 _CUBLAS_TF32_TENSOR_OP_MATH if enabled else _CUBLAS_DEFAULT_MATH)
    return enabled


def _env_tf32() -> bool:
    """CUPY_TF32 as CuPy reads it: an integer, on when above 0."""
    try:
        return int(os.environ.get("CUPY_TF32", "0")) > 0
    except ValueError:
        return False


def _smoke_test(cupy: ModuleType) -> None:
    """Run one kernel of each kind training needs -- elementwise (compiled at run time by NVRTC), a cuBLAS
    product, a cuRAND draw, a reduction -- and check their values with one copy to the host.

    Counting devices is not enough: on a machine with the NVIDIA driver but no CUDA toolkit (and a CuPy
    installed without its ``[ctk]`` components) every device is visible and the first kernel compile fails.
    """
    x = cupy.arange(64, dtype=cupy.float32).reshape(8, 8)
    y = cupy.exp2(x * cupy.float32(1.0 / 64))  # elementwise: compiled at first use
    r = make_rng(cupy, 0).random(256, dtype="float32")
    got = cupy.concatenate([(y @ y).reshape(-1), (r * r).sum(keepdims=True)]).get()
    host = numpy.exp2(numpy.arange(64, dtype=numpy.float64).reshape(8, 8) / 64)
    if not numpy.allclose(got[:64], (host @ host).reshape(-1), rtol=1e-2) or not 0.0 < got[64] < 256.0:
        raise RuntimeError(f"the GPU computed wrong values in a smoke test (matrix product {got[:3]} instead of "
                           f"{(host @ host).reshape(-1)[:3]}, random sum of squares {got[64]})")


def _load_cupy() -> ModuleType:
    install = ("pip install 'npvit[cuda12]' (CUDA 12.x driver) or pip install 'npvit[cuda13]' (CUDA 13.x "
               "driver), which bring CuPy with the CUDA components it needs (cupy-cudaXXx[ctk])")
    try:
        import cupy
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "cupy":
            raise BackendUnavailableError(
                f"The 'cupy' backend needs CuPy, which is not installed. Install it: {install}; "
                "or use backend='numpy'."
            ) from exc
        raise BackendUnavailableError(
            f"CuPy is installed but failed to import: {type(exc).__name__}: {exc}. Reinstall it: {install}; "
            "or use backend='numpy'."
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken: CuPy raises its own runtime errors
        raise BackendUnavailableError(
            f"CuPy is installed but no CUDA device can be used ({type(exc).__name__}: {exc}). Check the NVIDIA "
            "driver (nvidia-smi) and that the cupy-cudaXXx wheel matches the CUDA version it reports, or use "
            "backend='numpy'."
        ) from exc
    if count == 0:
        raise BackendUnavailableError(
            "CuPy is installed but no CUDA device was found; use backend='numpy'."
        )
    try:
        _set_cupy_tf32(cupy, _env_tf32())
        _smoke_test(cupy)
    except Exception as exc:
        raise BackendUnavailableError(
            f"CuPy found {count} CUDA device(s) but could not run a kernel on them: {type(exc).__name__}: {exc}. "
            f"This usually means the CUDA libraries CuPy compiles and links with are missing: {install}; "
            "or use backend='numpy'."
        ) from exc
    return cupy


_BACKENDS: dict[str, Backend] = {}


def get_backend(name: str | Backend = "numpy") -> Backend:
    """Return the backend called ``name`` (``"numpy"`` or ``"cupy"``); a Backend is returned as is.

    Raises:
        ValueError: for an unknown name.
        BackendUnavailableError: for ``"cupy"`` when CuPy or a CUDA device is missing; the message names the
            extra to install.
    """
    if isinstance(name, Backend):
        return name
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKEND_NAMES)}")
    if name not in _BACKENDS:
        loaders: dict[str, Callable[[], ModuleType]] = {"numpy": lambda: numpy, "cupy": _load_cupy}
        _BACKENDS[name] = Backend(name=name, xp=loaders[name]())
    return _BACKENDS[name]


def available_backends() -> list[str]:
    """Names of the backends that can run here (NumPy always; CuPy with a working device)."""
    names = ["numpy"]
    try:
        get_backend("cupy")
        names.append("cupy")
    except BackendUnavailableError:
        pass
    return names
