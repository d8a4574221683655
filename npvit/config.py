"""ViTConfig: every architectural choice of a Vision Transformer, as a plain dataclass.

Presets reproduce the Keras example "Image classification with Vision Transformer" (both revisions), a
32x32 variant for CIFAR images at their native size, and a tiny model for tests; ``ViTConfig.timm(arch)`` is
timm's ``VisionTransformer`` for the plain ViTs ``vit_{tiny,small,base,large}_patch{16,32}_{224,384}`` (the
paper's arrangement). ``dataclasses.replace`` makes any variant: ``replace(ViTConfig.keras(), pool="cls",
depth=4)``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

POOLS = ("flatten", "cls", "gap", "seq")
TOKENIZERS = ("patch", "conv")
CONV_KERNEL, POOL_KERNEL, POOL_STRIDE, POOL_PADDING = 3, 3, 2, 1  # CCT's tokenizer layer: conv 3x3, max-pool 3/2/1
GELUS = ("erf", "tanh")
ATTENTION_FANS = ("axes", "receptive")
ARRANGEMENTS = ("keras", "timm")

# timm's plain ViT sizes: name -> (width, depth, heads); every one has MLP ratio 4.
TIMM_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
TIMM_ARCHS = tuple(f"vit_{size}_patch{patch}_{side}" for size in TIMM_SIZES for patch in (16, 32)
                   for side in (224, 384) if (size, patch) != ("tiny", 32))  # timm has no tiny/32
"""The timm architectures npvit builds exactly (``ViTConfig.timm``)."""
GLOBAL_POOLS = ("token", "avg")


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a Vision Transformer.

    Attributes:
        image_size: side of the square input image, in pixels (the model input is (B, S, S, C)).
        patch_size: side of each square patch; patches are cut with stride = size, VALID padding.
        patch_overlap: pixels each patch extends past its cell on every side (0, every preset but fast: the
            paper's side-by-side patches); patches of side patch_size + 2 patch_overlap, the image padded
            with zeros, so the patch embedding is a convolution with stride patch_size (npvit.kernels.patches).
        channels: colour channels of the input.
        num_classes: number of output logits.
        dim: token width (Keras ``projection_dim``).
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        key_dim: width of each head's query/key/value (Keras ``key_dim``); need not be dim / num_heads.
        mlp_units: hidden sizes of each block's MLP, every one followed by GELU and dropout. The last must equal
            ``dim`` because of the residual connection.
        head_units: hidden sizes of the classifier MLP (GELU and dropout after each).
        dropout: dropout rate after each block-MLP layer.
        attention_dropout: dropout rate on the attention probabilities.
        head_dropout: dropout rate before and inside the classifier MLP.
        drop_path: stochastic depth (drop path) rate of the last block's residual branches; block i of depth
            uses drop_path * i / (depth - 1) (timm's linear rule: none in the first block; depth 1: the rate
            itself). 0 (every preset) draws nothing.
        ln_eps: layer-norm epsilon.
        pool: how tokens become one vector: "flatten" (the Keras example: all tokens concatenated),
            "cls" (the paper: a learned class token, prepended, and its output taken), "gap" (mean over the
            patch tokens: the class token, when there is one, is left out, as timm's global_pool="avg"), "seq"
            (CCT's sequence pooling: the tokens' mean weighted by softmax over the tokens of a learned score
            x . g, npvit.kernels.seq_pool; a class token, when there is one, is weighted like the others).
        gelu: "erf" (exact) or "tanh" (approximation).
        attention_fans: the fans of the Glorot-uniform query, key, value and output kernels. "axes": Keras 3.15
            and later, which read them from the einsum axes of its (D, H, d) and (H, d, D) kernels: fans (D, H d)
            and (H d, D), the fans of the 2-D matrices npvit stores. "receptive": TensorFlow Keras and Keras up to
            3.14 (the example's 2021 run), which count the leading axis as a receptive field: fans (H D, d D)
            and (H d, H D): query/key/value limits sqrt(D (H + d) / (D + H d)) times narrower (3.7 times at
            D = d = 64, H = 4). Keras' ``Dense`` kernels are 2-D, the same under both rules. The default is
            "receptive", the rule of the example's published result; "axes" reproduces a run of the example
            on Keras 3.15 or later (docs/training.md, "The Keras recipe against Keras itself").
        arrangement: "keras" (every preset but the timm ones): GELU after every layer of the block MLP, the
            last one too, as the Keras example's ``mlp`` helper, and Keras' initializers. "timm" (the paper
            and timm's ``Mlp``): GELU only between the block MLP's layers, and timm's initializers (linear
            kernels normal with std 0.02, zero biases, pos_embed normal std 0.02, cls_token normal std 1e-6,
            the patch projection as torch's Conv2d: uniform within 1 / sqrt(fan_in), bias too).
        class_token: prepend a learned class token (with its own position in pos_embed). None (the default)
            means pool == "cls"; True with pool "gap" is timm's global_pool="avg" on a model that has one.
        fc_norm: True: the final LayerNorm acts on the pooled vector (named ``fc_norm``) instead of on every
            token (``norm``), as timm's default for global_pool="avg". False: norm before pooling.
        tokenizer: how images become tokens. "patch" (every preset but compact): patches projected linearly
            (PatchEmbed). "conv" (CCT, Hassani et al. 2021): for each entry of ``conv_channels`` a layer conv 3x3
            (stride 1, same padding, no bias) -> ReLU -> max-pool (kernel 3, stride 2, padding 1), each halving
            the image side; the pixels of the last map are the tokens, projected linearly to ``dim`` only when
            the last channel count differs from it. ``patch_size`` and ``patch_overlap`` are then unused.
        conv_channels: the output channels of the convolutional tokenizer's layers (empty with "patch").
    """

    image_size: int = 72
    patch_size: int = 6
    patch_overlap: int = 0
    channels: int = 3
    num_classes: int = 100
    dim: int = 64
    depth: int = 8
    num_heads: int = 4
    key_dim: int = 64
    mlp_units: tuple[int, ...] = (128, 64)
    head_units: tuple[int, ...] = (2048, 1024)
    dropout: float = 0.1
    attention_dropout: float = 0.1
    head_dropout: float = 0.5
    drop_path: float = 0.0
    ln_eps: float = 1e-6
    pool: str = "flatten"
    gelu: str = "erf"
    attention_fans: str = "receptive"
    arrangement: str = "keras"
    class_token: bool | None = None
    fc_norm: bool = False
    tokenizer: str = "patch"
    conv_channels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Lists from JSON or the command line become tuples, so configs stay hashable and comparable.
        for name in ("mlp_units", "head_units", "conv_channels"):
            object.__setattr__(self, name, tuple(int(u) for u in getattr(self, name)))
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        """Tokens along each side of the image: patches, or the last map's pixels of the conv tokenizer."""
        if self.tokenizer == "conv":
            side = self.image_size
            for _ in self.conv_channels:  # each layer's max-pool: (side + 2 p - k) // s + 1
                side = (side + 2 * POOL_PADDING - POOL_KERNEL) // POOL_STRIDE + 1
            return side
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per image (N)."""
        return self.grid_size**2

    @property
    def has_class_token(self) -> bool:
        """Whether a class token is prepended: ``class_token``, or pool == "cls" when that is None."""
        return self.pool == "cls" if self.class_token is None else self.class_token

    @property
    def num_tokens(self) -> int:
        """Tokens the transformer blocks see: the patches, plus the class token when there is one."""
        return self.num_patches + (1 if self.has_class_token else 0)

    @property
    def patch_window(self) -> int:
        """Side of the pixels one patch holds: P + 2 * patch_overlap."""
        return self.patch_size + 2 * self.patch_overlap

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch (K * K * C, K = patch_window)."""
        return self.patch_window**2 * self.channels

    @property
    def pooled_dim(self) -> int:
        """Width of the vector the classifier head receives."""
        return self.num_tokens * self.dim if self.pool == "flatten" else self.dim

    @property
    def tokenizer_projects(self) -> bool:
        """Whether the conv tokenizer ends with a linear projection (its last channel count is not dim)."""
        return self.tokenizer == "conv" and self.conv_channels[-1] != self.dim

    def drop_path_rate(self, block: int) -> float:
        """The drop path rate of block ``block`` (0-based): drop_path * block / (depth - 1), rising linearly from
        0 in the first block to drop_path in the last (timm's rule); with one block, drop_path."""
        if self.depth == 1:
            return self.drop_path
        return self.drop_path * block / (self.depth - 1)

    def num_params(self) -> int:
        """Trainable scalars of a ViT with this config, counted without building it (the same number as
        ``ViT(config).num_params()``): what a checkpoint must store, and what a training step keeps."""
        d, qkv = self.dim, self.num_heads * self.key_dim

        def dense_chain(sizes: tuple[int, ...]) -> int:  # weights and biases of Dense layers in a row
            return sum(a * b + b for a, b in zip(sizes, sizes[1:]))

        if self.tokenizer == "conv":
            chans = (self.channels, *self.conv_channels)
            embed = sum(CONV_KERNEL**2 * a * b for a, b in zip(chans, chans[1:]))
            embed += dense_chain((chans[-1], d)) if self.tokenizer_projects else 0
        else:
            embed = self.patch_dim * d + d
        embed += self.num_tokens * d + (d if self.has_class_token else 0)
        block = 2 * d + dense_chain((d, 3 * qkv)) + dense_chain((qkv, d)) + 2 * d + dense_chain((d, *self.mlp_units))
        head = dense_chain((self.pooled_dim, *self.head_units, self.num_classes))
        pool = d if self.pool == "seq" else 0  # the sequence pooling's score vector g
        return embed + self.depth * block + 2 * d + pool + head  # 2 d: the final norm, or fc_norm in its place

    # ---- checks and conversion ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        for name in ("image_size", "patch_size", "channels", "num_classes", "dim", "depth", "num_heads",
                     "key_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ViTConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.patch_overlap, int) or isinstance(self.patch_overlap, bool) or self.patch_overlap < 0:
            raise ValueError(f"ViTConfig.patch_overlap must be a non-negative integer, got {self.patch_overlap!r}")
        if self.tokenizer == "patch" and self.patch_size > self.image_size:
            raise ValueError(
                f"ViTConfig.patch_size ({self.patch_size}) must not exceed image_size ({self.image_size})"
            )
        if not self.mlp_units or any(u < 1 for u in self.mlp_units):
            raise ValueError(f"ViTConfig.mlp_units must be positive sizes, got {self.mlp_units!r}")
        if self.mlp_units[-1] != self.dim:
            raise ValueError(
                f"ViTConfig.mlp_units must end with dim ({self.dim}) so the residual connection adds up, "
                f"got {self.mlp_units!r}"
            )
        if any(u < 1 for u in self.head_units):
            raise ValueError(f"ViTConfig.head_units must be positive sizes, got {self.head_units!r}")
        for name in ("dropout", "attention_dropout", "head_dropout", "drop_path"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ViTConfig.{name} must be in [0, 1), got {value!r}")
        if not self.ln_eps > 0:
            raise ValueError(f"ViTConfig.ln_eps must be positive, got {self.ln_eps!r}")
        if self.pool not in POOLS:
            raise ValueError(f"ViTConfig.pool must be one of {POOLS}, got {self.pool!r}")
        if self.gelu not in GELUS:
            raise ValueError(f"ViTConfig.gelu must be one of {GELUS}, got {self.gelu!r}")
        if self.attention_fans not in ATTENTION_FANS:
            raise ValueError(f"ViTConfig.attention_fans must be one of {ATTENTION_FANS}, got {self.attention_fans!r}")
        if self.arrangement not in ARRANGEMENTS:
            raise ValueError(f"ViTConfig.arrangement must be one of {ARRANGEMENTS}, got {self.arrangement!r}")
        if self.class_token not in (None, True, False):
            raise ValueError(f"ViTConfig.class_token must be true, false or null, got {self.class_token!r}")
        if self.pool == "cls" and self.class_token is False:
            raise ValueError('ViTConfig.pool "cls" takes the class token\'s output: class_token cannot be false')
        if not isinstance(self.fc_norm, bool):
            raise ValueError(f"ViTConfig.fc_norm must be true or false, got {self.fc_norm!r}")
        if self.fc_norm and self.pool == "flatten":
            raise ValueError('ViTConfig.fc_norm normalises one pooled token: it needs pool "cls", "gap" or "seq", '
                             'not "flatten"')
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"ViTConfig.tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if self.tokenizer == "conv":
            if not self.conv_channels or any(c < 1 for c in self.conv_channels):
                raise ValueError(f'ViTConfig.tokenizer "conv" needs conv_channels, the positive channel counts of '
                                 f'its layers (e.g. [32, 64]), got {list(self.conv_channels)}')
            if self.grid_size < 1 or len(self.conv_channels) > 8:
                raise ValueError(f"ViTConfig.conv_channels: {len(self.conv_channels)} layers, each halving the "
                                 f"image side, are too many for {self.image_size}x{self.image_size} images")
            if self.arrangement == "timm":
                raise ValueError('ViTConfig.tokenizer "conv" builds a compact transformer, which timm has no '
                                 'counterpart of: use arrangement "keras"')
        elif self.conv_channels:
            raise ValueError(f'ViTConfig.conv_channels {list(self.conv_channels)} belongs to tokenizer "conv"; '
                             f'the tokenizer is {self.tokenizer!r}: set tokenizer "conv" or leave them empty')

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ViTConfig":
        """Inverse of to_dict; unknown keys are an error, so typos do not pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    # ---- presets -----------------------------------------------------------------------------------------
    @classmethod
    def keras(cls, num_classes: int = 100) -> "ViTConfig":
        """The Keras example as published in 2021: 72x72 input, 6x6 patches, width 64, 8 blocks.

        21,759,012 trainable parameters with 100 classes; reported about 55% top-1 / 82% top-5 on CIFAR-100.
        """
        return cls(num_classes=num_classes)

    @classmethod
    def keras_wide(cls, num_classes: int = 100) -> "ViTConfig":
        """The Keras example's current revision: token width projection_dim * num_heads = 256.

        81,982,308 trainable parameters with 100 classes.
        """
        return cls(num_classes=num_classes, dim=256, mlp_units=(512, 256))

    @classmethod
    def small(cls, num_classes: int = 10) -> "ViTConfig":
        """The Keras model at CIFAR's native 32x32 resolution: 4x4 patches, 64 patches per image."""
        return cls(num_classes=num_classes, image_size=32, patch_size=4)

    @classmethod
    def fast(cls, num_classes: int = 10) -> "ViTConfig":
        """A ViT sized for a 2-hour CIFAR budget on 2 CPU cores: 32x32 input, 4x4 patches (64 tokens), width
        64, 6 blocks of 2 heads of width 32, MLP ratio 2, mean-pooled tokens into one linear classifier, no
        dropout.

        208,842 trainable parameters with 10 classes; the model of ``--recipe fast`` (``npvit.recipes``). It
        trains twice as fast as width 96 for half the FLOPs, and 75 epochs of it beat 30 of width 96
        (``benchmarks/NOTES.md``, "Recipe fast"). Its attention kernels have the receptive-field fans it was
        measured with (query/key/value std 0.030, close to the 0.02 of timm's ViT).
        """
        return cls(
            num_classes=num_classes, image_size=32, patch_size=4, dim=64, depth=6, num_heads=2, key_dim=32,
            mlp_units=(128, 64), head_units=(), dropout=0.0, attention_dropout=0.0, head_dropout=0.0,
            pool="gap", gelu="tanh", attention_fans="receptive",
        )

    @classmethod
    def timm(cls, arch: str, num_classes: int = 1000, image_size: int | None = None, global_pool: str = "token",
             class_token: bool = True, fc_norm: bool | None = None) -> "ViTConfig":
        """timm's ``VisionTransformer`` for ``arch``, one of TIMM_ARCHS (``vit_base_patch16_224``, ...).

        A class token with its own position, one fused qkv projection with bias, pre-norm blocks whose MLP
        (ratio 4) has GELU (erf) only between its two layers, LayerNorm epsilon 1e-6, a linear classifier,
        no dropout (timm's defaults). ``global_pool`` as timm's: "token" (the class token's output after the
        final norm) or "avg" (the mean of the patch tokens; then ``fc_norm``, None meaning True as in timm,
        puts the final norm after the mean). ``image_size`` defaults to the arch's (224 or 384).
        """
        match = re.fullmatch(r"vit_(tiny|small|base|large)_patch(16|32)_(224|384)", arch)
        if match is None or arch not in TIMM_ARCHS:
            raise ValueError(f"unknown timm architecture {arch!r}; npvit builds {', '.join(TIMM_ARCHS)}")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS} (timm's names), got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError('global_pool="token" takes the class token\'s output: it needs class_token=True')
        dim, depth, heads = TIMM_SIZES[match.group(1)]
        return cls(
            image_size=int(match.group(3)) if image_size is None else image_size, patch_size=int(match.group(2)),
            num_classes=num_classes, dim=dim, depth=depth, num_heads=heads, key_dim=dim // heads,
            mlp_units=(4 * dim, dim), head_units=(), dropout=0.0, attention_dropout=0.0, head_dropout=0.0,
            ln_eps=1e-6, pool="cls" if global_pool == "token" else "gap", gelu="erf", arrangement="timm",
            class_token=class_token, fc_norm=(global_pool == "avg") if fc_norm is None else fc_norm,
        )

    @classmethod
    def compact(cls, num_classes: int = 10) -> "ViTConfig":
        """A compact transformer (CCT, Hassani et al. 2021) sized for 2 CPU cores: two conv 3x3 -> ReLU ->
        max-pool layers of 32 and 64 channels turn a 32x32 image into 8x8 = 64 tokens of width 64, then 4 blocks
        of 2 heads of width 32, MLP ratio 2, and sequence pooling into one linear classifier, no dropout.

        The sizes beside it are measured in ``benchmarks/sizing.py`` (benchmarks/NOTES.md, "Convolutional
        tokenizer"); CCT-2/3x2 itself is ``ViTConfig.cct``.
        """
        return cls(
            num_classes=num_classes, image_size=32, patch_size=4, tokenizer="conv", conv_channels=(32, 64), dim=64,
            depth=4, num_heads=2, key_dim=32, mlp_units=(128, 64), head_units=(), dropout=0.0,
            attention_dropout=0.0, head_dropout=0.0, pool="seq", gelu="tanh",
        )

    @classmethod
    def cct(cls, num_classes: int = 10) -> "ViTConfig":
        """CCT-2/3x2, the smallest compact transformer of Hassani et al. (2021): two conv 3x3 -> ReLU -> max-pool
        layers of 64 and 128 channels turn a 32x32 image into 8x8 = 64 tokens of width 128, then 2 blocks of
        2 heads of width 64, MLP ratio 1, and sequence pooling into one linear classifier, no dropout.

        284,490 trainable parameters with 10 classes; the model of ``--recipe cct`` (``npvit.recipes``), 85.12% on
        CIFAR-10 in 60 epochs and about 102.5 minutes on 2 cores (10 test-time views; 84.07% with the flip
        alone). It is ``compact`` twice as wide and half as deep: 2.2x the FLOPs for
        0.7x the images per second, and 3 points ahead of it at every epoch.
        """
        return replace(cls.compact(num_classes), conv_channels=(64, 128), dim=128, depth=2, key_dim=64,
                       mlp_units=(128, 128))

    @classmethod
    def tiny(cls, num_classes: int = 5) -> "ViTConfig":
        """A few thousand parameters, for tests and gradient checks: 8x8 images, 4 patches of 4x4."""
        return cls(
            image_size=8, patch_size=4, channels=3, num_classes=num_classes, dim=8, depth=2, num_heads=2,
            key_dim=4, mlp_units=(12, 8), head_units=(16,),
        )


PRESETS = {
    "keras": ViTConfig.keras,
    "keras-wide": ViTConfig.keras_wide,
    "small": ViTConfig.small,
    "fast": ViTConfig.fast,
    "compact": ViTConfig.compact,
    "cct": ViTConfig.cct,
    "tiny": ViTConfig.tiny,
}
"""Preset name (as the command-line tools spell it) -> constructor taking ``num_classes``."""
