"""The input of every timed step: random normalised images and labels for a config (NumPy only, no torch)."""

from __future__ import annotations

import numpy as np

import npvit


def make_batch(cfg: npvit.ViTConfig, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalised random images (B, S, S, C) float32 and integer labels, on the host."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, cfg.image_size, cfg.image_size, cfg.channels), dtype=np.float32)
    return images, rng.integers(0, cfg.num_classes, batch)
