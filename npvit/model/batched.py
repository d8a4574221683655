"""A model's batch cut into shards (one thread each on NumPy) and cache-sized pieces.

A transformer treats images independently until the loss, so a batch can be cut anywhere: the model's
features run on one shard per thread (NumPy), and inside a shard a few images at a time, so that each block's
intermediates stay in the CPU cache instead of streaming through memory; the head runs on the whole shard,
where its large weight matrix is read once. Dropout masks are keyed by each image's global index
(Context.shifted), so the cuts change nothing but the order of the gradient sums. On CuPy there is one shard
and one piece.
"""

from __future__ import annotations

from typing import Any

from ..parallel import batch_chunks, parallel_map, shard_slices
from ..kernels.fused import on_device


BatchCache = tuple[list[slice], list[tuple]]  # (shard slices, per shard: (piece slices, feature caches, head cache))


def token_bytes_per_image(config: Any) -> int:
    """Bytes of the largest intermediate a block makes per image: the fused query/key/value projection, the
    MLP's hidden layer, or one image's attention scores. Counted in float32 for every dtype, so that float32
    and float64 models cut a batch alike."""
    n = config.num_tokens
    widest = max(3 * config.num_heads * config.key_dim, config.dim, *config.mlp_units)
    return max(n * widest, config.num_heads * n * n, conv_values_per_image(config)) * 4


def conv_values_per_image(config: Any) -> int:
    """The conv tokenizer's largest intermediate per image: a layer's im2col (S^2 windows of 3 x 3 x C_in
    values) or its output map (S^2 C_out); 0 for patches."""
    if config.tokenizer != "conv":
        return 0
    side, cin, largest = config.image_size, config.channels, 0
    for cout in config.conv_channels:
        largest = max(largest, side * side * max(9 * cin, cout))
        side, cin = (side - 1) // 2 + 1, cout  # max-pool 3/2/1
    return largest


def batched_forward(model: Any, x: Any, ctx: Any) -> tuple[Any, BatchCache, list]:
    """model.features_forward then model.head_forward over batch ``x``, shard by shard and piece by piece.

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
    xp = model.backend.xp
    pieces = batch_chunks(xp, len(x), token_bytes_per_image(model.config), cache="l3")
    outs = [model.features_forward(x[sl], ctx.shifted(sl.start)) for sl in pieces]
    tokens = _join(xp, [out[0] for out in outs])
    if len(pieces) > 1 and ctx.attention_maps:  # appended piece by piece: regroup them block by block
        depth, maps = len(model.blocks), ctx.attention_maps
        ctx.attention_maps[:] = [xp.concatenate(maps[i::depth]) for i in range(depth)]
    logits, c_head = model.head_forward(tokens, ctx)
    return logits, (pieces, [out[1] for out in outs], c_head)


def batch_size(cache: BatchCache) -> int:
    """The number of images of the forward pass that made ``cache``."""
    return cache[0][-1].stop


def batched_backward(model: Any, dlogits: Any, cache: BatchCache, grads: Any, input_grad: bool = True) -> Any:
    """Backward of batched_forward: writes the summed gradients into ``grads`` (overwriting it), returns d images
    (None with ``input_grad=False`` where the tokenizer can skip them)."""
    slices, caches = cache
    if len(caches) == 1 and len(caches[0][0]) == 1 and on_device(dlogits):
        # CuPy, one shard of one piece: the layers write their gradients into the flat buffer themselves
        return _backward_shard(model, dlogits, caches[0], grads, input_grad)[0]
    outs = parallel_map(_backward_shard, [(model, dlogits[sl], c, None, input_grad)
                                          for sl, c in zip(slices, caches)], model.threads)
    for i, (_, shard_grads) in enumerate(outs):  # parameters are shared by the shards: their gradients add up
        for name, g in shard_grads.items():
            if i == 0:
                grads[name] = g
            else:
                view = grads[name]
                view += g
    return _join(model.backend.xp, [out[0] for out in outs])


def _backward_shard(model: Any, dlogits: Any, cache: tuple, grads: Any = None, input_grad: bool = True
                    ) -> tuple[Any, dict]:
    pieces, c_features, c_head = cache
    grads = {} if grads is None else grads
    dt = model.head_backward(dlogits, c_head, grads)
    dx = [model.features_backward(dt[pieces[0]], c_features[0], grads, input_grad)]
    for sl, c in zip(pieces[1:], c_features[1:]):  # the other pieces, in turn
        piece_grads: dict = {}
        dx.append(model.features_backward(dt[sl], c, piece_grads, input_grad))
        for name, g in piece_grads.items():  # every piece went through the same blocks: gradients add up
            grads[name] += g
    return _join(model.backend.xp, dx), grads


def _join(xp: Any, parts: list) -> Any:
    if parts[0] is None:  # no input gradients were asked for
        return None
    return parts[0] if len(parts) == 1 else xp.concatenate(parts)
