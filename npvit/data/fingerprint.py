"""A dataset's fingerprint: what a run records of its data, to know on resume that it is the same data.

    {"train": [N, H, W, C], "test": [M, H, W, C], "labels": sha256 of every label (16 hex digits),
     "pixels": sha256 of up to SAMPLE images spread over both splits (16 hex digits)}

Computed once per run, in well under a second for CIFAR (the labels are 60,000 numbers; the pixels a sample
of 64 images). Relabelled, reordered, resized or re-encoded data (labels shifted, pixels inverted) changes it;
an untouched copy in another folder or format does not.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

SAMPLE = 64  # images hashed, evenly spaced over each split


def _sample(x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return x
    return x[np.unique(np.linspace(0, len(x) - 1, min(SAMPLE, len(x))).round().astype(np.int64))]


def dataset_fingerprint(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                        y_test: np.ndarray) -> dict[str, Any]:
    """The fingerprint of a dataset's two splits (uint8 images NHWC, integer labels)."""
    labels = hashlib.sha256()
    pixels = hashlib.sha256()
    for x, y in ((x_train, y_train), (x_test, y_test)):
        labels.update(np.ascontiguousarray(np.asarray(y, dtype=np.int64)).tobytes())
        pixels.update(np.ascontiguousarray(_sample(np.asarray(x))).tobytes())
    return {"train": list(np.shape(x_train)), "test": list(np.shape(x_test)),
            "labels": labels.hexdigest()[:16], "pixels": pixels.hexdigest()[:16]}


def fingerprint_difference(recorded: Any, current: dict[str, Any]) -> str | None:
    """What differs between a recorded fingerprint and the current one, in words, or None if they agree (or
    nothing usable was recorded: runs from before fingerprints were kept)."""
    if not isinstance(recorded, dict):
        return None
    names = {"train": "training images", "test": "test images", "labels": "labels",
             "pixels": "pixels (a sample of images)"}
    differ = []
    for key, name in names.items():
        if key in recorded and recorded[key] != current[key]:
            differ.append(f"{name}: {recorded[key]} then, {current[key]} now" if key in ("train", "test")
                          else name)
    return "; ".join(differ) or None
