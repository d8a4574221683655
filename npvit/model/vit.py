"""VisionTransformer (Dosovitskiy et al., 2020), laid out as in the Keras example and timm.

    tokens = PatchEmbed(images) [+ cls_token in front] + pos_embed      (B, T, dim)
    tokens = Block(tokens), depth times                                (pre-norm transformer layers)
    pooled = pool(LayerNorm(tokens))                                   flatten | cls | gap
    logits = Dense(Mlp(Dropout(pooled)))                               classifier head

The model owns its parameters (``params``), their gradients (``grads``, same keys) and the dropout generator.
``forward(training=True)`` keeps the caches that ``backward`` consumes; ``forward(training=False)`` keeps
nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Backend, batch_chunks, get_backend, to_numpy
from ..config import ViTConfig
from ..parallel import available_cores, parallel_map, shard_slices
from .block import Block
from .init import uniform, zeros
from .mlp import Mlp
from .module import Context, Dense, LayerNorm, ParamSpecs, dropout_grad
from .patch_embed import PatchEmbed

Array = Any
DTYPES = ("float32", "float64")


class VisionTransformer:
    """A Vision Transformer with hand-written forward and backward passes.

    Args:
        config: the architecture.
        backend: "numpy", "cupy" or a Backend.
        dtype: "float32" or "float64" for parameters and activations.
        seed: seeds the initial weights (identical on every backend and dtype) and the dropout generator.
        threads: NumPy only: split each batch into this many shards computed side by side (default: one per
            available core). Dropout masks depend on it, so a run is bit-reproducible for a fixed value.
    """

    def __init__(
        self, config: ViTConfig, backend: str | Backend = "numpy", dtype: str = "float32", seed: int = 0,
        threads: int | None = None,
    ) -> None:
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}")
        if str(np.dtype(dtype)) not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.config = config
        self.backend = get_backend(backend)
        self.dtype = np.dtype(dtype)
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = 1 if self.backend.name != "numpy" else (threads or available_cores())
        cfg = config
        self.patch_embed = PatchEmbed("patch_embed", cfg)
        self.blocks = [Block(f"blocks.{i}", cfg) for i in range(cfg.depth)]
        self.norm = LayerNorm("norm", cfg.dim, cfg.ln_eps)
        self.head = Mlp("head", cfg.pooled_dim, cfg.head_units, cfg.head_dropout, cfg.gelu)
        self.head_out = Dense("head.out", (cfg.head_units or (cfg.pooled_dim,))[-1], cfg.num_classes)

        init_rng = np.random.default_rng(seed)
        xp = self.backend.xp
        self.params: dict[str, Array] = {
            name: xp.asarray(init(init_rng, shape), dtype=self.dtype)
            for name, (shape, init) in self.param_specs().items()
        }
        self.grads: dict[str, Array] = {name: xp.zeros_like(p) for name, p in self.params.items()}
        self.rng = self.backend.rng(seed + 1)  # dropout masks: a stream separate from the initial weights
        self.attention_maps: list[Array] = []
        self._cache: tuple | None = None

    # ---- parameters ---------------------------------------------------------------------------------------
    def param_specs(self) -> ParamSpecs:
        """Name -> (shape, initializer) for every parameter, in forward order."""
        cfg = self.config
        specs: ParamSpecs = dict(self.patch_embed.param_specs())
        if cfg.pool == "cls":
            specs["cls_token"] = ((cfg.dim,), zeros)
        specs["pos_embed"] = ((cfg.num_tokens, cfg.dim), uniform(0.05))  # Keras Embedding's default
        for block in self.blocks:
            specs.update(block.param_specs())
        specs.update(self.norm.param_specs())
        specs.update(self.head.param_specs())
        specs.update(self.head_out.param_specs())
        return specs

    def load_params(self, params: Any) -> None:
        """Copy named arrays (host or device, e.g. a checkpoint's) into ``self.params``, in place.

        Raises ValueError naming the first parameter that is missing or has another shape.
        """
        missing = sorted(set(self.params) - set(params))
        if missing:
            raise ValueError(f"parameters missing: {missing[:5]}; they belong to a different model")
        for name, p in self.params.items():
            if tuple(params[name].shape) != tuple(p.shape):
                raise ValueError(f"parameter {name} has shape {tuple(params[name].shape)}, the model expects "
                                 f"{tuple(p.shape)}")
        for name, p in self.params.items():
            p[...] = self.backend.asarray(params[name], dtype=p.dtype)

    def num_params(self) -> int:
        """Number of trainable scalars."""
        return sum(int(p.size) for p in self.params.values())

    def no_decay_names(self) -> list[str]:
        """Parameters usually excluded from weight decay: biases, layer-norm scales and shifts, embeddings."""
        return [n for n, p in self.params.items() if p.ndim < 2 or n in ("pos_embed", "cls_token")]

    # ---- forward ------------------------------------------------------------------------------------------
    def check_images(self, images: Any) -> Array:
        """Return ``images`` as a backend array of the model dtype, or raise ValueError saying what is wrong."""
        cfg = self.config
        expected = f"(batch, {cfg.image_size}, {cfg.image_size}, {cfg.channels})"
        shape = getattr(images, "shape", None)
        if shape is None:
            raise ValueError(f"images must be an array of shape {expected}, got {type(images).__name__}")
        if len(shape) != 4:
            raise ValueError(f"images must have 4 axes {expected} (channels last), got shape {tuple(shape)}")
        if tuple(shape[1:3]) != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f"images must be {cfg.image_size}x{cfg.image_size} pixels to match the config, got "
                f"{shape[1]}x{shape[2]} (shape {tuple(shape)}); resize them first"
            )
        if shape[3] != cfg.channels:
            raise ValueError(
                f"images must have {cfg.channels} channels in the last axis {expected}, got {shape[3]} "
                f"(shape {tuple(shape)}); channels-first input needs transposing to (B, H, W, C)"
            )
        if shape[0] == 0:
            raise ValueError("images is an empty batch")
        xp = self.backend.xp
        if self.backend.name == "numpy":
            images = to_numpy(images)  # a CuPy batch for a NumPy model comes to the host
        if not np.issubdtype(np.dtype(images.dtype), np.number) or np.issubdtype(images.dtype, np.complexfloating):
            raise ValueError(f"images must be real numbers, got dtype {images.dtype}")
        x = xp.asarray(images, dtype=self.dtype)
        if not bool(xp.isfinite(x).all()):
            raise ValueError("images contain NaN or infinite values")
        return x

    def forward(self, images: Any, training: bool = False, keep_attention: bool = False) -> Array:
        """Logits (B, num_classes) for normalised images (B, image_size, image_size, channels).

        ``training=True`` applies dropout and keeps what ``backward`` needs. ``keep_attention=True`` stores
        each block's attention probabilities (B, heads, T, T) in ``self.attention_maps``. On NumPy the batch
        is split into ``threads`` shards run side by side (npvit.parallel), and each shard goes through the
        blocks a few images at a time (see ``_forward``).
        """
        x = self.check_images(images)
        slices = shard_slices(len(x), self.threads)
        if len(slices) == 1 or not training:
            rngs = [self.rng] * len(slices)
        else:  # one generator per shard (generators are not thread-safe), seeded from the model's own
            rngs = [self.backend.rng(int(seed)) for seed in self.rng.integers(0, 2**31, size=len(slices))]
        ctxs = [Context(training=training, rng=rng, keep_attention=keep_attention) for rng in rngs]
        outs = parallel_map(self._forward, [(x[sl], ctx) for sl, ctx in zip(slices, ctxs)], self.threads)
        xp = self.backend.xp
        logits = outs[0][0] if len(outs) == 1 else xp.concatenate([out[0] for out in outs])
        self.attention_maps = [
            maps[0] if len(maps) == 1 else xp.concatenate(maps) for maps in zip(*(c.attention_maps for c in ctxs))
        ]
        self._cache = (slices, [out[1] for out in outs]) if training else None
        return logits

    def _forward(self, x: Array, ctx: Context) -> tuple[Array, tuple | None]:
        """The forward pass of one shard. Returns (logits, cache); the cache is None unless training.

        The blocks treat images independently, so they run on a few images at a time (``_pieces``): each
        block's intermediates then stay in the CPU's cache instead of streaming through memory. The head runs
        on the whole shard, where its large weight matrix is read once.
        """
        cfg, xp, params = self.config, self.backend.xp, self.params
        pieces = self._pieces(len(x))
        outs = [self._tokens(x[sl], ctx) for sl in pieces]
        t = outs[0][0] if len(outs) == 1 else xp.concatenate([out[0] for out in outs])
        if len(pieces) > 1 and ctx.attention_maps:  # appended piece by piece: regroup them block by block
            depth = len(self.blocks)
            maps = ctx.attention_maps
            ctx.attention_maps = [xp.concatenate(maps[i::depth]) for i in range(depth)]
        pooled = self._pool(t)
        h, c_drop = ctx.dropout(pooled, cfg.head_dropout)
        h, c_head = self.head.forward(params, h, ctx)
        logits, c_out = self.head_out.forward(params, h, ctx)
        if not ctx.training:
            return logits, None
        return logits, (pieces, [out[1] for out in outs], t.shape, c_drop, c_head, c_out)

    def _pieces(self, batch: int) -> list[slice]:
        """Slices of a shard run through the blocks one after another (a single one on a GPU)."""
        return batch_chunks(self.backend.xp, batch, self._token_bytes_per_image(), cache="l3")

    def _tokens(self, x: Array, ctx: Context) -> tuple[Array, tuple | None]:
        """Images -> normalised tokens (B, T, dim): patch embedding, class token, position embedding, blocks,
        final layer norm. Returns (tokens, cache); the cache is None unless training."""
        cfg, xp, params = self.config, self.backend.xp, self.params
        t, c_embed = self.patch_embed.forward(params, x, ctx)
        if cfg.pool == "cls":
            cls = xp.broadcast_to(params["cls_token"], (t.shape[0], 1, cfg.dim))
            t = xp.concatenate([cls, t], axis=1)
        t = t + params["pos_embed"]

        c_blocks = []
        for block in self.blocks:
            t, c = block.forward(params, t, ctx)
            if ctx.training:
                c_blocks.append(c)

        t, c_norm = self.norm.forward(params, t, ctx)
        return t, ((c_embed, c_blocks, c_norm) if ctx.training else None)

    def _tokens_backward(self, dt: Array, cache: tuple, grads: dict[str, Array]) -> Array:
        """Backward of ``_tokens``: writes the gradients of its parameters into ``grads`` and returns d images."""
        c_embed, c_blocks, c_norm = cache
        params = self.params
        dt = self.norm.backward(params, grads, dt, c_norm)
        for block, c in zip(reversed(self.blocks), reversed(c_blocks)):
            dt = block.backward(params, grads, dt, c)

        grads["pos_embed"] = dt.sum(axis=0)
        if self.config.pool == "cls":
            grads["cls_token"] = dt[:, 0].sum(axis=0)
            dt = dt[:, 1:]
        return self.patch_embed.backward(params, grads, dt, c_embed)

    def _token_bytes_per_image(self) -> int:
        """Bytes of the largest intermediate a block makes per image: the fused query/key/value projection,
        the MLP's hidden layer, or one image's attention scores. Counted in float32 for every dtype, so that
        float32 and float64 models cut a batch alike and draw the same dropout masks."""
        cfg = self.config
        t = cfg.num_tokens
        widest = max(3 * cfg.num_heads * cfg.key_dim, cfg.dim, *cfg.mlp_units)
        return max(t * widest, cfg.num_heads * t * t) * 4

    def _pool(self, t: Array) -> Array:
        pool = self.config.pool
        if pool == "flatten":
            return t.reshape(t.shape[0], -1)  # row-major over (token, channel), as keras Flatten
        if pool == "cls":
            return t[:, 0]
        return t.mean(axis=1)

    def _pool_backward(self, dpooled: Array, shape: tuple[int, ...]) -> Array:
        pool, xp = self.config.pool, self.backend.xp
        if pool == "flatten":
            return dpooled.reshape(shape)
        if pool == "cls":
            dt = xp.zeros(shape, dtype=dpooled.dtype)
            dt[:, 0] = dpooled
            return dt
        # A read-only broadcast view, not a copy: layernorm_backward only reads its dy.
        return xp.broadcast_to(dpooled[:, None, :] / shape[1], shape)

    # ---- backward -----------------------------------------------------------------------------------------
    def backward(self, dlogits: Array) -> Array:
        """Backpropagate ``dlogits`` (B, num_classes) through the last training forward pass.

        Fills ``self.grads`` (overwriting it) and returns the gradient with respect to the input images. The
        cache is released, so each training forward supports one backward.
        """
        if self._cache is None:
            raise RuntimeError("backward() needs a preceding forward(images, training=True)")
        slices, caches = self._cache
        expected = (slices[-1].stop, self.config.num_classes)
        if tuple(dlogits.shape) != expected:
            raise ValueError(f"dlogits must have shape {expected} like the logits, got {tuple(dlogits.shape)}")
        self._cache = None
        outs = parallel_map(self._backward, [(dlogits[sl], c) for sl, c in zip(slices, caches)], self.threads)
        grads = outs[0][1]
        for _, shard_grads in outs[1:]:  # parameters are shared by the shards: their gradients add up
            for name, g in shard_grads.items():
                grads[name] += g
        self.grads.update(grads)
        return outs[0][0] if len(outs) == 1 else self.backend.xp.concatenate([out[0] for out in outs])

    def _backward(self, dlogits: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """The backward pass of one shard. Returns (d images, gradients of every parameter)."""
        pieces, c_tokens, t_shape, c_drop, c_head, c_out = cache
        params, grads = self.params, {}
        dh = self.head_out.backward(params, grads, dlogits, c_out)
        dh = self.head.backward(params, grads, dh, c_head)
        dt = self._pool_backward(dropout_grad(dh, c_drop), t_shape)
        dx = [self._tokens_backward(dt[pieces[0]], c_tokens[0], grads)]
        for sl, c in zip(pieces[1:], c_tokens[1:]):  # the other pieces of the forward pass, in turn
            piece_grads: dict[str, Array] = {}
            dx.append(self._tokens_backward(dt[sl], c, piece_grads))
            for name, g in piece_grads.items():  # every piece went through the same blocks: gradients add up
                grads[name] += g
        return (dx[0] if len(dx) == 1 else self.backend.xp.concatenate(dx)), grads


ViT = VisionTransformer
