"""Array backends: the one place where NumPy and CuPy differ.

Everything else in npvit is written against the array API that NumPy and CuPy share. Kernels find the
array module from their inputs with :func:`get_array_module` (as Chainer does), and the few things the two
libraries spell differently -- the error function, random generators, host/device copies, waiting for the
device -- are reached through a :class:`Backend` object or the helpers below.

CuPy is imported lazily, only when asked for, so a CPU-only install never touches it.
"""

from __future__ import annotations

import hashlib
import math
import sys
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


def erf(x: Any) -> Any:
    """Elementwise error function on either backend, keeping the input's dtype.

    NumPy float32 arrays take :func:`erf_float32`, four times faster than SciPy's (which computes in
    double precision); float64 (gradient checks, float64 training) and CuPy use the library's own.
    """
    if get_array_module(x) is numpy:
        if x.dtype == numpy.float32:
            return erf_float32(x)
        from scipy import special
    else:
        from cupyx.scipy import special
    return special.erf(x)


# erf(x) ~ x P(x^2) / Q(x^2) on [-4, 4] (|erf| rounds to 1 in float32 beyond): the rational approximation
# Eigen and XLA use for float32 erf, accurate to a few float32 ulps (measured max |error| 4.5e-7).
_ERF_P = tuple(numpy.float32(c) for c in (
    -2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
    -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02))
_ERF_Q = tuple(numpy.float32(c) for c in (
    -1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
    -1.42647390514189e-02))
_ERF_CHUNK = 1 << 16  # elements per piece: the dozen temporaries of a piece stay in the CPU cache


def normal_cdf(x: Any) -> Any:
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2, the standard normal CDF, keeping the input's dtype.

    GELU's x * Phi(x) needs it. NumPy float32 computes it inside the pieces of :func:`erf_float32`, saving
    three passes over the whole array; other cases use the library's ``ndtr``.
    """
    if get_array_module(x) is numpy:
        if x.dtype == numpy.float32:
            return erf_float32(x, normal_cdf=True)
        from scipy import special
    else:
        from cupyx.scipy import special
    return special.ndtr(x)


def erf_float32(x: numpy.ndarray, normal_cdf: bool = False) -> numpy.ndarray:
    """Error function of a float32 NumPy array by a rational approximation, computed piece by piece.

    With ``normal_cdf=True`` it returns Phi(x) = (1 + erf(x / sqrt 2)) / 2 instead.
    """
    out = numpy.empty(x.shape, dtype=x.dtype)
    flat_in, flat_out = numpy.ascontiguousarray(x).reshape(-1), out.reshape(-1)
    four, half, sqrt_half = numpy.float32(4), numpy.float32(0.5), numpy.float32(0.7071067811865476)
    for start in range(0, flat_in.size, _ERF_CHUNK):
        piece = flat_in[start:start + _ERF_CHUNK]
        z = numpy.clip(piece * sqrt_half if normal_cdf else piece, -four, four)
        z2 = z * z
        p = z2 * _ERF_P[0]  # Horner's rule in z^2, odd numerator: z (a1 + a3 z^2 + ... + a13 z^12)
        for c in _ERF_P[1:-1]:
            p += c
            p *= z2
        p += _ERF_P[-1]
        p *= z
        q = z2 * _ERF_Q[0]  # even denominator: b0 + b2 z^2 + ... + b8 z^8
        for c in _ERF_Q[1:-1]:
            q += c
            q *= z2
        q += _ERF_Q[-1]
        if not normal_cdf:
            numpy.divide(p, q, out=flat_out[start:start + _ERF_CHUNK])
            continue
        p /= q
        p += 1
        numpy.multiply(p, half, out=flat_out[start:start + _ERF_CHUNK])
    return out


def keep_mask(xp: ModuleType, seed: int, site: str, first: int, shape: tuple[int, ...], threshold: int) -> Any:
    """Boolean mask of ``shape``, each entry True with probability 1 - threshold / 65536, keyed per sample.

    Axis 0 of ``shape`` runs over samples: row i belongs to global sample ``first + i``. Each sample of the
    dropout site ``site`` owns a fixed stretch of 64-bit words of one random stream keyed by (seed, site), cut
    into four 16-bit values each, so a row depends on (seed, site, first + i) alone: splitting a batch into
    shards, pieces, chunks or processes draws exactly the same masks as taking it whole.

    NumPy: the stream is PCG64DXSM seeded from SeedSequence([seed, site id]); its jump-ahead (``advance``)
    reaches sample ``first`` without drawing the words before it. CuPy: the stream is SplitMix64, whose n-th
    word is a pure function of the key and n, computed for every word in parallel. The two streams differ,
    so NumPy and CuPy draw different (equally distributed) masks.
    """
    per_item = math.prod(shape[1:])
    words = -(-per_item // 4)  # 64-bit words per sample
    entropy = [seed, _site_id(site)]
    if xp is numpy:
        bits = numpy.random.PCG64DXSM(numpy.random.SeedSequence(entropy))
        bits.advance(first * words)
        raw = bits.random_raw(shape[0] * words).reshape(shape[0], words)
    else:
        key = int(numpy.random.SeedSequence(entropy).generate_state(1, numpy.uint64)[0])
        raw = splitmix64(xp, key, first * words, shape[0] * words).reshape(shape[0], words)
    # Little-endian 16-bit pieces: the same mask on every platform.
    pieces = raw.astype("<u8", copy=False).view("<u2")[:, :per_item]
    return (pieces >= threshold).reshape(shape)


_SPLITMIX_GAMMA, _SPLITMIX_M1, _SPLITMIX_M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def splitmix64(xp: ModuleType, key: int, start: int, count: int) -> Any:
    """Words ``start .. start + count - 1`` of the SplitMix64 stream (Steele et al., 2014) begun at ``key``.

    Word n is mix(key + (n + 1) * gamma): a counter-based generator, so any stretch of the stream is computed
    directly, every word independently (one elementwise pass on a GPU).
    """
    u64 = numpy.uint64
    n = xp.arange(start + 1, start + 1 + count, dtype=u64)
    z = n * u64(_SPLITMIX_GAMMA)  # uint64 arithmetic wraps modulo 2^64, as SplitMix64 needs
    z += u64(key)
    z ^= z >> u64(30)
    z *= u64(_SPLITMIX_M1)
    z ^= z >> u64(27)
    z *= u64(_SPLITMIX_M2)
    z ^= z >> u64(31)
    return z


def _site_id(site: str) -> int:
    """A stable 64-bit number for a dropout site's name (Python's own hash() changes between processes)."""
    return int.from_bytes(hashlib.blake2b(site.encode(), digest_size=8).digest(), "little")


# How much of the CPU's cache one core's working set may fill, for the two kinds of chunked work that
# batch_chunks cuts: "l2", the passes over one piece of the attention scores, stay within a core's L2 (1 MiB on
# current x86 server parts); "l3", a piece of the batch taken through every transformer block, within a core's
# share of the L3.
CHUNK_BYTES = {"l2": 1 << 20, "l3": 8 << 20}


def batch_chunks(xp: ModuleType, batch: int, bytes_per_item: int, cache: str = "l2") -> list[slice]:
    """Cut range(batch) into contiguous slices for work that passes several times over large intermediates.

    On NumPy the slices are as few as allow ``bytes_per_item`` per item to fit ``CHUNK_BYTES[cache]`` (at
    least one item each), and of near-equal sizes, so the passes after the first read the cache rather than
    memory: every NumPy operation is a separate pass over its arrays, and on the (B, heads, T, T) attention
    scores those passes, not the arithmetic, set the speed. On CuPy there is one slice: a GPU wants the
    largest kernels it can get.
    """
    if xp is not numpy:
        return [slice(0, batch)]
    per_slice = max(1, CHUNK_BYTES[cache] // max(1, bytes_per_item))
    count = -(-batch // per_slice)  # as many slices as needed, then equal sizes: no small leftover slice
    base, extra = divmod(batch, count)
    bounds = [0]
    for i in range(count):
        bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


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

    def erf(self, x: Any) -> Any:
        """Elementwise error function."""
        return erf(x)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Move ``x`` (host or device array, list, scalar) onto this backend."""
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> numpy.ndarray:
        """Copy an array of this backend to the host."""
        return to_numpy(x)

    def rng(self, seed: int | None = None) -> Any:
        """A seeded random generator of this backend (use ``random(size, dtype)`` and ``uniform``).

        On CuPy it is a Philox generator: the default XORWOW sets up a quarter-million states per generator,
        too slow for the fresh generator the training program makes at every step.
        """
        if self.name == "cupy":
            return self.xp.random.Generator(self.xp.random.Philox4x3210(seed))
        return self.xp.random.default_rng(seed)

    def synchronize(self) -> None:
        """Wait until queued device work is done (a no-op on NumPy); call before reading a timer."""
        if self.name == "cupy":
            self.xp.cuda.get_current_stream().synchronize()


def _load_cupy() -> ModuleType:
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailableError(
            "The 'cupy' backend needs CuPy, which is not installed. Install the build matching your CUDA "
            "toolkit: pip install 'npvit[cuda12]' (CUDA 12.x) or pip install 'npvit[cuda13]' (CUDA 13.x); "
            "or use backend='numpy'."
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken: CuPy raises its own runtime errors
        raise BackendUnavailableError(
            f"CuPy is installed but no CUDA device can be used ({exc}). Check the NVIDIA driver "
            "(nvidia-smi) and that the cupy-cudaXXx wheel matches your CUDA version, or use backend='numpy'."
        ) from exc
    if count == 0:
        raise BackendUnavailableError(
            "CuPy is installed but no CUDA device was found; use backend='numpy'."
        )
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
