"""A deterministic synthetic image-classification set that a small model can learn in a few steps.

Each class has a prototype image: a random mean colour plus a random coarse 4x4 pattern of colour offsets,
scaled up to the image size. A sample is its class prototype plus Gaussian pixel noise, clipped to uint8.
Classes differ in both mean colour and layout, so even a tiny ViT's loss falls quickly, which makes the set
useful for end-to-end tests and smoke runs with no data on disk. The same arguments always give the same
arrays on every machine (NumPy's PCG64 generator).
"""

from __future__ import annotations

import numpy as np

from .dataset import Dataset

GRID = 4  # the pattern's resolution before scaling up

#: Bounds on what a synthetic set may ask for: far above any smoke test, far below what would exhaust memory
#: (settings read back from a file are untrusted and must not make the generator allocate without bound).
MAX_IMAGES = 1_000_000
MAX_IMAGE_SIZE = 1024
MAX_CLASSES = 100_000
MAX_BYTES = 4 << 30  # uint8 pixels of train and test together
NOISE_STD = 24.0
_CHUNK = 4096  # images generated at a time, to bound the float32 working memory


def synthetic_dataset(num_train: int, num_test: int, image_size: int = 32, num_classes: int = 10,
                      seed: int = 0) -> Dataset:
    """``num_train`` + ``num_test`` images of ``image_size`` x ``image_size`` in ``num_classes`` classes.

    Labels cycle through the classes and are then shuffled, so every class appears whenever there are at
    least ``num_classes`` images.
    """
    for name, value, low in (("num_train", num_train, 0), ("num_test", num_test, 0),
                             ("image_size", image_size, 1), ("num_classes", num_classes, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"synthetic_dataset: {name} must be an integer >= {low}, got {value!r}")
    rng = np.random.default_rng(seed)
    colours = rng.uniform(60.0, 195.0, size=(num_classes, 1, 1, 3))
    patterns = rng.uniform(-45.0, 45.0, size=(num_classes, GRID, GRID, 3))
    cells = np.arange(image_size) * GRID // image_size  # which pattern cell each pixel row/column falls in
    prototypes = (colours + patterns[:, cells][:, :, cells]).astype(np.float32)
    x_train, y_train = _draw(rng, prototypes, num_train)
    x_test, y_test = _draw(rng, prototypes, num_test)
    return Dataset("synthetic", x_train, y_train, x_test, y_test, [f"class_{i}" for i in range(num_classes)])


def _draw(rng: np.random.Generator, prototypes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(n, dtype=np.int64) % len(prototypes))
    images = np.empty((n, *prototypes.shape[1:]), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        idx = labels[start:start + _CHUNK]
        noisy = prototypes[idx] + rng.standard_normal((len(idx), *prototypes.shape[1:]), dtype=np.float32) \
            * np.float32(NOISE_STD)
        images[start:start + _CHUNK] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return images, labels
