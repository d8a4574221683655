"""Resampling a learned position embedding to another grid, as timm does (``resample_abs_pos_embed``).

The patch positions' embeddings form a (g, g, D) image; it is resized to (g', g', D) one axis at a time, each
output position a weighted sum of input positions (the class token's position, in front, is kept as it is).
The weights are those of torch's ``F.interpolate`` (align_corners=False), which timm calls:

    bicubic, antialias=True (timm's default, for .safetensors files):  scale s = g / g', support 2 max(s, 1);
        output i is centred at c = s (i + 1/2); inputs j in [trunc(c - support + 1/2), trunc(c + support + 1/2))
        clipped to [0, g), weight k((j - c + 1/2) / max(s, 1)), normalised to sum 1, with Keys' cubic kernel
        k(x) = ((a + 2)|x| - (a + 3)) x^2 + 1 for |x| < 1,  a (|x|^3 - 5|x|^2 + 8|x| - 4) for 1 <= |x| < 2,
        a = -1/2 (Pillow's)
    bilinear, antialias=False (timm's _load_weights, for Google .npz files): source x = s (i + 1/2) - 1/2,
        clamped at 0; inputs floor(x) and floor(x) + 1 (the last input repeated at the edge), weights
        1 - frac(x) and frac(x)

timm interpolates in float32; this module works in float64 and casts back to the input's dtype.
"""

from __future__ import annotations

import math

import numpy as np

INTERPOLATIONS = ("bicubic", "bilinear")


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def antialiased_bicubic_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of torch's bicubic interpolation with antialias=True."""
    scale = size_in / size_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    weights = np.zeros((size_out, size_in))
    for i in range(size_out):
        centre = scale * (i + 0.5)
        first = max(int(centre - support + 0.5), 0)  # int() truncates toward zero, as torch's cast
        last = min(int(centre + support + 0.5), size_in)
        j = np.arange(first, last)
        w = _cubic((j - centre + 0.5) / stretch)
        weights[i, first:last] = w / w.sum()
    return weights


def bilinear_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of torch's bilinear interpolation without antialiasing."""
    scale = size_in / size_out
    weights = np.zeros((size_out, size_in))
    for i in range(size_out):
        x = max(scale * (i + 0.5) - 0.5, 0.0)
        left = int(math.floor(x))
        right = left + 1 if left < size_in - 1 else left
        frac = x - left
        weights[i, left] += 1.0 - frac
        weights[i, right] += frac
    return weights


def resample_pos_embed(pos_embed: np.ndarray, new_grid: int, num_prefix_tokens: int = 1,
                       interpolation: str = "bicubic") -> np.ndarray:
    """``pos_embed`` (T, D), T = prefix + g * g, resampled to (prefix + new_grid^2, D): the first
    ``num_prefix_tokens`` rows (the class token's) kept, the grid's resized. ``interpolation``: "bicubic"
    (antialiased, timm's default) or "bilinear" (timm's for Google .npz files)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    pos_embed = np.asarray(pos_embed)
    prefix, grid = pos_embed[:num_prefix_tokens], pos_embed[num_prefix_tokens:]
    old = math.isqrt(len(grid))
    if old * old != len(grid):
        raise ValueError(f"{len(grid)} patch positions are not a square grid")
    if old == new_grid:
        return pos_embed.copy()
    make = antialiased_bicubic_weights if interpolation == "bicubic" else bilinear_weights
    w = make(old, new_grid)  # (g', g), the same along rows and columns
    image = grid.reshape(old, old, -1).astype(np.float64)  # (g, g, D)
    resized = np.einsum("ir,rcd,jc->ijd", w, image, w)  # (g', g', D)
    out = np.concatenate([prefix.astype(np.float64), resized.reshape(new_grid * new_grid, -1)])
    return out.astype(pos_embed.dtype)
