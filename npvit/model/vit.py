"""ViT, the Vision Transformer (Dosovitskiy et al., 2020), laid out as in the Keras example and timm.

    tokens = PatchEmbed(images) [+ cls_token in front] + pos_embed      (B, T, dim)
             or ConvTokenizer(images) (CCT's, tokenizer "conv")
    tokens = Block(tokens), depth times                                (pre-norm transformer layers)
    pooled = pool(LayerNorm(tokens))                                   flatten | cls | gap | seq
             or LayerNorm(pool(tokens)) with fc_norm                   (timm's global_pool="avg")
    logits = Dense(Mlp(Dropout(pooled)))                               classifier head

The model owns its parameters (``params``) and their gradients (``grads``, same keys), each a FlatDict: named
views into one flat buffer. ``features_forward`` / ``head_forward`` (with their ``*_backward`` twins) are the
network, written as the data flows, each returning its output and the cache its backward needs; ``forward``
and ``backward`` run them over a batch, which on NumPy is cut into thread shards and cache-sized pieces
(``npvit.model.batched``). ``forward(training=True)`` keeps the caches that ``backward`` consumes;
``forward(training=False)`` keeps nothing. ``forward_features`` and ``forward_head`` mean what they mean in
timm: images -> the blocks' tokens after the final norm (none with fc_norm) and tokens -> logits, in
evaluation mode, so that ``forward_head(forward_features(x))`` equals ``forward(x)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Backend, get_array_module, get_backend, to_numpy
from ..config import ViTConfig
from ..optim.flat import FlatDict
from ..kernels import DropoutKey, dropout_backward
from ..parallel import available_cores
from ..kernels import seq_pool_backward, seq_pool_forward
from .batched import batch_size, batched_backward, batched_forward
from .block import Block
from .conv_tokenizer import ConvTokenizer
from .init import normal, trunc_normal, uniform, zeros
from .mlp import Mlp
from .module import Context, Dense, LayerNorm, ParamSpecs
from .patch_embed import PatchEmbed

Array = Any
DTYPES = ("float32", "float64")


class ViT:
    """A Vision Transformer with hand-written forward and backward passes.

    Args:
        config: the architecture.
        backend: "numpy", "cupy" or a Backend.
        dtype: "float32" or "float64" for parameters and activations.
        seed: seeds the initial weights (identical on every backend and dtype) and the generator of dropout
            seeds for forward passes that are given none.
        threads: NumPy only: split each batch into this many shards computed side by side (default: one per
            available core). Results do not depend on it beyond the order of floating-point sums.
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
        # The tokenizer: PatchEmbed (its parameters "patch_embed.*") or CCT's ConvTokenizer ("tokenizer.*")
        self.patch_embed = PatchEmbed("patch_embed", cfg) if cfg.tokenizer == "patch" else ConvTokenizer(
            "tokenizer", cfg)
        self.blocks = [Block(f"blocks.{i}", cfg, cfg.drop_path_rate(i)) for i in range(cfg.depth)]
        # The final LayerNorm: on every token ("norm"), or on the pooled vector ("fc_norm", timm's for avg).
        self.norm = LayerNorm("fc_norm" if cfg.fc_norm else "norm", cfg.dim, cfg.ln_eps)
        w_init = trunc_normal(0.02) if cfg.arrangement == "timm" else None
        self.head = Mlp("head", cfg.pooled_dim, cfg.head_units, cfg.head_dropout, cfg.gelu, w_init=w_init)
        self.head_out = Dense("head.out", (cfg.head_units or (cfg.pooled_dim,))[-1], cfg.num_classes, w_init)
        self.preprocess: Any = None  # how images become its input, when the loader knows (npvit.load_timm)

        init_rng = np.random.default_rng(seed)
        specs = self.param_specs()
        self.params = FlatDict.zeros(self.backend.xp, {name: shape for name, (shape, _) in specs.items()}, self.dtype)
        for name, (shape, init) in specs.items():
            self.params[name] = self.backend.asarray(init(init_rng, shape), dtype=self.dtype)
        self.grads = self.params.zeros_like()
        self.rng = np.random.default_rng(seed + 1)  # dropout seeds: a stream separate from the initial weights
        self.attention_maps: list[Array] = []
        self._cache: tuple | None = None

    # ---- parameters ---------------------------------------------------------------------------------------
    def param_specs(self) -> ParamSpecs:
        """Name -> (shape, initializer) for every parameter, in forward order."""
        cfg = self.config
        specs: ParamSpecs = dict(self.patch_embed.param_specs())
        timm = cfg.arrangement == "timm"
        if cfg.has_class_token:  # the paper's zeros; timm's normal with std 1e-6
            specs["cls_token"] = ((cfg.dim,), normal(1e-6) if timm else zeros)
        # Keras Embedding's default; timm's truncated normal
        specs["pos_embed"] = ((cfg.num_tokens, cfg.dim), trunc_normal(0.02) if timm else uniform(0.05))
        for block in self.blocks:
            specs.update(block.param_specs())
        specs.update(self.norm.param_specs())
        if cfg.pool == "seq":  # the score vector g of the sequence pooling, stored as CCT's Linear(dim, 1) kernel
            specs["attention_pool.w"] = ((cfg.dim, 1), trunc_normal(0.02))
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
            self.params[name] = self.backend.asarray(params[name], dtype=p.dtype)

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
        if self.backend.name == "numpy":
            images = to_numpy(images)  # a CuPy batch for a NumPy model comes to the host
        if not np.issubdtype(np.dtype(images.dtype), np.number) or np.issubdtype(images.dtype, np.complexfloating):
            raise ValueError(f"images must be real numbers, got dtype {images.dtype}")
        # Checked where the images are host arrays: on a device the check would wait for the device at every
        # batch. Device batches (the training program's) are made from uint8 pixels, finite by construction.
        if isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating):
            if not np.isfinite(images).all():
                raise ValueError("images contain NaN or infinite values")
        return self.backend.xp.asarray(images, dtype=self.dtype)

    def forward(self, images: Any, training: bool = False, keep_attention: bool = False, *,
                dropout_seed: int | Array | None = None, first_sample: int = 0) -> Array:
        """Logits (B, num_classes) for normalised images (B, image_size, image_size, channels).

        ``training=True`` applies dropout and keeps what ``backward`` needs. Dropout masks are a pure function
        of ``dropout_seed`` (drawn from the model's own generator when None), the layer and the global index
        of each image, ``first_sample`` being that of ``images[0]``: a process that holds a slice of a larger
        batch passes where its slice starts. ``keep_attention=True`` stores each block's attention
        probabilities (B, heads, T, T) in ``self.attention_maps``. On NumPy the batch is cut into thread
        shards and cache-sized pieces (npvit.model.batched), which changes nothing but the speed.
        """
        x = self.check_images(images)
        key = None
        if training:
            if dropout_seed is None:
                dropout_seed = int(self.rng.integers(2**63))
            # A 0-d device array stays one (a captured CUDA graph rewrites it before each launch).
            seed = dropout_seed if get_array_module(dropout_seed) is not np else int(dropout_seed)
            key = DropoutKey(seed=seed, first=int(first_sample))
        ctx = Context(training=training, dropout_key=key, keep_attention=keep_attention)
        logits, cache, self.attention_maps = batched_forward(self, x, ctx)
        self._cache = cache if training else None
        return logits

    def backward(self, dlogits: Array, input_grad: bool = True) -> Array | None:
        """Backpropagate ``dlogits`` (B, num_classes) through the last training forward pass.

        Fills ``self.grads`` (overwriting it) and returns the gradient with respect to the input images, or
        None with ``input_grad=False`` (a training step, which does not need it: the conv tokenizer then skips
        its first layer's input gradient). The cache is released, so each training forward supports one
        backward.
        """
        if self._cache is None:
            raise RuntimeError("backward() needs a preceding forward(images, training=True)")
        expected = (batch_size(self._cache), self.config.num_classes)
        if tuple(dlogits.shape) != expected:
            raise ValueError(f"dlogits must have shape {expected} like the logits, got {tuple(dlogits.shape)}")
        cache, self._cache = self._cache, None
        return batched_backward(self, dlogits, cache, self.grads, input_grad)

    # ---- timm's forward_features / forward_head: evaluation mode, no caches ---------------------------------
    def forward_features(self, images: Any) -> Array:
        """Tokens (B, T, dim) of ``images`` (B, H, W, C) after the blocks and the final norm (no norm with
        fc_norm: it comes after the pooling), in evaluation mode (as timm's)."""
        x = self.check_images(images)
        return self.features_forward(x, Context(training=False))[0]

    def forward_head(self, tokens: Any) -> Array:
        """Logits (B, num_classes) of tokens (B, T, dim) as forward_features returns them, in evaluation mode
        (as timm's)."""
        cfg, xp = self.config, self.backend.xp
        shape = getattr(tokens, "shape", None)
        if shape is None or len(shape) != 3 or tuple(shape[1:]) != (cfg.num_tokens, cfg.dim):
            raise ValueError(f"tokens must have shape (batch, {cfg.num_tokens}, {cfg.dim}) as forward_features "
                             f"returns them, got {None if shape is None else tuple(shape)}")
        return self.head_forward(xp.asarray(tokens, dtype=self.dtype), Context(training=False))[0]

    # ---- the network, as the data flows: forward / backward pairs with explicit caches ---------------------
    def features_forward(self, x: Array, ctx: Context) -> tuple[Array, tuple | None]:
        """Images (B, H, W, C) -> tokens (B, T, dim) after the final norm (none with fc_norm). Returns (tokens,
        cache); no cache unless training."""
        cfg, xp, params = self.config, self.backend.xp, self.params
        t, c_embed = self.patch_embed.forward(params, x, ctx)                # (B, N, dim), N patches
        if cfg.has_class_token:
            cls = xp.broadcast_to(params["cls_token"], (t.shape[0], 1, cfg.dim))  # (B, 1, dim)
            t = xp.concatenate([cls, t], axis=1)                            # (B, T, dim), T = N + 1
        t = t + params["pos_embed"]                                         # (B, T, dim)
        c_blocks = []
        for block in self.blocks:
            t, c = block.forward(params, t, ctx)                            # (B, T, dim)
            c_blocks.append(c)
        c_norm = None
        if not cfg.fc_norm:
            t, c_norm = self.norm.forward(params, t, ctx)                   # (B, T, dim)
        return t, ((c_embed, c_blocks, c_norm) if ctx.training else None)

    def head_forward(self, t: Array, ctx: Context) -> tuple[Array, tuple | None]:
        """Tokens (B, T, dim) -> logits (B, num_classes). Returns (logits, cache)."""
        cfg, params = self.config, self.params
        pooled, c_pool = self._pool(t)                                      # (B, pooled_dim)
        c_fc_norm = None
        if cfg.fc_norm:
            pooled, c_fc_norm = self.norm.forward(params, pooled, ctx)      # (B, dim)
        h, c_drop = ctx.dropout(pooled, cfg.head_dropout, "head_drop")      # (B, pooled_dim)
        h, c_head = self.head.forward(params, h, ctx)                       # (B, head_units[-1])
        logits, c_out = self.head_out.forward(params, h, ctx)               # (B, num_classes)
        return logits, ((c_pool, c_fc_norm, c_drop, c_head, c_out) if ctx.training else None)

    def features_backward(self, dt: Array, cache: tuple, grads: dict[str, Array], input_grad: bool = True
                          ) -> Array | None:
        """Backward of ``features_forward``: writes its parameters' gradients into ``grads``, returns d images
        (None from the conv tokenizer with ``input_grad=False``)."""
        c_embed, c_blocks, c_norm = cache
        params = self.params
        if not self.config.fc_norm:
            dt = self.norm.backward(params, grads, dt, c_norm)              # (B, T, dim)
        for block, c in zip(reversed(self.blocks), reversed(c_blocks)):
            dt = block.backward(params, grads, dt, c)                       # (B, T, dim)
        grads["pos_embed"] = dt.sum(axis=0)                                 # (T, dim)
        if self.config.has_class_token:
            grads["cls_token"] = dt[:, 0].sum(axis=0)                       # (dim,)
            dt = dt[:, 1:]                                                  # (B, N, dim)
        if isinstance(self.patch_embed, ConvTokenizer):
            return self.patch_embed.backward(params, grads, dt, c_embed, input_grad)  # (B, H, W, C) or None
        return self.patch_embed.backward(params, grads, dt, c_embed)        # (B, H, W, C)

    def head_backward(self, dlogits: Array, cache: tuple, grads: dict[str, Array]) -> Array:
        """Backward of ``head_forward``: writes its parameters' gradients into ``grads``, returns d tokens."""
        c_pool, c_fc_norm, c_drop, c_head, c_out = cache
        params = self.params
        dh = self.head_out.backward(params, grads, dlogits, c_out)          # (B, head_units[-1])
        dh = self.head.backward(params, grads, dh, c_head)                  # (B, pooled_dim)
        dh = dropout_backward(dh, c_drop)                                   # (B, pooled_dim)
        if self.config.fc_norm:
            dh = self.norm.backward(params, grads, dh, c_fc_norm)           # (B, dim)
        return self._pool_backward(dh, c_pool, grads)                       # (B, T, dim)

    def _pool(self, t: Array) -> tuple[Array, Any]:
        cfg = self.config
        if cfg.pool == "flatten":
            return t.reshape(t.shape[0], -1), t.shape  # row-major over (token, channel), as keras Flatten
        if cfg.pool == "cls":
            return t[:, 0], t.shape
        if cfg.pool == "seq":  # softmax(t g)-weighted mean of every token
            return seq_pool_forward(t, self.params["attention_pool.w"][:, 0])
        return (t[:, 1:].mean(axis=1) if cfg.has_class_token else t.mean(axis=1)), t.shape  # the patch tokens'

    def _pool_backward(self, dpooled: Array, cache: Any, grads: dict[str, Array]) -> Array:
        cfg, xp = self.config, self.backend.xp
        if cfg.pool == "seq":
            dt, dg = seq_pool_backward(dpooled, cache, self.params["attention_pool.w"][:, 0])
            grads["attention_pool.w"] = dg[:, None]                         # (dim, 1)
            return dt
        shape = cache
        if cfg.pool == "flatten":
            return dpooled.reshape(shape)
        if cfg.pool == "cls" or cfg.has_class_token:  # one token gets it all, or the N patch tokens 1/N each
            dt = xp.zeros(shape, dtype=dpooled.dtype)
            if cfg.pool == "cls":
                dt[:, 0] = dpooled
            else:
                dt[:, 1:] = dpooled[:, None, :] / (shape[1] - 1)
            return dt
        if cfg.fc_norm:  # the blocks' backward comes next: give it an array of its own
            return xp.repeat(dpooled[:, None, :] / shape[1], shape[1], axis=1)
        # A read-only broadcast view, not a copy: layernorm_backward only reads its dy.
        return xp.broadcast_to(dpooled[:, None, :] / shape[1], shape)

