"""Splitting work across CPU cores: thread pools with BLAS held to one thread each, and batches cut into slices.

NumPy runs each elementwise operation (exp, erf, the softmax, dropout and layer-norm passes) on one core, and
BLAS uses one core per small matrix product (the per-head attention products are small). A transformer
layer is independent across images, so the cheapest way to use every core for all of that is data
parallelism: cut the batch into one shard per core and run the whole forward (and backward) pass of each
shard in its own thread. NumPy and BLAS release the GIL while they compute, so the threads really run at the
same time; BLAS is held to one thread each meanwhile (through threadpoolctl) so that the cores are not
oversubscribed; without threadpoolctl the shards run one after another instead, and a warning says so once.
Only the NumPy backend does this: a GPU is already parallel.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy

_POOLS: dict[int, ThreadPoolExecutor] = {}
_CONTROLLER: Any = None  # a ThreadpoolController, False without threadpoolctl, None before the first use


def available_cores() -> int:
    """Cores this process may run on (the CPU affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def shard_slices(batch: int, shards: int) -> list[slice]:
    """Cut range(batch) into at most ``shards`` contiguous slices of near-equal size (first ones larger)."""
    shards = max(1, min(shards, batch))
    base, extra = divmod(batch, shards)
    slices, start = [], 0
    for i in range(shards):
        stop = start + base + (1 if i < extra else 0)
        slices.append(slice(start, stop))
        start = stop
    return slices


#: Said once per process when threadpoolctl cannot be imported.
NO_THREADPOOLCTL = ("npvit: threadpoolctl is not installed, so BLAS cannot be held to one thread per shard; "
                    "running the batch's shards one after another instead (BLAS threads as usual), several "
                    "times slower than side by side. Install it for full speed: pip install threadpoolctl")


def _single_threaded_blas() -> Any:
    """A context holding BLAS to one thread, or None without threadpoolctl: then the caller must not run
    shards side by side, since every shard's BLAS would start a thread per core and oversubscribe the CPU
    (a Keras-preset step measured 10x slower that way). The first call says which it did."""
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _CONTROLLER = False
            warnings.warn(NO_THREADPOOLCTL, RuntimeWarning, stacklevel=3)
        else:
            _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas") if _CONTROLLER else None


def parallel_map(fn: Callable[..., Any], args: Sequence[tuple], threads: int) -> list[Any]:
    """``[fn(*a) for a in args]``, run on up to ``threads`` threads with BLAS single-threaded meanwhile.

    Exceptions propagate to the caller (the first one raised, after every task has ended).
    """
    if len(args) <= 1 or threads <= 1:
        return [fn(*a) for a in args]
    blas = _single_threaded_blas()
    if blas is None:  # without threadpoolctl: one shard at a time rather than oversubscribed BLAS
        return [fn(*a) for a in args]
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="npvit")
    with blas:
        futures = [pool.submit(fn, *a) for a in args]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]


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
    return shard_slices(batch, count)
