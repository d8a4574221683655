"""The dataset a run names: its settings (``config.json`` "run", a checkpoint's ``meta["run"]``, or the
training program's flags) checked and turned into a :func:`load_dataset` call.

Settings read back from a file are untrusted: a damaged or hand-edited file must produce a clear
:class:`DataError`, never a traceback, and must not make the loader allocate without bound (a synthetic
set of 10^9 images). Every data setting is therefore checked for type and range before anything is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..files import is_int
from .dataset import Dataset
from .errors import DataError
from .load import DATASETS, LABEL_MODES, load_dataset

#: Bounds on what a synthetic set may ask for: far above any smoke test, far below what would exhaust memory.
MAX_SYNTHETIC_IMAGES = 1_000_000
MAX_SYNTHETIC_IMAGE_SIZE = 1024
MAX_SYNTHETIC_CLASSES = 100_000
MAX_SYNTHETIC_BYTES = 4 << 30  # uint8 pixels of train and test together

#: Side of the images each dataset stores (the synthetic set's is a setting).
NATIVE_SIZES = {"cifar10": 32, "cifar100": 32}


def _bad(name: str, expected: str, value: Any) -> DataError:
    flag = "--" + name.replace("_", "-")
    shown = repr(value)
    return DataError(f"the run setting {name} ({flag}) must be {expected}, got "
                     f"{shown if len(shown) <= 60 else shown[:57] + '...'}")


def _int_setting(run: Mapping[str, Any], name: str, default: int, low: int, high: int | None) -> int:
    value = run.get(name, default)
    if not is_int(value) or value < low or (high is not None and value > high):
        span = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise _bad(name, span, value)
    return value


def check_data_settings(run: Mapping[str, Any]) -> dict[str, Any]:
    """The data settings of ``run`` with defaults filled in, or :class:`DataError` naming the bad one.

    Keys: dataset, label_mode, data_dir, cache_dir, download, and for the synthetic set synthetic_size
    (train, test), synthetic_image_size, synthetic_classes and seed.
    """
    if not isinstance(run, Mapping):
        raise DataError(f"the run settings must be a JSON object, got {type(run).__name__}")
    dataset = run.get("dataset", "cifar100")
    if dataset not in DATASETS:
        raise _bad("dataset", f"one of {', '.join(DATASETS)}", dataset)
    label_mode = run.get("label_mode", "fine")
    if label_mode not in LABEL_MODES:
        raise _bad("label_mode", "fine or coarse", label_mode)
    if label_mode == "coarse" and dataset != "cifar100":
        raise DataError(f"the run setting label_mode (--label-mode) is coarse, but only CIFAR-100 has coarse "
                        f"labels; {dataset} has one set of labels: use fine")
    out: dict[str, Any] = {"dataset": dataset, "label_mode": label_mode}
    for name in ("data_dir", "cache_dir"):
        value = run.get(name)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise _bad(name, "a path", value)
        out[name] = value
    download = run.get("download", True)
    if not isinstance(download, bool):
        raise _bad("download", "true or false", download)
    out["download"] = download
    if dataset != "synthetic":
        return out

    size = run.get("synthetic_size", (1000, 200))
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(is_int(n) and n >= 0 for n in size):
        raise _bad("synthetic_size", "two integers >= 0, train,test", size)
    image_size = _int_setting(run, "synthetic_image_size", 32, 1, MAX_SYNTHETIC_IMAGE_SIZE)
    classes = _int_setting(run, "synthetic_classes", 10, 1, MAX_SYNTHETIC_CLASSES)
    seed = _int_setting(run, "seed", 0, 0, None)
    images = size[0] + size[1]
    if images > MAX_SYNTHETIC_IMAGES or images * image_size * image_size * 3 > MAX_SYNTHETIC_BYTES:
        raise _bad("synthetic_size", f"at most {MAX_SYNTHETIC_IMAGES:,} images and "
                   f"{MAX_SYNTHETIC_BYTES >> 30} GiB of pixels in all (train and test, "
                   f"{image_size}x{image_size})", size)
    out.update(synthetic_size=(size[0], size[1]), synthetic_image_size=image_size, synthetic_classes=classes,
               seed=seed)
    return out


def native_image_size(run: Mapping[str, Any]) -> int:
    """Side of the images the run's dataset stores, before any resize to the model's input."""
    settings = check_data_settings(run)
    if settings["dataset"] == "synthetic":
        return settings["synthetic_image_size"]
    return NATIVE_SIZES[settings["dataset"]]


def load_run_dataset(run: Mapping[str, Any], data_dir: str | os.PathLike | None = None,
                     cache_dir: str | os.PathLike | None = None, download: bool = True,
                     progress: bool = True) -> Dataset:
    """Load the dataset a run's settings name (``data_dir`` and ``cache_dir`` as given, not the run's).

    Raises :class:`DataError` for a bad setting (naming it) as for any data problem.
    """
    s = check_data_settings(run)
    extra = {}
    if s["dataset"] == "synthetic":
        extra = {"synthetic_size": s["synthetic_size"], "image_size": s["synthetic_image_size"],
                 "num_classes": s["synthetic_classes"], "seed": s["seed"]}
    return load_dataset(s["dataset"], data_dir=data_dir, cache_dir=cache_dir, label_mode=s["label_mode"],
                        download=download, progress=progress, **extra)
