"""A dataset moved to the backend once, and batches gathered where the arrays are."""

from __future__ import annotations

from typing import Any

import numpy

from ..backend import Backend, get_backend
from ..kernels.cross_entropy import check_labels


class DeviceDataset:
    """Images and labels moved to a backend once, and batches gathered there.

    ``DeviceDataset(backend, x_train, y_train, num_classes)`` uploads the uint8 images (CIFAR's 50,000 are
    150 MB) and the labels once, after checking the labels on the host (npvit.kernels.cross_entropy.check_labels,
    when ``num_classes`` is given); ``batch(indices)`` then returns ``(images, labels)`` for host integer
    indices, gathered on the device: only the indices (8 bytes per image) cross the bus at each step. On NumPy
    the arrays stay where they are and ``batch`` is plain fancy indexing, the same arrays as ``x[indices]``,
    ``y[indices]``.
    """

    def __init__(self, backend: "Backend | str", images: numpy.ndarray, labels: numpy.ndarray,
                 num_classes: int | None = None) -> None:
        backend = get_backend(backend)
        images, labels = numpy.asarray(images), numpy.asarray(labels)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if num_classes is not None:
            check_labels(labels, num_classes)
        self.backend = backend
        self.images = backend.asarray(images)
        self.labels = backend.asarray(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Any) -> tuple[Any, Any]:
        """(images, labels) at the host integer ``indices``, as arrays of the backend."""
        return take_rows(self.backend, indices, self.images, self.labels)


def take_rows(backend: "Backend | str", indices: Any, *arrays: Any) -> tuple[Any, ...]:
    """The rows at host integer ``indices`` of each of ``arrays``, as arrays of ``backend``, gathered where
    the arrays are. When every array is on the device the indices go up once, for all of them (indexing each
    with the host array would upload it once per array); host arrays are indexed on the host, then moved."""
    backend = get_backend(backend)
    xp = backend.xp
    if xp is numpy or any(isinstance(a, numpy.ndarray) for a in arrays):
        return tuple(backend.asarray(a[indices]) for a in arrays)
    idx = xp.asarray(numpy.asarray(indices, dtype=numpy.int64))  # (n,): the only bytes that cross the bus
    return tuple(xp.take(a, idx, axis=0) for a in arrays)
