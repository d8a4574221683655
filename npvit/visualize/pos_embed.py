"""Position-embedding similarity (figure 7, centre, of the ViT paper).

For each patch, the cosine similarity of its learned position embedding with every other patch's, drawn on
the patch grid: a grid of small grid-shaped heat maps, the tile at (row, col) showing how similar patch
(row, col)'s embedding is to each position. A model that has learned the image's 2-D layout shows a bright
spot at the tile's own position fading with distance, often with stripes along its row and column. The
class token's embedding, when there is one, is left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import ViTConfig
from .plotting import mosaic, new_figure


def position_similarity(pos_embed: np.ndarray, config: ViTConfig) -> np.ndarray:
    """(N, N) cosine similarities between the patches' position embeddings (rows and columns row-major)."""
    e = np.asarray(pos_embed, dtype=np.float64)
    if config.has_class_token:
        e = e[1:]
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    e = e / np.where(norms > 0, norms, 1.0)
    return np.clip(e @ e.T, -1.0, 1.0)


def pos_embed_figure(similarity: np.ndarray, config: ViTConfig, title: str = "") -> Any:
    """Tile (r, c) = similarity of patch (r, c) with every patch, on the grid; one shared colour scale [-1, 1]."""
    from matplotlib import colormaps

    g = config.grid_size
    scale = max(1, 48 // g)  # tiles enlarged, so that the gaps between them keep an even width
    gap = max(1, g * scale // 8)
    tiles = mosaic(similarity.reshape(g * g, g, g), columns=g, gap=gap, scale=scale)
    fig = new_figure(6.0, 5.2)
    ax = fig.add_axes((0.1, 0.1, 0.72, 0.78))
    cmap = colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(tiles), cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="antialiased")
    pitch = g * scale + gap
    centres = np.arange(g) * pitch + (g * scale - 1) / 2
    step = max(1, g // 8)
    ax.set_xticks(centres[::step], [str(i) for i in range(0, g, step)], fontsize=7)
    ax.set_yticks(centres[::step], [str(i) for i in range(0, g, step)], fontsize=7)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    cax = fig.add_axes((0.85, 0.1, 0.03, 0.78))
    fig.colorbar(im, cax=cax).set_label("cosine similarity")
    fig.suptitle(title or "position embedding similarity", fontsize=10)
    return fig
