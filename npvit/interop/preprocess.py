"""How timm feeds a pretrained model: resize, centre crop, scale to [0, 1], normalise (``transforms_imagenet_eval``).

    scale = floor(input_size / crop_pct)
    "center": the shorter side resized to ``scale`` (the longer one to int(scale * long / short)), then the
              centre input_size x input_size square cut out (top = round((h - input_size) / 2))
    "squash": both sides resized to ``scale``, then the same centre crop
    x = (pixels / 255 - mean) / std, per channel, channels last (npvit's layout; timm's tensors are CHW)

Resizing goes through Pillow with the arch's filter (bicubic for timm's ViTs), as torchvision does for the PIL
images timm's loaders give it, so the numbers are timm's. Each timm architecture's values (its default
pretrained weights' ``pretrained_cfg``) ship in ``timm_pretrained.json``; any of them can be overridden.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import InteropError, require

HERE = Path(__file__).resolve().parent
CROP_MODES = ("center", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
PILLOW_HINT = "pip install 'npvit[viz]'"


@lru_cache(maxsize=1)
def pretrained_table() -> dict[str, dict[str, Any]]:
    """timm architecture -> its default pretrained weights' tag, input size, crop, mean, std, classes."""
    return json.loads((HERE / "timm_pretrained.json").read_text())


@lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order ("tench, Tinca tinca", ...), from timm's tables."""
    return (HERE / "imagenet_classes.txt").read_text().splitlines()


@dataclass(frozen=True)
class Preprocess:
    """Image -> model input as timm's evaluation transform makes it."""

    input_size: int
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not isinstance(self.input_size, int) or self.input_size < 1:
            raise InteropError(f"preprocessing input_size must be a positive integer, got {self.input_size!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise InteropError(f"preprocessing interpolation must be one of {INTERPOLATIONS}, got "
                               f"{self.interpolation!r}")
        if self.crop_mode not in CROP_MODES:
            raise InteropError(f"preprocessing crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if not (isinstance(self.crop_pct, (int, float)) and 0 < self.crop_pct <= 1):
            raise InteropError(f"preprocessing crop_pct must be in (0, 1], got {self.crop_pct!r}")
        if len(self.mean) != len(self.std) or not all(s > 0 for s in self.std):
            raise InteropError(f"preprocessing mean and std must be as many numbers, std positive; got "
                               f"{self.mean} and {self.std}")

    @classmethod
    def for_arch(cls, arch: str, input_size: int | None = None, **overrides: Any) -> "Preprocess":
        """The preprocessing of timm's ``arch`` (its default pretrained weights'), at ``input_size`` when
        given (a model whose position embedding was resampled), with any field overridden."""
        table = pretrained_table()
        if arch not in table:
            raise InteropError(f"no preprocessing known for {arch!r}; known: {', '.join(table)}")
        cfg = table[arch]
        values = dict(input_size=cfg["input_size"] if input_size is None else input_size,
                      interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"], crop_mode=cfg["crop_mode"],
                      mean=cfg["mean"], std=cfg["std"])
        unknown = sorted(set(overrides) - set(values))
        if unknown:
            raise InteropError(f"unknown preprocessing field(s) {unknown}; known: {sorted(values)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> "Preprocess":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocess":
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, Mapping) or set(d) - known or "input_size" not in d:
            raise InteropError(f"a preprocessing record needs input_size and only {sorted(known)}, got {d!r}")
        return cls(**d)

    # ---- the transform ----------------------------------------------------------------------------------------
    def resized(self, image: Any) -> Any:
        """The Pillow image resized and centre-cropped to input_size x input_size (RGB)."""
        pil = require("PIL.Image", "preprocessing images", PILLOW_HINT)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != len(self.mean):
                raise InteropError(f"an image array must be uint8 (height, width, {len(self.mean)}), got "
                                   f"{image.dtype} {image.shape}")
            image = pil.fromarray(image)
        image = image.convert("RGB")
        filt = {"bicubic": pil.BICUBIC, "bilinear": pil.BILINEAR, "nearest": pil.NEAREST}[self.interpolation]
        scale = math.floor(self.input_size / self.crop_pct)
        w, h = image.size
        if self.crop_mode == "squash":
            size = (scale, scale)
        elif w <= h:  # torchvision's Resize(int): the shorter side to scale, the other in proportion (truncated)
            size = (scale, int(scale * h / w))
        else:
            size = (int(scale * w / h), scale)
        if size != (w, h):
            image = image.resize(size, filt)
        w, h = image.size
        s = self.input_size
        if w < s or h < s:
            raise InteropError(f"an image of {w}x{h} pixels after the resize is smaller than the {s}x{s} crop")
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))  # torchvision's center_crop
        return image.crop((left, top, left + s, top + s))

    def __call__(self, image: Any) -> np.ndarray:
        """A Pillow image or a uint8 (H, W, 3) array -> the model input (input_size, input_size, 3), float32."""
        x = np.asarray(self.resized(image), dtype=np.float32) / np.float32(255.0)  # (S, S, 3) in [0, 1]
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def batch(self, images: list[Any]) -> np.ndarray:
        """(B, input_size, input_size, 3) float32 for a list of images."""
        return np.stack([self(image) for image in images])
