"""Starting a run from trained weights (``--init-from SOURCE``): the source's model, fine-tuned.

With ``--arch ARCH``, SOURCE is a timm or Google file. The file decides the architecture's details (class
token, norm placement, depth: ``npvit.load_timm``); the run decides the head (the dataset's classes: a new head
when they differ), the image size (the position embedding resampled to it) and the regularisation (dropout and
drop path rates). Images are normalised with the arch's pretrained mean and std, as timm feeds the model,
instead of the dataset's statistics.

Without ``--arch``, SOURCE is anything ``npvit.load`` reads: ``pretrained:NAME``, a run folder, a checkpoint,
an npvit export. Its config is the model (the dropout and drop path rates given on the command line aside),
its output layer is drawn anew when the dataset's classes are another number, and its normalisation
normalises the images, so the weights see inputs on the scale they learnt.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Tuple

import numpy as np

from ..checkpoint import CheckpointError
from ..config import ViTConfig
from ..interop import InteropError, Preprocess, load_timm
from ..loading import load
from ..model import ViT

RATES = ("dropout", "attention_dropout", "head_dropout", "drop_path")

Stats = Tuple[np.ndarray, np.ndarray]


def pretrained_model(settings: dict[str, Any], cfg: ViTConfig) -> tuple[ViT, Stats | None]:
    """The model of ``settings["init_from"]`` with the run's classes (and, for a timm file, image size) and
    dropout rates of ``cfg``, and for an npvit source its input normalisation (mean, variance)."""
    if settings["arch"] is None:
        return source_model(settings, cfg)
    try:
        model = load_timm(settings["init_from"], settings["arch"], global_pool=settings["global_pool"],
                          num_classes=cfg.num_classes, image_size=cfg.image_size, dtype=settings["dtype"],
                          seed=settings["seed"])
    except InteropError as exc:
        raise CheckpointError(f"--init-from: {exc}") from None
    rates = {f: getattr(cfg, f) for f in RATES}
    if all(getattr(model.config, f) == v for f, v in rates.items()):
        return model, None
    tuned = ViT(dataclasses.replace(model.config, **rates), dtype=settings["dtype"], seed=settings["seed"])
    tuned.load_params(model.params)
    return tuned, None


def source_model(settings: dict[str, Any], cfg: ViTConfig) -> tuple[ViT, Stats]:
    """The model ``npvit.load`` reads from ``settings["init_from"]``, with ``cfg``'s classes, the rates given on
    the command line (else the source's), a fresh output layer where the classes differ, and its normalisation."""
    source = settings["init_from"]
    try:
        loaded = load(source, dtype=settings["dtype"])
    except CheckpointError as exc:
        raise CheckpointError(f"--init-from: {exc}") from None
    side = settings["image_size"]
    if side is not None and side != loaded.config.image_size:
        raise CheckpointError(f"--init-from {source} is a model of {loaded.config.image_size}x"
                              f"{loaded.config.image_size} inputs: --image-size {side} cannot change it")
    rates = {f: getattr(loaded.config, f) if settings[f] is None else settings[f] for f in RATES}
    model = ViT(dataclasses.replace(loaded.config, num_classes=cfg.num_classes, **rates), dtype=settings["dtype"],
                seed=settings["seed"])
    for name, value in loaded.model.params.items():  # all but a head output layer of another class count
        if tuple(value.shape) == tuple(model.params[name].shape):
            model.params[name] = value
    return model, (loaded.augmenter.mean, loaded.augmenter.variance)


def arch_normalization(arch: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) of uint8 pixels that normalise as timm does for ``arch``: (x / 255 - m) / s is
    (x - 255 m) / (255 s)."""
    pre = Preprocess.for_arch(arch)
    return 255.0 * np.asarray(pre.mean), (255.0 * np.asarray(pre.std)) ** 2
