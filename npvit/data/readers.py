"""Parse an extracted CIFAR folder (either layout) into uint8 HWC images, int64 labels and class names.

Every check here guards against a file that is truncated, from the wrong dataset or not CIFAR at all, and
turns it into a :class:`DataError` naming the file. Record counts are not fixed (the official files hold
10,000 or 50,000 images each), so small hand-made copies load as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .layouts import IMAGE_BYTES, IMAGE_SHAPE, NUM_CLASSES, Layout
from .safe_pickle import safe_load

Split = tuple[np.ndarray, np.ndarray]


def read_layout(layout: Layout, folder: Path, label_mode: str) -> tuple[Split, Split, list[str]]:
    """Return ``((x_train, y_train), (x_test, y_test), class_names)`` from ``folder``."""
    missing = [name for name in layout.files if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder} is not a complete {layout.kind} {layout.dataset} folder: missing "
                        f"{', '.join(missing)}. Extract the archive again or pass another copy.")
    read = _read_binary if layout.kind == "binary" else _read_python
    return read(layout, folder, label_mode)


def _hwc(chw_rows: np.ndarray) -> np.ndarray:
    """(N, 3072) rows of 1024 R, 1024 G, 1024 B bytes -> (N, 32, 32, 3) view."""
    return chw_rows.reshape(-1, *IMAGE_SHAPE).transpose(0, 2, 3, 1)


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate along the first axis into one C-contiguous array (np.concatenate keeps the views'
    transposed memory order, which would make every later batch slice a strided gather)."""
    out = np.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), dtype=parts[0].dtype)
    start = 0
    for p in parts:
        out[start:start + len(p)] = p
        start += len(p)
    return out


def _check_labels(labels: np.ndarray, num_classes: int, path: Path, what: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path} has {what} outside 0..{num_classes - 1} (found {labels.min()}.."
                        f"{labels.max()}): the file is corrupt or belongs to another dataset")


# ---------------------------------------------------------------------------------------------- binary

def _read_binary(layout: Layout, folder: Path, label_mode: str) -> tuple[Split, Split, list[str]]:
    if layout.dataset == "cifar10":
        names = _read_names_txt(folder / "batches.meta.txt", 10)
        labels = [("labels", 10)]
    else:
        names = _read_names_txt(folder / f"{label_mode}_label_names.txt", NUM_CLASSES["cifar100", label_mode])
        labels = [("coarse labels", 20), ("fine labels", 100)]  # each record: coarse byte, fine byte, pixels
    column = 0 if layout.dataset == "cifar10" else [m for m, _ in labels].index(f"{label_mode} labels")
    train = _read_records([folder / f for f in layout.train], labels, column)
    test = _read_records([folder / f for f in layout.test], labels, column)
    return train, test, names


def _read_records(paths: list[Path], labels: list[tuple[str, int]], column: int) -> Split:
    record = len(labels) + IMAGE_BYTES
    images, targets = [], []
    for path in paths:
        size = path.stat().st_size
        if size == 0 or size % record:
            raise DataError(f"{path} is {size} bytes, not a whole number of {record}-byte records: it is "
                            f"truncated or not a CIFAR {'10' if len(labels) == 1 else '100'} binary file")
        raw = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
        for i, (what, n) in enumerate(labels):
            _check_labels(raw[:, i], n, path, what)
        targets.append(raw[:, column].astype(np.int64))
        images.append(_hwc(raw[:, len(labels):]))
    return _stack(images), np.concatenate(targets)


def _read_names_txt(path: Path, expected: int) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not a text file of class names ({exc})") from exc
    if len(names) != expected:
        raise DataError(f"{path} lists {len(names)} class names, expected {expected}: the file is corrupt or "
                        f"belongs to another dataset")
    return names


# ---------------------------------------------------------------------------------------------- python

def _read_python(layout: Layout, folder: Path, label_mode: str) -> tuple[Split, Split, list[str]]:
    num_classes = NUM_CLASSES[layout.dataset, label_mode]
    meta_path = folder / layout.meta[0]
    meta = _load_dict(meta_path)
    names_key = "label_names" if layout.dataset == "cifar10" else f"{label_mode}_label_names"
    names = [_text(n, meta_path) for n in _list(_get(meta, names_key, meta_path), meta_path, names_key)]
    if len(names) != num_classes:
        raise DataError(f"{meta_path} lists {len(names)} {names_key}, expected {num_classes}: the file is "
                        f"corrupt or belongs to another dataset")
    labels_key = "labels" if layout.dataset == "cifar10" else f"{label_mode}_labels"
    train = _read_batches([folder / f for f in layout.train], labels_key, num_classes)
    test = _read_batches([folder / f for f in layout.test], labels_key, num_classes)
    return train, test, names


def _read_batches(paths: list[Path], labels_key: str, num_classes: int) -> Split:
    images, targets = [], []
    for path in paths:
        batch = _load_dict(path)
        data = _get(batch, "data", path)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != IMAGE_BYTES:
            desc = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{path}: 'data' should be a uint8 array (N, {IMAGE_BYTES}), found {desc}")
        try:
            labels = np.asarray(_list(_get(batch, labels_key, path), path, labels_key))
        except ValueError:  # a ragged list
            labels = np.asarray(None)
        if labels.shape != (len(data),) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
            raise DataError(f"{path}: '{labels_key}' should hold {len(data)} integers, one per image, found "
                            f"{labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64)
        _check_labels(labels, num_classes, path, f"'{labels_key}'")
        images.append(_hwc(data))
        targets.append(labels)
    return _stack(images), np.concatenate(targets)


def _load_dict(path: Path) -> dict:
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not the dict of a CIFAR batch")
    return obj


def _get(d: dict, key: str, path: Path) -> Any:
    """``d[b"key"]`` (the official files, read with encoding="bytes") or ``d["key"]`` (re-pickled copies)."""
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{path} has no '{key}' entry (found {sorted(map(str, d))}): not a CIFAR file of this kind")


def _list(value: Any, path: Path, key: str) -> list:
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{path}: '{key}' should be a list, found {type(value).__name__}")
    return list(value)


def _text(value: Any, path: Path) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    raise DataError(f"{path}: class names should be strings, found {type(value).__name__}")
