"""Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers"), in plain NumPy.

One block's attention says how much each token reads from each token of the block's input. Following the
information through the whole network means composing the blocks, treating heads and the residual
connection as the paper does:

    A_l  = fuse_heads(attention of block l)            (T, T): the mean over heads by default
    Â_l  = normalise_rows(A_l + I)                      the residual connection (mean fusion: each token
                                                        keeps half of itself)
    R    = Â_L Â_(L-1) ... Â_1                          (T, T), rows sum to 1

Row i of R spreads the last block's output token i over the input tokens (patch embeddings plus position
embeddings, and the class token when there is one). Which row to show is the model's business, see
:func:`query_weights`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

HEAD_FUSIONS = ("mean", "max", "min")


def attention_rollout(maps: Sequence[np.ndarray], head_fusion: str = "mean", residual: bool = True) -> np.ndarray:
    """Rollout of per-block attention ``maps`` (first block first): (B, T, T), or (T, T) for unbatched maps.

    Args:
        maps: one array per block, (B, heads, T, T) as ``ViT.attention_maps`` holds them (host arrays), or
            (heads, T, T) for a single image. Rows are attention distributions (query -> keys).
        head_fusion: how heads become one map: "mean" (the paper), or "max" / "min" (popular variants).
        residual: add the identity for the residual connection and renormalise rows (the paper); False
            multiplies the raw fused maps ("raw attention" composition).
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if len(maps) == 0:
        raise ValueError("attention_rollout needs the attention maps of at least one block")
    arrays = [np.asarray(m, dtype=np.float64) for m in maps]
    shape = arrays[0].shape
    if len(shape) not in (3, 4) or shape[-1] != shape[-2]:
        raise ValueError(f"attention maps must be (B, heads, T, T) or (heads, T, T), got shape {shape}")
    if any(a.shape != shape for a in arrays):
        raise ValueError(f"attention maps differ in shape: {sorted({a.shape for a in arrays})}")
    tokens = shape[-1]
    eye = np.eye(tokens)
    rollout = None
    for a in arrays:
        fused = getattr(a, head_fusion)(axis=-3)  # (..., T, T)
        if residual:
            fused = fused + eye
            fused = fused / fused.sum(axis=-1, keepdims=True)
        rollout = fused if rollout is None else fused @ rollout
    return rollout


def query_weights(rollout: np.ndarray, query: int | None, cls_token: bool) -> np.ndarray:
    """The weights over the image patches that one output token (or all of them) draws on, summing to 1.

    ``rollout`` is (T, T) for one image. ``query`` is a token index (the class token is 0 when there is
    one); None means the token the classifier reads: the class token for ``cls_token`` models, otherwise
    the mean over every query token, because flatten and gap pooling read all tokens alike (flatten
    concatenates them, gap averages them), so no single token stands for the image. The class token's own
    column is dropped and the patch weights renormalised. Returns (N,), in the patches' row-major order.
    """
    rollout = np.asarray(rollout, dtype=np.float64)
    if rollout.ndim != 2 or rollout.shape[0] != rollout.shape[1]:
        raise ValueError(f"rollout must be one image's (T, T) array, got shape {rollout.shape}")
    if query is None:
        row = rollout[0] if cls_token else rollout.mean(axis=0)
    else:
        if not 0 <= query < rollout.shape[0]:
            raise ValueError(f"query token {query} is outside 0..{rollout.shape[0] - 1}")
        row = rollout[query]
    patches = row[1:] if cls_token else row
    total = patches.sum()
    return patches / total if total > 0 else patches
