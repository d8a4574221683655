"""``load_dataset``: the one entry point the training program calls, whatever the dataset."""

from __future__ import annotations

import os
from pathlib import Path

from .cifar import load_cifar
from .dataset import Dataset
from .synthetic import synthetic_dataset

DATASETS = ("cifar10", "cifar100", "synthetic")
LABEL_MODES = ("fine", "coarse")
NATIVE_SIZES = {"cifar10": 32, "cifar100": 32}  # the side of the images each dataset stores


def default_cache_dir() -> Path:
    """``$NPVIT_CACHE`` if set, else ``~/.cache/npvit``: where downloads and extracted archives live."""
    env = os.environ.get("NPVIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "npvit"


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 label_mode: str = "fine", download: bool = True, progress: bool = True,
                 synthetic_size: tuple[int, int] = (1000, 200), image_size: int = 32, num_classes: int = 10,
                 seed: int = 0) -> Dataset:
    """Load ``name`` (one of :data:`DATASETS`) as uint8 HWC images and int64 labels.

    CIFAR (``"cifar10"``, ``"cifar100"``) comes from ``data_dir`` when given (the archive, the folder holding
    it, the extracted folder or the folder holding that; binary or python layout), otherwise from
    ``cache_dir`` (default :func:`default_cache_dir`), downloading the binary archive there when it is
    missing and ``download`` is true; ``progress`` shows a progress bar on stderr while downloading.
    ``label_mode`` picks CIFAR-100's 100 ``"fine"`` or 20 ``"coarse"`` classes (CIFAR-10 only has "fine").

    ``"synthetic"`` ignores all of that and calls :func:`synthetic_dataset` with ``synthetic_size``
    (train, test), ``image_size``, ``num_classes`` and ``seed``, which apply to it alone (CIFAR images are
    always 32x32; resizing is the training loop's business).

    Raises :class:`DataError` for data problems (nothing found, corrupt files, offline) with a message meant
    for the user, and ``ValueError`` for bad arguments.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    if name == "synthetic":
        num_train, num_test = synthetic_size
        return synthetic_dataset(num_train, num_test, image_size=image_size, num_classes=num_classes, seed=seed)
    if name == "cifar10" and label_mode != "fine":
        raise ValueError("CIFAR-10 has only one set of labels: label_mode 'coarse' is for CIFAR-100")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return load_cifar(name, cache, data_dir=data_dir, label_mode=label_mode, download=download, progress=progress)
