"""Cutting images into square patches (ViT's "image as 16x16 words"), side by side or overlapping.

    forward:   images (B, H, W, C) -> patches (B, N, K*K*C),  N = (H // P) * (W // P),  K = P + 2 O
               patch n = (row r, column c) of the grid in row-major order (n = r * (W // P) + c), each
               flattened in (row, column, channel) order.
               O = 0 (the paper): patch (r, c) is pixels [r P, r P + P) x [c P, c P + P), the layout of
               tf.image.extract_patches and keras.ops.image.extract_patches with size = stride = P and VALID
               padding; pixels past the last whole patch (when P does not divide H or W) are dropped.
               O > 0: patch (r, c) is pixels [r P - O, r P + P + O) x [c P - O, c P + P + O) of the image
               padded with O zeros on every side, so each patch overlaps its neighbours by 2 O pixels; the
               grid, the token count and everything after the projection are unchanged. Patches then
               projected linearly are a convolution with kernel K, stride P and padding O: the overlapping
               ("convolutional") patch embedding of CvT and PVT v2, which gives every token the pixels around
               its cell.
    backward:  the inverse re-indexing; a pixel in several patches gets the sum of their gradients, a pixel in
               none (dropped, O = 0) gets zero.

Patch extraction is a pure re-indexing, so its backward scatters each patch value's gradient back to the
pixel it was copied from.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module

Array = Any
PatchesCache = tuple[tuple[int, ...], int, int]  # (the input shape (B, H, W, C), patch_size, overlap)


def patches_forward(images: Array, patch_size: int, overlap: int = 0) -> tuple[Array, PatchesCache]:
    """Cut ``images`` (B, H, W, C) into (B, N, K*K*C) patches, K = patch_size + 2 overlap. Returns
    (patches, cache)."""
    b, h, w, c = images.shape
    p = patch_size
    gh, gw = h // p, w // p
    if overlap:
        return _overlapping_forward(images, p, overlap), (images.shape, p, overlap)
    x = images[:, : gh * p, : gw * p, :].reshape(b, gh, p, gw, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, gh, gw, p, p, C): grid position first, then pixel in the patch
    return x.reshape(b, gh * gw, p * p * c), (images.shape, p, overlap)


def patches_backward(dpatches: Array, cache: PatchesCache) -> Array:
    """Gradient of patches_forward: scatter patch gradients back to pixel positions. The patch size and
    overlap are the cache's, the forward pass's."""
    shape, p, overlap = cache
    b, h, w, c = shape
    gh, gw = h // p, w // p
    if overlap:
        return _overlapping_backward(dpatches, shape, p, overlap)
    d = dpatches.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * p, gw * p, c)
    if (gh * p, gw * p) == (h, w):
        return d
    xp = get_array_module(dpatches)
    dimages = xp.zeros((b, h, w, c), dtype=dpatches.dtype)
    dimages[:, : gh * p, : gw * p, :] = d
    return dimages


# Overlapping patches, one pixel offset (i, j) of the K x K window at a time: offset (i, j) of every patch is
# the strided slice padded[:, i::P, j::P] of the padded image, (B, gh, gw, C). K^2 slices of a whole batch each:
# the Python loop is over the window, never over images.
def _overlapping_forward(images: Array, p: int, o: int) -> Array:
    xp = get_array_module(images)
    b, h, w, c = images.shape
    gh, gw, k = h // p, w // p, p + 2 * o
    padded = xp.zeros((b, h + 2 * o, w + 2 * o, c), dtype=images.dtype)  # (B, H + 2O, W + 2O, C)
    padded[:, o:o + h, o:o + w] = images
    out = xp.empty((b, gh, gw, k, k, c), dtype=images.dtype)  # (B, gh, gw, K, K, C)
    for i in range(k):
        for j in range(k):
            out[:, :, :, i, j] = padded[:, i:i + gh * p:p, j:j + gw * p:p]  # (B, gh, gw, C)
    return out.reshape(b, gh * gw, k * k * c)


def _overlapping_backward(dpatches: Array, shape: tuple[int, ...], p: int, o: int) -> Array:
    xp = get_array_module(dpatches)
    b, h, w, c = shape
    gh, gw, k = h // p, w // p, p + 2 * o
    d = dpatches.reshape(b, gh, gw, k, k, c)
    dpadded = xp.zeros((b, h + 2 * o, w + 2 * o, c), dtype=dpatches.dtype)
    for i in range(k):
        for j in range(k):
            dpadded[:, i:i + gh * p:p, j:j + gw * p:p] += d[:, :, :, i, j]  # a pixel may be in several patches
    return dpadded[:, o:o + h, o:o + w]  # the padding's gradient is dropped
