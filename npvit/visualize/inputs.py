"""What the figures and ``npvit.predict`` look at: a trained model and images prepared the way training saw them.

Image files of any size go through two steps, and the order matters:

1. Reduced to the dataset's native size (32x32 for CIFAR; ``synthetic_image_size`` for the synthetic set)
   with Pillow's antialiased Lanczos filter, after a centre crop to a square (``fit="crop"``, the default,
   which keeps the object's proportions) or a plain squash (``fit="stretch"``). A photo has far more detail
   than a 32x32 CIFAR image; the model never saw that detail, and the Augmenter's bilinear resize is not
   antialiased (Keras ``Resizing`` is not), so feeding it a large photo directly would alias badly.
2. Passed through the run's own ``Augmenter(..., training=False)`` exactly as evaluation does: per-channel
   normalisation with the training-set statistics, then the bilinear resize to the model's ``image_size``
   (72x72 for the Keras preset, which was trained on 32x32 CIFAR images upsampled this very way).

So an image file reaches the model as a CIFAR test image would.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ..augment import Augmenter, resize_bilinear
from ..backend import Backend, get_backend, to_numpy
from ..checkpoint import CheckpointError, load_checkpoint
from ..config import ViTConfig
from ..evaluate import load_run_dataset, model_from_checkpoint
from ..model import ViT
from .extras import pillow_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""File endings picked up when a folder is given (any format Pillow reads works when named directly)."""
FITS = ("crop", "stretch")
NATIVE_SIZES = {"cifar10": 32, "cifar100": 32}


class InputError(Exception):
    """An image file or folder that cannot be used; the message names it and says why."""


@dataclasses.dataclass
class LoadedModel:
    """A checkpoint rebuilt into a model, with its preprocessing and what its metadata says."""

    path: Path
    model: ViT
    augmenter: Augmenter
    meta: dict[str, Any]

    @property
    def config(self) -> ViTConfig:
        return self.model.config

    @property
    def run(self) -> dict[str, Any]:
        return self.meta.get("run", {})

    @property
    def class_names(self) -> list[str]:
        names = self.meta.get("class_names")
        k = self.config.num_classes
        return list(names) if isinstance(names, list) and len(names) == k else [f"class_{i}" for i in range(k)]

    @property
    def native_size(self) -> int:
        """Side of the images the run trained on, before the Augmenter resized them (32 unless known)."""
        run = self.run
        if run.get("dataset") == "synthetic":
            return int(run.get("synthetic_image_size", 32))
        return NATIVE_SIZES.get(run.get("dataset"), 32)

    def param(self, name: str) -> np.ndarray:
        """A parameter of the model as a host array."""
        return to_numpy(self.model.params[name])

    def model_input(self, images: np.ndarray) -> Any:
        """uint8 images (B, native, native, 3) -> the normalised, resized batch the model takes (on its backend)."""
        return self.augmenter(self.model.backend.asarray(images), training=False)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its best.npz, else last.npz)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.npz", "last.npz"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no checkpoint (best.npz or last.npz)")
    return path


def load_model(path: str | Path, backend: str | Backend = "numpy") -> LoadedModel:
    """Rebuild a trained model from a checkpoint file or run folder (CheckpointError if that fails)."""
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    model, augmenter = model_from_checkpoint(ckpt, get_backend(backend))  # CheckpointError if it cannot
    return LoadedModel(ckpt_path, model, augmenter, ckpt.meta)


def image_files(paths: list[str | Path]) -> list[Path]:
    """Files named, with each folder replaced by its PNG/JPEG files (sorted by name, not recursive)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"{p} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"no such file or folder: {p}")
    return files


def read_image(path: str | Path, size: int, fit: str = "crop") -> np.ndarray:
    """An image file as uint8 (size, size, 3) RGB, reduced as the module docstring explains.

    EXIF orientation is applied (photos from phones), and transparent pixels are laid on white.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    image_mod = pillow_image()
    from PIL import ImageOps  # Pillow is there: pillow_image checked

    if not Path(path).is_file():
        raise InputError(f"no such file: {path}" if not Path(path).exists() else f"{path} is not a file")
    try:
        with image_mod.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = image_mod.alpha_composite(image_mod.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            img = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, image_mod.DecompressionBombError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc
    lanczos = image_mod.LANCZOS  # Image.Resampling.LANCZOS from Pillow 9.1; the constant works on every version
    if fit == "crop":
        img = ImageOps.fit(img, (size, size), method=lanczos)
    elif img.size != (size, size):
        img = img.resize((size, size), lanczos)
    return np.asarray(img, dtype=np.uint8).copy()


def dataset_image(loaded: LoadedModel, index: int, data_dir: str | None = None, cache_dir: str | None = None,
                  download: bool = True) -> tuple[np.ndarray, str]:
    """Test image ``index`` of the run's dataset (uint8, native size) and its class name. Without
    ``data_dir``, the copy the run was trained from is used when it is still there."""
    recorded = loaded.run.get("data_dir")
    if data_dir is None and recorded and Path(recorded).exists():
        data_dir = recorded
    data = load_run_dataset(loaded.run, data_dir, cache_dir or loaded.run.get("cache_dir"), download=download,
                            progress=False)
    if not 0 <= index < len(data.x_test):
        raise InputError(f"--test-index {index} is outside the test split (0..{len(data.x_test) - 1})")
    return data.x_test[index], data.class_names[int(data.y_test[index])]


def display_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (h, w, 3) -> float (size, size, 3) in [0, 1]: the pixels the model sees, before normalisation
    (the same bilinear resize the Augmenter applies)."""
    x = resize_bilinear(np.asarray(image, dtype=np.float32)[None], size)[0]
    return np.clip(x / 255.0, 0.0, 1.0)
