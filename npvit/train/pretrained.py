"""Starting a run from pretrained weights (``--init-from FILE --arch ARCH``): the file's model, fine-tuned.

The file decides the architecture's details (class token, norm placement, depth: ``npvit.load_timm``); the
run decides the head (the dataset's classes: a new head when they differ), the image size (the position
embedding resampled to it) and the regularisation (dropout and drop path rates). Images are normalised with
the arch's pretrained mean and std, as timm feeds the model, instead of the dataset's statistics.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..checkpoint import CheckpointError
from ..config import ViTConfig
from ..interop import InteropError, Preprocess, load_timm
from ..model import ViT


def pretrained_model(settings: dict[str, Any], cfg: ViTConfig) -> ViT:
    """The model of ``settings["init_from"]`` with the run's classes, image size and dropout rates of ``cfg``."""
    try:
        model = load_timm(settings["init_from"], settings["arch"], global_pool=settings["global_pool"],
                          num_classes=cfg.num_classes, image_size=cfg.image_size, dtype=settings["dtype"],
                          seed=settings["seed"])
    except InteropError as exc:
        raise CheckpointError(f"--init-from: {exc}") from None
    rates = {f: getattr(cfg, f) for f in ("dropout", "attention_dropout", "head_dropout", "drop_path")}
    if all(getattr(model.config, f) == v for f, v in rates.items()):
        return model
    tuned = ViT(dataclasses.replace(model.config, **rates), dtype=settings["dtype"], seed=settings["seed"])
    tuned.load_params(model.params)
    return tuned


def arch_normalization(arch: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) of uint8 pixels that normalise as timm does for ``arch``: (x / 255 - m) / s is
    (x - 255 m) / (255 s)."""
    pre = Preprocess.for_arch(arch)
    return 255.0 * np.asarray(pre.mean), (255.0 * np.asarray(pre.std)) ** 2
