"""Cutting images into non-overlapping square patches (ViT's "image as 16x16 words").

    forward:   images (B, H, W, C) -> patches (B, N, P*P*C),  N = (H // P) * (W // P)
               patch n = (row r, column c) of the grid in row-major order (n = r * (W // P) + c), each
               flattened in (row, column, channel) order: the layout of tf.image.extract_patches and
               keras.ops.image.extract_patches with size = stride = P and VALID padding. Pixels past the last
               whole patch (when P does not divide H or W) are dropped.
    backward:  the same reshapes in reverse; dropped pixels get zero gradient.

Patch extraction is a pure re-indexing, so its backward is the inverse permutation.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module

Array = Any
PatchesCache = tuple[int, ...]  # the input shape (B, H, W, C)


def patches_forward(images: Array, patch_size: int) -> tuple[Array, PatchesCache]:
    """Cut ``images`` (B, H, W, C) into (B, N, P*P*C) patches. Returns (patches, cache)."""
    b, h, w, c = images.shape
    p = patch_size
    gh, gw = h // p, w // p
    x = images[:, : gh * p, : gw * p, :].reshape(b, gh, p, gw, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, gh, gw, p, p, C): grid position first, then pixel in the patch
    return x.reshape(b, gh * gw, p * p * c), images.shape


def patches_backward(dpatches: Array, cache: PatchesCache, patch_size: int) -> Array:
    """Gradient of patches_forward: scatter patch gradients back to pixel positions."""
    b, h, w, c = cache
    p = patch_size
    gh, gw = h // p, w // p
    d = dpatches.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * p, gw * p, c)
    if (gh * p, gw * p) == (h, w):
        return d
    xp = get_array_module(dpatches)
    dimages = xp.zeros((b, h, w, c), dtype=dpatches.dtype)
    dimages[:, : gh * p, : gw * p, :] = d
    return dimages
