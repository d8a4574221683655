"""Weight initializers with Keras' defaults (and timm's, for the timm arrangement), drawn on the host in
float64 from a seeded NumPy generator.

Drawing on the host makes a seed give the same initial weights on every backend and in every dtype; the
arrays are then cast and copied to the backend once.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Initializer = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


def keras_fans(
    shape: tuple[int, ...], input_axes: tuple[int, ...] | None = None, output_axes: tuple[int, ...] | None = None
) -> tuple[int, int]:
    """Fan-in and fan-out as Keras computes them (``compute_fans``).

    With ``input_axes`` and ``output_axes`` (Keras 3.15 and later pass them for ``EinsumDense`` kernels,
    deduced from the einsum equation): fan_in is the product of the input axes' sizes, fan_out that of the
    output axes'. A ``MultiHeadAttention`` query kernel (D, H, d) has input axes (0,) and output axes (1, 2):
    fans (D, H d); the output kernel (H, d, D) has (0, 1) and (2,): fans (H d, D).

    Without them (TensorFlow Keras, Keras up to 3.14, and every 1-D or 2-D kernel), every axis but the last two
    of a kernel of more than two axes counts as a receptive field: the query kernel (D, H, d) then has fan_in
    H * D and fan_out d * D.
    """
    if input_axes is not None and output_axes is not None:
        return math.prod(shape[a] for a in input_axes), math.prod(shape[a] for a in output_axes)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def glorot_uniform(
    fan_shape: tuple[int, ...] | None = None, input_axes: tuple[int, ...] | None = None,
    output_axes: tuple[int, ...] | None = None,
) -> Initializer:
    """Glorot (Xavier) uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), fans from :func:`keras_fans`.

    ``fan_shape`` is the kernel shape as Keras declares it when that differs from the stored shape (npvit
    stores every kernel as a 2-D matrix), ``input_axes`` and ``output_axes`` its axes as Keras 3.15 and later
    pass them; by default the stored shape is used.
    """

    def init(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        fan_in, fan_out = keras_fans(fan_shape or shape, input_axes, output_axes)
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=shape)

    return init


def uniform(limit: float) -> Initializer:
    """U(-limit, limit); Keras' ``Embedding`` default is limit 0.05."""
    return lambda rng, shape: rng.uniform(-limit, limit, size=shape)


def trunc_normal(std: float, bound: float = 2.0) -> Initializer:
    """Normal(0, std) truncated to [-bound, bound] (timm's ``trunc_normal_``, whose bounds are absolute: at std
    0.02 they lie 100 standard deviations out). Entries outside are drawn again, in order, until none is."""

    def init(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        x = rng.normal(0.0, std, size=shape)
        while (outside := np.abs(x) > bound).any():
            x[outside] = rng.normal(0.0, std, size=int(outside.sum()))
        return x

    return init


def normal(std: float) -> Initializer:
    """Normal(0, std) (timm's class token: std 1e-6)."""
    return lambda rng, shape: rng.normal(0.0, std, size=shape)


def zeros(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """All zeros (Keras' bias and LayerNorm-shift default; the paper's class token)."""
    return np.zeros(shape)


def ones(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """All ones (LayerNorm scale)."""
    return np.ones(shape)


def concat_columns(*inits: tuple[Initializer, int]) -> Initializer:
    """Initialise a matrix as side-by-side column blocks, each with its own initializer and width.

    Used for the fused query/key/value kernel, which Keras initialises as three separate kernels.
    """

    def init(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate([f(rng, (shape[0], width)) for f, width in inits], axis=1)

    return init


def he_normal(fan_in: int) -> Initializer:
    """Normal(0, sqrt(2 / fan_in)): He et al.'s rule for layers followed by a ReLU (torch's
    ``kaiming_normal_`` with its defaults, which CCT's convolutions use)."""
    std = math.sqrt(2.0 / fan_in)
    return lambda rng, shape: rng.normal(0.0, std, size=shape)
