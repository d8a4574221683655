"""``npvit.load(source)``: the one way every command and script turns a model source into a model.

    loaded = npvit.load("runs/cifar10-fast")           # a run folder: its best.npz, else last.npz
    loaded = npvit.load("runs/cifar10-fast/last.npz")  # a checkpoint file
    logits = loaded.model.forward(loaded.model_input(uint8_images))

What comes back is the model with its weights and everything needed to feed it as its training did: the
inference preprocessing (the training set's per-channel normalisation and the resize to the model's input),
the class names, the run's settings and the image side its dataset stores. Every field of the file is
checked before anything is built (``npvit.checkpoint.check_model_meta``), so a damaged file is one
:class:`CheckpointError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from .backend import Backend, get_backend, to_numpy
from .checkpoint import Checkpoint, CheckpointError, check_model_meta, load_checkpoint, resolve_checkpoint
from .config import ViTConfig
from .data.augment import Augmenter
from .model import ViT
from .settings import native_image_size

__all__ = ["LoadedModel", "load", "model_from_checkpoint"]


@dataclasses.dataclass
class LoadedModel:
    """A model rebuilt from its source, with its preprocessing and what its metadata says."""

    path: Path
    model: ViT
    augmenter: Augmenter  # inference preprocessing: normalisation with the training statistics, then the resize
    meta: dict[str, Any]

    @property
    def config(self) -> ViTConfig:
        return self.model.config

    @property
    def run(self) -> dict[str, Any]:
        """The settings of the run that trained it (empty when the source records none)."""
        run = self.meta.get("run", {})
        return run if isinstance(run, dict) else {}

    @property
    def class_names(self) -> list[str]:
        """The names the source records (checked when it was loaded), else class_0, class_1, ..."""
        names = self.meta.get("class_names")
        return list(names) if names is not None else [f"class_{i}" for i in range(self.config.num_classes)]

    @property
    def native_size(self) -> int:
        """Side of the images the run trained on, before the Augmenter resized them."""
        return native_image_size(self.run)

    @property
    def eval_flip(self) -> bool:
        """Whether its run evaluated with test-time flip (False for a run from before the setting existed)."""
        return self.run.get("eval_flip") is True

    def param(self, name: str) -> np.ndarray:
        """A parameter of the model as a host array."""
        return to_numpy(self.model.params[name])

    def model_input(self, images: Any) -> Any:
        """uint8 images (B, native, native, 3) -> the normalised, resized batch the model takes (on its backend)."""
        return self.augmenter(self.model.backend.asarray(images), training=False)


def load(source: str | os.PathLike, backend: str | Backend = "numpy", dtype: str | None = None) -> LoadedModel:
    """The model ``source`` holds: a checkpoint file written by ``npvit.train`` (best.npz, last.npz) or a run
    folder (its best.npz, else last.npz). ``dtype`` overrides the stored one ("float32" or "float64").

    Raises :class:`CheckpointError` (a message naming the file and what is wrong) when it cannot be used.
    """
    path = resolve_checkpoint(source)
    ckpt = load_checkpoint(path)
    model, augmenter = model_from_checkpoint(ckpt, get_backend(backend), dtype=dtype, source=str(path))
    return LoadedModel(path, model, augmenter, ckpt.meta)


def model_from_checkpoint(ckpt: Checkpoint, backend: str | Backend = "numpy", dtype: str | None = None,
                          source: str = "the checkpoint") -> tuple[ViT, Augmenter]:
    """Rebuild the model (with the checkpoint's weights) and its inference preprocessing.

    Every field used is validated first (``npvit.checkpoint.check_model_meta``), so a damaged file raises
    :class:`CheckpointError` naming ``source`` and the field, and never allocates more than it stores.
    """
    meta = check_model_meta(ckpt, source)
    model = ViT(meta.config, backend=backend, dtype=dtype or meta.dtype)
    try:
        model.load_params(ckpt.params)
    except ValueError as exc:
        raise CheckpointError(f"{source} does not fit the model its config describes ({exc}); was it written "
                              "by npvit.train?") from exc
    augmenter = Augmenter(meta.mean, meta.variance, image_size=meta.config.image_size, dtype=str(model.dtype))
    return model, augmenter
