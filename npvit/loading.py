"""``npvit.load(source)``: the one way every command and script turns a model source into a model.

    loaded = npvit.load("runs/cifar10-fast")           # a run folder: its best.npz, else last.npz
    loaded = npvit.load("runs/cifar10-fast/last.npz")  # a checkpoint file
    loaded = npvit.load("model.safetensors", arch="vit_base_patch16_224")   # timm's or Google's weights
    loaded = npvit.load("exported.safetensors")        # a file npvit.export wrote (its metadata says the rest)
    loaded = npvit.load("pretrained:cifar10")          # a model shipped inside the package (npvit.zoo)
    logits = loaded.model.forward(loaded.model_input(uint8_images))

What comes back is the model with its weights and everything needed to feed it as its training did: the
inference preprocessing (the training set's per-channel normalisation and the resize to the model's input),
the class names, the run's settings and the image side its dataset stores. Every field of the file is
checked before anything is built (``npvit.checkpoint.check_model_meta``), so a damaged file is one
:class:`CheckpointError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .backend import Backend, get_backend, to_numpy
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    check_model_meta,
    load_checkpoint,
    read_arrays,
    resolve_checkpoint,
)
from .config import ViTConfig
from .data.augment import Augmenter
from .interop import InteropError, imagenet_class_names, load_timm
from .interop.readback import load_export
from .model import ViT
from .settings import native_image_size
from .zoo import CONFIG, FORMAT_VERSION, WEIGHTS, PretrainedError, entry_folder, pretrained_name, read_json

FOREIGN_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")  # never npvit checkpoints: read by npvit.interop

__all__ = ["LoadedModel", "load", "model_from_checkpoint", "pretrained"]


@dataclasses.dataclass
class LoadedModel:
    """A model rebuilt from its source, with its preprocessing and what its metadata says."""

    path: Path
    model: ViT
    augmenter: Augmenter  # inference preprocessing: normalisation with the training statistics, then the resize
    meta: dict[str, Any]
    # A timm model's resize and crop of image files (npvit.interop.Preprocess): the images model_input takes
    # are what its ``resized`` makes of a file, input_size pixels square
    preprocess: Any = None

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
        """Side of the images the run trained on, before the Augmenter resized them (a timm model's: its input)."""
        if self.preprocess is not None:
            return self.preprocess.input_size
        return native_image_size(self.run)

    @property
    def eval_flip(self) -> bool:
        """Whether its run evaluated with test-time flip (False for a run from before the setting existed)."""
        return self.run.get("eval_flip") is True

    @property
    def eval_shift(self) -> int:
        """The pixels of its run's test-time shifts (``npvit.evaluate.view_logits``; 0: none, also for a run from
        before the setting existed)."""
        shift = self.run.get("eval_shift")
        return shift if type(shift) is int and shift > 0 else 0

    def param(self, name: str) -> np.ndarray:
        """A parameter of the model as a host array."""
        return to_numpy(self.model.params[name])

    def model_input(self, images: Any) -> Any:
        """uint8 images (B, native, native, 3) -> the normalised, resized batch the model takes (on its backend)."""
        return self.augmenter(self.model.backend.asarray(images), training=False)


def load(source: str | os.PathLike, backend: str | Backend = "numpy", dtype: str | None = None, *,
         arch: str | None = None, num_classes: int | None = None, image_size: int | None = None,
         global_pool: str = "token") -> LoadedModel:
    """The model ``source`` holds: a checkpoint file written by ``npvit.train`` (best.npz, last.npz) or a run
    folder (its best.npz, else last.npz); with ``arch`` (a timm architecture), a timm ``.safetensors`` or
    Google ``.npz`` file (``npvit.load_timm``, whose ``num_classes``, ``image_size`` and ``global_pool`` these
    are); a ``.safetensors`` file ``npvit.export`` wrote; ``"pretrained:NAME"``, a model shipped with the
    package (:func:`pretrained`). ``dtype`` overrides the stored one ("float32" or "float64"; float32 for
    other libraries' files and float16-stored shipped models).

    Raises :class:`CheckpointError` (a message naming the file and what is wrong) when it cannot be used.
    """
    name = pretrained_name(source)
    if name is not None and arch is None:
        return pretrained(name, backend, dtype)
    if arch is not None or Path(source).suffix.lower() in FOREIGN_SUFFIXES:
        return _load_foreign(Path(source), get_backend(backend), dtype or "float32", arch,
                             dict(num_classes=num_classes, image_size=image_size, global_pool=global_pool))
    path = resolve_checkpoint(source)
    ckpt = load_checkpoint(path)
    model, augmenter = model_from_checkpoint(ckpt, get_backend(backend), dtype=dtype, source=str(path))
    return LoadedModel(path, model, augmenter, ckpt.meta)


def pretrained(name: str = "cifar10", backend: str | Backend = "numpy", dtype: str | None = None, *,
               root: str | os.PathLike | None = None) -> LoadedModel:
    """The model shipped with the package as ``name`` (``npvit.zoo``; ``npvit.load("pretrained:NAME")``), with
    its preprocessing and class names, as :func:`load` returns a trained run's. ``root``: a registry folder
    other than the package's. Computes in float32 unless ``dtype`` says otherwise, whatever the storage.

    Raises :class:`CheckpointError` for an unknown name (the message lists the shipped ones) or damaged files.
    """
    try:
        folder = entry_folder(name, root)
        doc = read_json(folder / CONFIG)
    except PretrainedError as exc:
        raise CheckpointError(str(exc)) from None
    source = f"pretrained:{name} ({folder / CONFIG})"
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{source} has format {str(doc.get('format_version'))[:20]!r}; this npvit reads "
                              f"{FORMAT_VERSION}: reinstall npvit, or write the folder again with npvit.export")
    path = folder / WEIGHTS
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != doc.get("weights_sha256"):
        raise CheckpointError(f"{path} is not the file {folder / CONFIG} describes (its SHA-256 differs): the "
                              "folder is damaged or half replaced; reinstall npvit or write it again with npvit.export")
    arrays = read_arrays(path, "pretrained weights", "Reinstall npvit, or write the folder again with npvit.export.")
    storage = doc.get("storage")
    if storage not in ("float16", "float32"):
        raise CheckpointError(f"{source}: its storage is {str(storage)[:20]!r}, not float16 or float32")
    odd = sorted(k for k, a in arrays.items() if not k.startswith("param/") or a.dtype != np.dtype(storage))
    if odd:
        raise CheckpointError(f"{path}: {odd[0]!r} is not a {storage} parameter as {CONFIG} says; the file is "
                              "damaged or was not written by npvit.export --pretrained")
    params = {k[len("param/"):]: a.astype(np.float32) for k, a in arrays.items()}  # exact: float16 widens exactly
    meta = {k: doc.get(k) for k in ("model", "normalization", "class_names", "run")}
    meta.update(dtype="float32", run=meta["run"] or {}, pretrained=name, storage=storage)
    model, augmenter = model_from_checkpoint(Checkpoint(params, {}, meta), get_backend(backend),
                                             dtype=dtype, source=source)
    return LoadedModel(path, model, augmenter, meta)


def _load_foreign(path: Path, backend: Backend, dtype: str, arch: str | None, options: dict) -> LoadedModel:
    """A timm or Google file (``arch`` given), or an npvit export; its preprocessing as an Augmenter too."""
    try:
        if arch is None:
            model, doc = load_export(path, backend, dtype)
        else:
            model, doc = load_timm(path, arch, backend=backend, dtype=dtype, **options), {}
    except InteropError as exc:
        raise CheckpointError(str(exc)) from None
    cfg, pre = model.config, model.preprocess
    names = doc.get("class_names")
    if names is None and cfg.num_classes == 1000 and arch is not None:
        names = imagenet_class_names()  # timm's ImageNet-1k heads
    if pre is not None:  # (x / 255 - m) / s is Keras' normalisation with mean 255 m and variance (255 s)^2
        mean, variance = 255.0 * np.asarray(pre.mean), (255.0 * np.asarray(pre.std)) ** 2
    elif "normalization" in doc:
        mean, variance = doc["normalization"]["mean"], doc["normalization"]["variance"]
    else:
        raise CheckpointError(f"{path} records no preprocessing (neither a timm preprocess nor a normalization)")
    augmenter = Augmenter(mean, variance, image_size=cfg.image_size, dtype=str(model.dtype))
    meta = {"model": cfg.to_dict(), "dtype": str(model.dtype), "class_names": names, "arch": arch,
            "run": doc.get("run", {})}
    return LoadedModel(path, model, augmenter, meta, preprocess=pre)


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
