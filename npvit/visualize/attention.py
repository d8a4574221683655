"""Attention maps from the engine's own forward pass: every block and head for one query, and the rollout.

``ViT.forward(images, keep_attention=True)`` records each block's attention probabilities, (B, heads, T, T)
with rows as queries. Here one image goes through the model on its own backend and the maps come to the
host (``npvit.backend.to_numpy``).

Queries: a patch (row, col) of the grid, counted from 0 at the top left, or the class token ("cls") when
the model has one. Defaults: the class token for pool="cls" models; otherwise the centre patch for the
per-head figure and, for the rollout, the mean over every query token (flatten and gap pooling read all
tokens alike, so that mean is what the classifier draws on; see ``rollout.query_weights``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_numpy
from ..config import ViTConfig
from .inputs import InputError, LoadedModel, probabilities
from .plotting import mark_patch, new_figure, overlay, show_image
from .rollout import attention_rollout, query_weights

Query = tuple[int, int] | str | None  # (row, col), "cls", "mean" or None (the default)


def forward_with_attention(loaded: LoadedModel, image: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """One uint8 image (native size) through the model: per-block maps (heads, T, T) on the host, and the
    class probabilities (K,)."""
    model = loaded.model
    logits = model.forward(loaded.model_input(np.asarray(image)[None]), keep_attention=True)
    maps = [to_numpy(m)[0].astype(np.float64) for m in model.attention_maps]
    return maps, probabilities(logits)[0]


def parse_query(text: str) -> Query:
    """'3,4' -> (3, 4); 'cls' and 'mean' pass through (ValueError otherwise)."""
    text = text.strip().lower()
    if text in ("cls", "mean"):
        return text
    try:
        row, col = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected a patch as row,col (e.g. 3,4), 'cls' or 'mean', got {text!r}") from None
    return row, col


def query_token(config: ViTConfig, query: Query, rollout: bool = False) -> int | None:
    """The token index a query names (None: the mean over all queries); InputError if it does not exist."""
    cls = config.has_class_token
    g = config.grid_size
    if query is None:
        if cls:
            return 0
        return None if rollout else (g // 2) * g + g // 2
    if query == "cls":
        if not cls:
            raise InputError("this model has no class token; give a patch as row,col")
        return 0
    if query == "mean":
        if not rollout:
            raise InputError("'mean' is a rollout query; the attention figure needs one patch (row,col) or 'cls'")
        return None
    row, col = query
    if not (0 <= row < g and 0 <= col < g):
        raise InputError(f"query patch {row},{col} is outside the {g}x{g} grid (rows and columns 0..{g - 1})")
    return row * g + col + (1 if cls else 0)


def describe_query(config: ViTConfig, token: int | None) -> tuple[str, tuple[int, int] | None]:
    """('query: patch 3,4' or the like, the patch's (row, col) or None)."""
    if token is None:
        return "query: mean over all tokens", None
    if config.has_class_token:
        if token == 0:
            return "query: class token", None
        token -= 1
    row, col = divmod(token, config.grid_size)
    return f"query: patch {row},{col}", (row, col)


def patch_map(weights: np.ndarray, config: ViTConfig) -> np.ndarray:
    """Weights over the keys (T,) -> the patch part on the grid (g, g) (the class token's key dropped)."""
    patches = weights[1:] if config.has_class_token else weights
    return patches.reshape(config.grid_size, config.grid_size)


def attention_figure(image: np.ndarray, maps: list[np.ndarray], config: ViTConfig, token: int,
                     title: str = "") -> Any:
    """Rows: blocks; columns: heads. Each panel: where query ``token`` looks, over the image (S, S, 3)."""
    depth, heads = len(maps), maps[0].shape[0]
    panel = 1.3
    width, height = max(panel * heads + 0.5, 5.0), panel * depth + 0.9  # wide enough for the title
    fig = new_figure(width, height)
    axes = np.asarray(fig.subplots(depth, heads, squeeze=False))
    fig.subplots_adjust(left=0.5 / width, right=0.99, bottom=0.01, top=1 - 0.8 / height, wspace=0.05,
                        hspace=0.08)
    label, where = describe_query(config, token)
    for layer, block_maps in enumerate(maps):
        for head in range(heads):
            ax = axes[layer, head]
            overlay(ax, image, patch_map(block_maps[head, token], config),
                    f"head {head + 1}" if layer == 0 else None)
            if where is not None:
                mark_patch(ax, *where, token_cell(config))
        axes[layer, 0].set_ylabel(f"block {layer + 1}", fontsize=8)
    fig.suptitle(f"{title}\nattention per block and head, {label}" if title else
                 f"attention per block and head, {label}", fontsize=9)
    return fig


def rollout_figure(image: np.ndarray, maps: list[np.ndarray], config: ViTConfig, token: int | None,
                   head_fusion: str = "mean", title: str = "") -> Any:
    """The image, the rollout weights on the patch grid, and the two overlaid."""
    rollout = attention_rollout(maps, head_fusion=head_fusion)
    weights = query_weights(rollout, token, cls_token=config.has_class_token)
    heat = weights.reshape(config.grid_size, config.grid_size)
    label, where = describe_query(config, token)
    fig = new_figure(9.0, 3.6)
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.04, top=0.78, wspace=0.12)
    show_image(axes[0], image, "input")
    im = axes[1].imshow(heat, cmap="inferno", interpolation="nearest")
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    axes[1].set_title(f"rollout weights ({config.grid_size}x{config.grid_size} patches)", fontsize=8)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
    overlay(axes[2], image, heat, "overlay (smallest to largest weight)", from_zero=False)
    if where is not None:
        for ax in (axes[0], axes[2]):
            mark_patch(ax, *where, token_cell(config))
    head = "mean of heads" if head_fusion == "mean" else f"{head_fusion} over heads"
    text = f"attention rollout over {len(maps)} blocks ({head}, residual added), {label}"
    fig.suptitle(f"{title}\n{text}" if title else text, fontsize=9)
    return fig


def token_cell(config: Any) -> int:
    """The side in pixels of the image cell a token stands for: the patch, or for the conv tokenizer the image
    side over the token grid's (each max-pool halves it, rounding up)."""
    return config.patch_size if config.tokenizer == "patch" else -(-config.image_size // config.grid_size)
