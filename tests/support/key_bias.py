"""The key bias of attention, whose gradient is 0 in exact arithmetic: the softmax over the keys does not
change when every score of a row moves by the same q . b_k. Both implementations compared in a parity test
hold rounding noise (~1e-17) there, and Adam's m / (sqrt(v) + eps) turns different noise into updates of about
lr * 1e-17 / eps ~ 1e-11 that differ in sign and size, a difference that says nothing about either model;
zeroing both sides keeps an optimizer comparison exact."""

from __future__ import annotations


def key_bias(cfg) -> slice:
    """The key part of the fused qkv bias of every block: columns [heads * key_dim, 2 * heads * key_dim)."""
    hd = cfg.num_heads * cfg.key_dim
    return slice(hd, 2 * hd)


def zero_key_bias_grads(cfg, grads: dict) -> None:
    """Set the key-bias gradients of every block, zero but for rounding noise, to exactly 0 (in place)."""
    for i in range(cfg.depth):
        grads[f"blocks.{i}.attn.qkv.b"][key_bias(cfg)] = 0.0
