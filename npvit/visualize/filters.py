"""The learned patch-projection filters (figure 7, left, of the ViT paper).

``patch_embed.proj.w`` is (P*P*C, dim): column d is the filter whose dot product with a flattened patch
gives token channel d, so reshaped to (P, P, C) it is an RGB picture of what that channel responds to.
Each filter is stretched to [0, 1] on its own (min to max), since only its pattern matters, not its scale.

The paper shows the first 28 principal components of the filters rather than the raw filters (``pca=True``):
the filters are the samples (dim of them, each a P*P*C vector), centred on their mean, and the components are
the directions in patch space that explain most of their variance, most first.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..config import ViTConfig
from .plotting import blank_nan, mosaic, new_figure

PAPER_COMPONENTS = 28


def filter_tiles(weights: np.ndarray, config: ViTConfig, pca: bool = False,
                 components: int = PAPER_COMPONENTS) -> tuple[np.ndarray, np.ndarray | None]:
    """(tiles (n, P, P, 3) in [0, 1], explained-variance fractions (n,) or None for raw filters)."""
    w = np.asarray(weights, dtype=np.float64)
    p, c = config.patch_window, config.channels
    if w.shape[0] != p * p * c:
        raise ValueError(f"patch_embed.proj.w has {w.shape[0]} rows; the config implies {p}x{p}x{c}")
    filters, explained = w.T, None  # (dim, P*P*C)
    if pca:
        centred = filters - filters.mean(axis=0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        n = min(components, int((s > 1e-9 * s[0]).sum()))  # centring leaves at most dim - 1 components
        filters, explained = vt[:n], (s**2 / max(float((s**2).sum()), 1e-300))[:n]
    tiles = filters.reshape(-1, p, p, c)
    lo = tiles.min(axis=(1, 2, 3), keepdims=True)
    span = tiles.max(axis=(1, 2, 3), keepdims=True) - lo
    tiles = np.where(span > 0, (tiles - lo) / np.where(span > 0, span, 1.0), 0.5)
    if c == 1:
        tiles = np.repeat(tiles, 3, axis=-1)
    elif c != 3:
        tiles = tiles[..., :3] if c > 3 else np.concatenate([tiles, tiles[..., :1]], axis=-1)
    return tiles, explained


def filters_figure(tiles: np.ndarray, explained: np.ndarray | None, config: ViTConfig, title: str = "") -> Any:
    """The tiles in a near-square grid, each enlarged with nearest-neighbour pixels."""
    n, p = len(tiles), config.patch_window
    columns = math.ceil(math.sqrt(n))
    rows = -(-n // columns)
    scale = max(1, math.ceil(16 / p))
    image = blank_nan(mosaic(tiles, columns, gap=max(1, scale * p // 6), scale=scale))
    width = 6.0
    height = width * rows / columns + 0.7
    fig = new_figure(width, height)
    ax = fig.add_axes((0.03, 0.02, 0.94, 1 - 0.7 / height))
    ax.imshow(image, interpolation="antialiased")
    ax.set_axis_off()
    if explained is None:
        text = f"patch-projection filters: all {n} of {p}x{p}x{config.channels}, each scaled to its own range"
    else:
        text = (f"first {n} principal components of the {config.dim} patch-projection filters "
                f"({100 * explained.sum():.0f}% of their variance)")
    fig.suptitle(f"{title}\n{text}" if title else text, fontsize=9)
    return fig
