"""The image cut into its patches, before and after a training-time augmentation (the Keras example's figure).

Top row: the image at the model's input size (the pixels it sees, before normalisation) and its patches
as small tiles with gaps, in the row-major order the patch embedding reads them. Bottom row: the same after
one draw of the run's random flip, rotation and zoom (its own settings, a seeded generator), as a training
step would see it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..data.augment import Augmenter
from ..config import ViTConfig
from ..kernels import patches_forward
from .plotting import blank_nan, mosaic, new_figure, show_image


def patch_tiles(image: np.ndarray, patch_size: int) -> np.ndarray:
    """(S, S, C) -> (N, P, P, C): the patches in the order the model's patch embedding takes them."""
    flat, _ = patches_forward(np.asarray(image)[None], patch_size)
    return flat[0].reshape(-1, patch_size, patch_size, image.shape[-1])


def augment_for_display(image: np.ndarray, image_size: int, run: dict[str, Any], seed: int) -> np.ndarray:
    """uint8 (h, w, 3) -> float (S, S, 3) in [0, 1] after the Augmenter's training steps with the run's flip,
    rotation and zoom settings, drawn from ``np.random.default_rng(seed)``.

    Mean 0 and variance 1 make the normalisation the identity, so this is the augmented image in pixel
    units; every step is linear in the pixels, so it equals the training input with normalisation undone.
    """
    channels = image.shape[-1]
    aug = Augmenter(np.zeros(channels), np.ones(channels), image_size=image_size, flip=run.get("flip", True),
                    rotation=run.get("rotation", 0.02), zoom=run.get("zoom", 0.2), dtype="float64")
    x = aug(np.asarray(image, dtype=np.float64)[None], training=True, rng=np.random.default_rng(seed))
    return np.clip(x[0] / 255.0, 0.0, 1.0)


def patches_figure(before: np.ndarray, after: np.ndarray, config: ViTConfig, title: str = "",
                   augmentation: str = "") -> Any:
    """2x2 figure: each image (float (S, S, 3) in [0, 1]) beside its patch grid."""
    p, g = config.patch_size, config.grid_size
    scale = max(1, math.ceil(24 / p))
    gap = max(1, scale * p // 8)
    fig = new_figure(7.0, 7.4)
    axes = fig.subplots(2, 2)
    fig.subplots_adjust(left=0.03, right=0.97, bottom=0.03, top=0.88, wspace=0.08, hspace=0.22)
    size = config.image_size
    rows = ((before, f"input, {size}x{size} (what the model sees)"),
            (after, f"after training augmentation{augmentation}"))
    for (image, label), (ax_image, ax_tiles) in zip(rows, axes):
        show_image(ax_image, image, label)
        tiles = mosaic(patch_tiles(image, p), columns=g, gap=gap, scale=scale)
        show_image(ax_tiles, blank_nan(tiles), f"{g}x{g} = {g * g} patches of {p}x{p} pixels", "antialiased")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
