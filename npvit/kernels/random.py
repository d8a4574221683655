"""Counter-based random streams for dropout masks: a sample's mask depends on (seed, site, sample) alone.

That is what makes a batch cut into shards, pieces or processes draw exactly the masks of the whole batch.
"""

from __future__ import annotations

import hashlib
import math
from types import ModuleType
from typing import Any

import numpy


def keep_mask(xp: ModuleType, seed: int, site: str, first: int, shape: tuple[int, ...], threshold: int) -> Any:
    """Boolean mask of ``shape``, each entry True with probability 1 - threshold / 65536, keyed per sample.

    Axis 0 of ``shape`` runs over samples: row i belongs to global sample ``first + i``. Each sample of the
    dropout site ``site`` owns a fixed stretch of 64-bit words of one random stream keyed by (seed, site), cut
    into four 16-bit values each, so a row depends on (seed, site, first + i) alone: splitting a batch into
    shards, pieces, chunks or processes draws exactly the same masks as taking it whole.

    NumPy: the stream is PCG64DXSM seeded from SeedSequence([seed, site id]); its jump-ahead (``advance``)
    reaches sample ``first`` without drawing the words before it. CuPy: the stream is SplitMix64 begun at
    ``stream_key(seed, site)``, whose n-th word is a pure function of the key and n, computed for every word
    in parallel (the key too is SplitMix64 arithmetic, so a kernel can derive it from a seed held on the
    device: a captured CUDA graph's). The two streams differ, so NumPy and CuPy draw different (equally
    distributed) masks.
    """
    per_item = math.prod(shape[1:])
    words = -(-per_item // 4)  # 64-bit words per sample
    entropy = [seed, _site_id(site)]
    if xp is numpy:
        bits = numpy.random.PCG64DXSM(numpy.random.SeedSequence(entropy))
        bits.advance(first * words)
        raw = bits.random_raw(shape[0] * words).reshape(shape[0], words)
    else:
        raw = splitmix64(xp, stream_key(seed, site), first * words, shape[0] * words).reshape(shape[0], words)
    # Little-endian 16-bit pieces: the same mask on every platform.
    pieces = raw.astype("<u8", copy=False).view("<u2")[:, :per_item]
    return (pieces >= threshold).reshape(shape)


def drop_threshold(rate: float) -> int:
    """The 16-bit threshold below which a unit is dropped."""
    return round(rate * (1 << 16))


def dropout_scale(rate: float) -> float:
    """The factor 1 / (1 - p) applied to the kept units, with p the drop probability actually used."""
    return 1.0 / (1.0 - drop_threshold(rate) / (1 << 16))


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


def stream_key(seed: int, site: str) -> int:
    """The SplitMix64 key of dropout site ``site`` at seed ``seed`` (CuPy): mix(seed gamma + site id)."""
    z = (int(seed) * _SPLITMIX_GAMMA + _site_id(site)) % (1 << 64)
    z = ((z ^ (z >> 30)) * _SPLITMIX_M1) % (1 << 64)
    z = ((z ^ (z >> 27)) * _SPLITMIX_M2) % (1 << 64)
    return z ^ (z >> 31)


def _site_id(site: str) -> int:
    """A stable 64-bit number for a dropout site's name (Python's own hash() changes between processes)."""
    return int.from_bytes(hashlib.blake2b(site.encode(), digest_size=8).digest(), "little")
