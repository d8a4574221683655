"""Splitting a batch across CPU cores, and a model's batch into shards and cache-sized pieces.

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
from typing import Any, Callable, Sequence

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


# ---- a model's batch, cut into shards and pieces --------------------------------------------------------------
# A transformer treats images independently until the loss, so a batch can be cut anywhere: the model's
# forward_features / forward_head run on one shard per thread (NumPy), and inside a shard the features run a
# few images at a time, so that each block's intermediates stay in the CPU cache instead of streaming through
# memory; the head runs on the whole shard, where its large weight matrix is read once. Dropout masks are
# keyed by each image's global index (Context.shifted), so the cuts change nothing but the order of the
# gradient sums. On CuPy there is one shard and one piece.

BatchCache = tuple[list[slice], list[tuple]]  # (shard slices, per shard: (piece slices, feature caches, head cache))


def token_bytes_per_image(config: Any) -> int:
    """Bytes of the largest intermediate a block makes per image: the fused query/key/value projection, the
    MLP's hidden layer, or one image's attention scores. Counted in float32 for every dtype, so that float32
    and float64 models cut a batch alike."""
    t = config.num_tokens
    widest = max(3 * config.num_heads * config.key_dim, config.dim, *config.mlp_units)
    return max(t * widest, config.num_heads * t * t) * 4


def batched_forward(model: Any, x: Any, ctx: Any) -> tuple[Any, BatchCache, list]:
    """model.forward_features then model.forward_head over batch ``x``, shard by shard and piece by piece.

    Returns (logits, cache for batched_backward, attention maps: one (B, heads, T, T) array per block when
    ``ctx.keep_attention``).
    """
    xp = model.backend.xp
    slices = shard_slices(len(x), model.threads)
    ctxs = [ctx.shifted(sl.start) for sl in slices]
    for c in ctxs[1:]:
        c.attention_maps = []  # each shard records its own maps, joined below
    outs = parallel_map(_forward_shard, [(model, x[sl], c) for sl, c in zip(slices, ctxs)], model.threads)
    logits = _join(xp, [out[0] for out in outs])
    maps = [_join(xp, list(per_block)) for per_block in zip(*(c.attention_maps for c in ctxs))]
    return logits, (slices, [out[1] for out in outs]), maps


def _forward_shard(model: Any, x: Any, ctx: Any) -> tuple[Any, tuple]:
    from .backend import batch_chunks

    xp = model.backend.xp
    pieces = batch_chunks(xp, len(x), token_bytes_per_image(model.config), cache="l3")
    outs = [model.forward_features(x[sl], ctx.shifted(sl.start)) for sl in pieces]
    t = _join(xp, [out[0] for out in outs])
    if len(pieces) > 1 and ctx.attention_maps:  # appended piece by piece: regroup them block by block
        depth, maps = len(model.blocks), ctx.attention_maps
        ctx.attention_maps[:] = [xp.concatenate(maps[i::depth]) for i in range(depth)]
    logits, c_head = model.forward_head(t, ctx)
    return logits, (pieces, [out[1] for out in outs], c_head)


def batch_size(cache: BatchCache) -> int:
    """The number of images of the forward pass that made ``cache``."""
    return cache[0][-1].stop


def batched_backward(model: Any, dlogits: Any, cache: BatchCache, grads: Any) -> Any:
    """Backward of batched_forward: writes the summed gradients into ``grads`` (overwriting it), returns d images."""
    slices, caches = cache
    outs = parallel_map(_backward_shard, [(model, dlogits[sl], c) for sl, c in zip(slices, caches)], model.threads)
    for i, (_, shard_grads) in enumerate(outs):  # parameters are shared by the shards: their gradients add up
        for name, g in shard_grads.items():
            if i == 0:
                grads[name] = g
            else:
                view = grads[name]
                view += g
    return _join(model.backend.xp, [out[0] for out in outs])


def _backward_shard(model: Any, dlogits: Any, cache: tuple) -> tuple[Any, dict]:
    pieces, c_features, c_head = cache
    grads: dict = {}
    dt = model.head_backward(dlogits, c_head, grads)
    dx = [model.features_backward(dt[pieces[0]], c_features[0], grads)]
    for sl, c in zip(pieces[1:], c_features[1:]):  # the other pieces, in turn
        piece_grads: dict = {}
        dx.append(model.features_backward(dt[sl], c, piece_grads))
        for name, g in piece_grads.items():  # every piece went through the same blocks: gradients add up
            grads[name] += g
    return _join(model.backend.xp, dx), grads


def _join(xp: Any, parts: list) -> Any:
    return parts[0] if len(parts) == 1 else xp.concatenate(parts)
