"""The in-memory form every loader returns: uint8 images, channels last, and int64 labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(repr=False)
class Dataset:
    """A train/test split held in host memory.

    Images are ``uint8`` with shape ``(N, H, W, 3)`` (channels last, as the model takes them), in the order
    the source stores them; labels are ``int64`` in ``[0, num_classes)``. Normalisation, resizing and
    shuffling are the training loop's business, so the data layer hands over the raw pixels.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(f"x_{split} must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
            if y.dtype != np.int64 or y.shape != (len(x),):
                raise ValueError(f"y_{split} must be int64 ({len(x)},), got {y.dtype} {y.shape}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"train and test images differ in shape: {self.x_train.shape[1:]} "
                             f"vs {self.x_test.shape[1:]}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        """Height of the images (CIFAR and the synthetic set are square)."""
        return int(self.x_train.shape[1])

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
                f"image={tuple(self.x_train.shape[1:])}, num_classes={self.num_classes})")
