"""One-kernel forms of the augmentation's per-pixel work on a GPU: ``xp.fuse`` once per (module, name, variant).

On CuPy every array operation is a kernel launch of a few microseconds of host time, whatever its size; the
augmentation of a batch is a few hundred of them when written op by op. The device paths of
``trivial_augment``, ``affine`` and ``augment`` compute what their NumPy paths compute, operation for
operation, inside fused kernels, with the gathers (``take``) between them. The test suite's fake CuPy runs a
fused function op by op and counts it as one launch, so the fake checks the device paths against the NumPy
paths element by element; on a GPU, NVRTC may contract a multiply and an add into one fused multiply-add (one
rounding instead of two), as in npvit.kernels.fused. Inside a fused function nothing may read an array's
shape, index it or branch on its values: the variants (dtype, channel count, folding) are chosen outside.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Hashable

_KERNELS: dict[tuple, Callable] = {}


def fused(xp: ModuleType, name: str, variant: Hashable, make: Callable[[], Callable]) -> Callable:
    """``make()`` compiled by ``xp.fuse`` into one kernel named ``npvit_<name>``, made once per (module, name,
    variant): ``variant`` names what ``make`` closes over (a dtype, a flag)."""
    key = (xp, name, variant)
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _KERNELS[key] = xp.fuse(kernel_name=f"npvit_{name}")(make())
    return kernel


def grid(xp: ModuleType, size: int, axis: int, ndim: int, dtype: Any) -> Any:
    """0, 1, ..., size - 1 along ``axis`` of an ``ndim``-dimensional array (1 elsewhere), of ``dtype``, made on
    the device once (a shared constant: never write to it)."""
    import numpy

    from ..backend import cached_constant

    shape = [1] * ndim
    shape[axis] = size
    return cached_constant(xp, ("data.grid", size, axis, ndim), lambda: numpy.arange(size).reshape(shape), dtype)
