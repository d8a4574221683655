"""FLOP counts of the Vision Transformer, shared by the benchmark scripts.

A multiply-add counts as 2 FLOPs. Only matrix products are counted (everything else -- layer norm, softmax,
GELU, dropout, the optimizer -- is a few percent of the arithmetic, though not of the time). A training step
is counted as 3x the forward: each product's backward is two products of the same size (dx and dW).
"""

from __future__ import annotations

from npvit import ViTConfig

TRAIN_FACTOR = 3  # forward + backward (dx and dW) of every matrix product


def dense_flops(rows: int, n_in: int, n_out: int) -> int:
    """Forward FLOPs of ``(rows, n_in) @ (n_in, n_out)``."""
    return 2 * rows * n_in * n_out


def attention_flops_per_image(cfg: ViTConfig) -> int:
    """Forward FLOPs of the attention core of all blocks: Q K^T and the attention-weighted sum A V.

    This is the term quadratic in the number of tokens T: 2 products of T x T x (heads * key_dim) per block.
    """
    t, hd = cfg.num_tokens, cfg.num_heads * cfg.key_dim
    return cfg.depth * 2 * 2 * t * t * hd


def tokenizer_flops_per_image(cfg: ViTConfig) -> int:
    """Forward FLOPs of the patch projection, or of the conv tokenizer's 3x3 convolutions (each one product of
    S^2 rows by 9 Ci by Co, as its im2col) and its projection when it has one."""
    if cfg.tokenizer == "patch":
        return dense_flops(cfg.num_patches, cfg.patch_dim, cfg.dim)
    flops, side, cin = 0, cfg.image_size, cfg.channels
    for cout in cfg.conv_channels:
        flops += dense_flops(side * side, 9 * cin, cout)
        side, cin = (side - 1) // 2 + 1, cout  # max-pool 3/2/1
    return flops + (dense_flops(cfg.num_patches, cin, cfg.dim) if cfg.tokenizer_projects else 0)


def matmul_flops_per_image(cfg: ViTConfig) -> int:
    """Forward matrix-multiply FLOPs for one image."""
    t, d, hd = cfg.num_tokens, cfg.dim, cfg.num_heads * cfg.key_dim
    flops = tokenizer_flops_per_image(cfg)
    per_block = dense_flops(t, d, 3 * hd) + dense_flops(t, hd, d)  # qkv, output projection
    sizes = (d, *cfg.mlp_units)
    per_block += sum(dense_flops(t, a, b) for a, b in zip(sizes, sizes[1:]))
    flops += cfg.depth * per_block + attention_flops_per_image(cfg)
    sizes = (cfg.pooled_dim, *cfg.head_units, cfg.num_classes)
    flops += sum(dense_flops(1, a, b) for a, b in zip(sizes, sizes[1:]))
    return flops


def train_flops_per_image(cfg: ViTConfig) -> int:
    """Matrix-multiply FLOPs of one training step (forward and backward) per image."""
    return TRAIN_FACTOR * matmul_flops_per_image(cfg)
