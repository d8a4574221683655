"""The npvit Vision Transformer rebuilt in PyTorch: reference for the cross-check, peer in the benchmarks.

    import npvit
    from npvit.torch_reference import TorchViT

    model = npvit.ViT(npvit.ViTConfig.keras(), dtype="float32", seed=0)
    ref = TorchViT.from_npvit(model)                 # same config, same weights (copied, not shared)
    ref.train()                                      # dropout on, with the config's rates
    logits = ref(torch.from_numpy(images))           # images (B, H, W, C), as npvit takes them

The network is written from the Keras ViT example's description with plain torch modules and ops --
``nn.Linear`` (one fused query/key/value projection), ``nn.LayerNorm``, ``F.gelu``, ``nn.Dropout``, batched
``matmul`` + ``softmax`` for attention, and for the compact transformer (CCT) ``nn.Conv2d``, ``F.relu``,
``nn.MaxPool2d`` and a softmax over the tokens -- never from npvit's kernels, so that agreeing with it means
something.
It is also written the way a competent PyTorch user would write it (timm-style), because the benchmarks time
it against npvit: ``attention="sdpa"`` swaps the eager attention core for ``F.scaled_dot_product_attention``
with the same semantics (scale 1/sqrt(key_dim), dropout on the attention probabilities in training).

Parameter names map one to one onto npvit's (``model.param_specs()``): a torch parameter
``<prefix>.weight`` / ``<prefix>.bias`` of a Linear is npvit's ``<prefix>.w`` (stored transposed: npvit
keeps dense kernels (in, out), torch (out, in)) / ``<prefix>.b``; of a LayerNorm, ``<prefix>.gamma`` /
``<prefix>.beta``; ``pos_embed`` and ``cls_token`` keep their names; a conv tokenizer kernel
``tokenizer.conv{i}.weight`` (Co, Ci, k, k) is npvit's ``tokenizer.conv{i}.w`` (k, k, Ci, Co).

PyTorch is an optional dependency: this module imports it at import time, and nothing else in npvit imports
this module.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backend import to_numpy
from .config import ViTConfig

ATTENTION_IMPLS = ("eager", "sdpa")
Tensor = torch.Tensor


def extract_patches(images: Tensor, patch_size: int, overlap: int = 0) -> Tensor:
    """(B, H, W, C) -> (B, N, K*K*C), K = P + 2 overlap: patches row-major over the grid, each flattened as
    (row, col, channel).

    ``unfold`` with step = size takes only whole windows, which is VALID padding; with an overlap the image
    is first padded with ``overlap`` zeros on every side (``F.pad``) and the windows of side K taken with
    step P, so that the grid is the same (H // P) x (W // P).
    """
    b, _, _, c = images.shape
    p, o = patch_size, overlap
    k = p + 2 * o
    if o:  # (H + 2O - K) // P + 1 = H // P windows along each side: the same grid
        images = F.pad(images, (0, 0, o, o, o, o))  # (B, H + 2O, W + 2O, C)
    x = images.unfold(1, k, p).unfold(2, k, p)  # (B, gh, gw, C, K_row, K_col)
    x = x.permute(0, 1, 2, 4, 5, 3)  # (B, gh, gw, K_row, K_col, C)
    return x.reshape(b, x.shape[1] * x.shape[2], k * k * c)


class PatchEmbed(nn.Module):
    """Patches -> Linear(dim)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.patch_size, self.overlap = cfg.patch_size, cfg.patch_overlap
        self.proj = nn.Linear(cfg.patch_dim, cfg.dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(extract_patches(images, self.patch_size, self.overlap))


class ConvTokenizer(nn.Module):
    """CCT's tokenizer: per entry of conv_channels ``nn.Conv2d(3x3, padding 1, no bias)`` -> ReLU ->
    ``nn.MaxPool2d(3, 2, 1)``, on channels-first images; the last map's pixels (row-major) are the tokens,
    then ``nn.Linear(dim)`` when the last channel count is not dim. Layers ``conv0``, ``conv1``, ... and
    ``proj``, as in npvit."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        chans = (cfg.channels, *cfg.conv_channels)
        self.num_layers = len(cfg.conv_channels)
        for i in range(self.num_layers):
            self.add_module(f"conv{i}", nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.proj = nn.Linear(chans[-1], cfg.dim) if cfg.tokenizer_projects else None

    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2)  # (B, C, H, W)
        for i in range(self.num_layers):
            x = self.pool(F.relu(getattr(self, f"conv{i}")(x)))
        x = x.flatten(2).transpose(1, 2)  # (B, N, C): pixels row-major
        return x if self.proj is None else self.proj(x)


class Mlp(nn.Module):
    """For each size u in ``units``: Linear(u) -> GELU -> Dropout; then an optional Linear(out_dim).

    The Keras example applies GELU and dropout after the last hidden layer too; ``act_last=False`` leaves that
    GELU out (the paper's MLP, timm's). Layers are named ``fc0``, ``fc1``, ... and ``out``, as in npvit.
    """

    def __init__(
        self, in_dim: int, units: tuple[int, ...], rate: float, gelu: str, out_dim: int | None = None,
        act_last: bool = True,
    ) -> None:
        super().__init__()
        sizes = (in_dim, *units)
        self.num_layers, self.act_last = len(units), act_last
        for i in range(self.num_layers):
            self.add_module(f"fc{i}", nn.Linear(sizes[i], sizes[i + 1]))
        self.drop = nn.Dropout(rate)
        self.approximate = "none" if gelu == "erf" else "tanh"
        self.out = nn.Linear(sizes[-1], out_dim) if out_dim is not None else None

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
            if self.act_last or i < self.num_layers - 1:
                x = F.gelu(x, approximate=self.approximate)
            x = self.drop(x)
        return x if self.out is None else self.out(x)


def attention_core(
    q: Tensor, k: Tensor, v: Tensor, scale: float, dropout: float = 0.0, impl: str = "eager"
) -> Tensor:
    """softmax(scale * Q K^T) V with dropout ``dropout`` on the probabilities; q, k, v (B, H, N, d).

    "eager" is the reference: matmul, softmax, dropout, matmul. "sdpa" is ``F.scaled_dot_product_attention``
    with the same scale and dropout (fused kernels where torch has them). Pass ``dropout=0`` in eval mode.
    """
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale)
    attn = (q * scale) @ k.transpose(-2, -1)  # Keras scales the query before the product
    attn = attn.softmax(dim=-1)
    if dropout:
        attn = F.dropout(attn, dropout, training=True)
    return attn @ v


class Attention(nn.Module):
    """Keras MultiHeadAttention: the fused qkv kernel's columns are ordered (q|k|v, head, key_dim); the query
    is scaled by 1/sqrt(key_dim) before the product; dropout acts on the attention probabilities."""

    def __init__(self, dim: int, num_heads: int, key_dim: int, rate: float, impl: str = "eager") -> None:
        super().__init__()
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {impl!r}")
        self.num_heads, self.key_dim, self.impl = num_heads, key_dim, impl
        self.scale = 1.0 / math.sqrt(key_dim)
        self.qkv = nn.Linear(dim, 3 * num_heads * key_dim)
        self.attn_drop = nn.Dropout(rate)
        self.proj = nn.Linear(num_heads * key_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        h, d = self.num_heads, self.key_dim
        q, k, v = self.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d)
        rate = self.attn_drop.p if self.training else 0.0
        o = attention_core(q, k, v, self.scale, rate, self.impl)
        return self.proj(o.transpose(1, 2).reshape(b, n, h * d))  # heads concatenated (H, d)


class Block(nn.Module):
    """Pre-norm transformer layer: x + Attention(LayerNorm(x)), then x + Mlp(LayerNorm(x))."""

    def __init__(self, cfg: ViTConfig, attention: str = "eager") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.attn = Attention(cfg.dim, cfg.num_heads, cfg.key_dim, cfg.attention_dropout, attention)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.dim, cfg.mlp_units, cfg.dropout, cfg.gelu, act_last=cfg.arrangement != "timm")

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TorchViT(nn.Module):
    """The Keras-example ViT in PyTorch: patches, pre-norm blocks, final LayerNorm, pool, MLP head (and the
    timm arrangement, the final LayerNorm after the pooling with fc_norm, a class token with gap pooling).

    Args:
        config: the architecture (every field of ViTConfig is honoured, dropout rates included, except
            drop_path, which this peer does not implement: a config with drop_path > 0 is refused).
        dtype: ``torch.float32`` / ``torch.float64`` or "float32" / "float64".
        device: where the parameters live ("cpu", "cuda", ...).
        attention: "eager" (matmul + softmax + dropout + matmul) or "sdpa" (F.scaled_dot_product_attention).

    Parameters are left at torch's default initialisation; load npvit's with ``load_npvit_params`` or build
    with ``from_npvit``.
    """

    def __init__(
        self, config: ViTConfig, dtype: Any = torch.float32, device: Any = None, attention: str = "eager"
    ) -> None:
        super().__init__()
        if config.drop_path > 0:
            raise ValueError(f"TorchViT has no drop path (stochastic depth); got drop_path={config.drop_path}: "
                             "compare with drop_path=0")
        cfg = self.config = config
        if cfg.tokenizer == "conv":
            self.tokenizer = ConvTokenizer(cfg)
        else:
            self.patch_embed = PatchEmbed(cfg)
        if cfg.has_class_token:
            self.cls_token = nn.Parameter(torch.zeros(cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(cfg.num_tokens, cfg.dim))
        self.blocks = nn.ModuleList([Block(cfg, attention) for _ in range(cfg.depth)])
        if cfg.fc_norm:  # timm's name for the norm after the pooling
            self.fc_norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        else:
            self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        if cfg.pool == "seq":  # CCT's sequence pooling score (its bias, which cancels in the softmax, left out)
            self.attention_pool = nn.Linear(cfg.dim, 1, bias=False)
        self.head_drop = nn.Dropout(cfg.head_dropout)
        self.head = Mlp(cfg.pooled_dim, cfg.head_units, cfg.head_dropout, cfg.gelu, out_dim=cfg.num_classes)
        self.to(dtype=as_torch_dtype(dtype), device=device)

    @classmethod
    def from_npvit(
        cls, model: Any, dtype: Any = None, device: Any = None, attention: str = "eager"
    ) -> "TorchViT":
        """A TorchViT with ``model``'s config and a copy of its parameters (dtype defaults to the model's)."""
        ref = cls(model.config, dtype=dtype if dtype is not None else str(model.dtype), device=device,
                  attention=attention)
        ref.load_npvit_params(model.params)
        return ref

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, num_classes) for normalised images (B, image_size, image_size, channels)."""
        cfg = self.config
        x = self.tokenizer(images) if cfg.tokenizer == "conv" else self.patch_embed(images)
        if cfg.has_class_token:
            x = torch.cat([self.cls_token.expand(x.shape[0], 1, cfg.dim), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        if not cfg.fc_norm:
            x = self.norm(x)
        if cfg.pool == "flatten":
            pooled = x.reshape(x.shape[0], -1)  # row-major over (token, channel), as keras Flatten
        elif cfg.pool == "cls":
            pooled = x[:, 0]
        elif cfg.pool == "seq":  # softmax over the tokens of a learned score, then the weighted sum
            weights = F.softmax(self.attention_pool(x), dim=1)  # (B, T, 1)
            pooled = (weights.transpose(1, 2) @ x)[:, 0]
        else:
            pooled = x[:, 1 if cfg.has_class_token else 0:].mean(dim=1)  # the patch tokens
        if cfg.fc_norm:
            pooled = self.fc_norm(pooled)
        return self.head(self.head_drop(pooled))

    # ---- npvit names --------------------------------------------------------------------------------------
    def npvit_parameters(self) -> dict[str, nn.Parameter]:
        """npvit name -> the torch Parameter holding it (a Linear weight is npvit's ``.w`` transposed)."""
        return {npvit_name(name): p for name, p in self.named_parameters()}

    def load_npvit_params(self, params: Mapping[str, Any]) -> None:
        """Copy npvit parameters (NumPy or CuPy arrays, npvit names and layouts) into this model."""
        mine = self.npvit_parameters()
        if set(mine) != set(params):
            missing, extra = sorted(set(mine) - set(params)), sorted(set(params) - set(mine))
            raise ValueError(
                f"parameter names differ from the npvit model's: missing {missing}, unexpected {extra}"
            )
        with torch.no_grad():
            for name, p in mine.items():
                value = torch.from_numpy(np.ascontiguousarray(to_numpy(params[name])))
                if is_conv_kernel(name):
                    value = value.permute(3, 2, 0, 1)  # (k, k, Ci, Co) -> (Co, Ci, k, k)
                elif is_dense_kernel(name):
                    value = value.T
                if tuple(value.shape) != tuple(p.shape):
                    raise ValueError(f"{name}: shape {tuple(value.shape)} does not fit {tuple(p.shape)}")
                p.copy_(value)

    def npvit_state(self, grads: bool = False) -> dict[str, np.ndarray | None]:
        """npvit name -> host copy of each parameter (or, with ``grads=True``, of its ``.grad``; None where
        torch has none), in npvit's layout."""
        out: dict[str, np.ndarray | None] = {}
        for name, p in self.npvit_parameters().items():
            t = p.grad if grads else p
            if t is None:
                out[name] = None
                continue
            t = t.detach()
            if is_conv_kernel(name):
                t = t.permute(2, 3, 1, 0)  # (Co, Ci, k, k) -> (k, k, Ci, Co)
            elif is_dense_kernel(name):
                t = t.T
            out[name] = t.cpu().numpy().copy()
        return out


# ---- helpers -----------------------------------------------------------------------------------------------
def as_torch_dtype(dtype: Any) -> torch.dtype:
    """torch.float32 / torch.float64 from a torch dtype, a NumPy dtype or its name."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(np.dtype(dtype))
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return getattr(torch, name)


_SUFFIXES = {"weight": ("w", "gamma"), "bias": ("b", "beta")}


def npvit_name(torch_name: str) -> str:
    """npvit's name of a TorchViT parameter: Linear weight/bias -> w/b, LayerNorm weight/bias -> gamma/beta."""
    prefix, _, last = torch_name.rpartition(".")
    if last not in _SUFFIXES:
        return torch_name  # pos_embed, cls_token
    is_norm = prefix in ("norm", "fc_norm") or prefix.endswith((".norm1", ".norm2"))
    return f"{prefix}.{_SUFFIXES[last][1 if is_norm else 0]}"


def is_conv_kernel(npvit_param: str) -> bool:
    """True for the conv tokenizer's kernels, (k, k, Ci, Co) in npvit and (Co, Ci, k, k) in torch."""
    return npvit_param.startswith("tokenizer.conv")


def is_dense_kernel(npvit_param: str) -> bool:
    """True for npvit's dense kernels (``*.w``, stored (in, out)), which torch stores transposed."""
    return npvit_param.endswith(".w") and not is_conv_kernel(npvit_param)
