"""WeightEMA: an exponential moving average of a model's weights, for evaluation.

After optimizer step t = 0, 1, 2, ... (0-based, the step's index in the run) the average e of every parameter
p moves towards p's new value:

    d_t = min(decay, (1 + t) / (10 + t))                     the decay at step t, with a warmup
    e   <- d_t e + (1 - d_t) p                               every element of every parameter; e_init = p_init

The warmup keeps the first steps from being dominated by the random initial weights: d_0 = 0.1, d_10 = 0.55,
d_90 = 0.91, and d_t reaches ``decay`` once t >= (10 decay - 1) / (1 - decay) (8,991 steps for 0.999). It is
the warmup of TensorFlow's ``ExponentialMovingAverage`` (its ``num_updates``); timm's ``ModelEmaV2`` uses the
fixed decay from the start, and ``ModelEmaV3``'s optional warmup is ``1 - (1 + t / gamma) ** -power``. The
average is taken over the parameters only (a ViT has no buffers such as batch-norm statistics).

The average lives in one flat buffer laid out like the model's (``model.params.flat``, a FlatDict): the update
is one pass over two flat arrays, in place on NumPy (cache-sized pieces through one small temporary; about
14 ms for the Keras model's 21.8M parameters on one core) and one fused kernel on CuPy. ``d_t`` is a host
float computed from the host step; a step whose update AdamW skipped (its gradient norm was not finite) is
skipped here too: on NumPy by the host flag, on CuPy by the device flag inside the kernel, so nothing waits
for the device.

To evaluate the average, ``applied_to(model.params)`` swaps the two buffers' contents for the duration of a
``with`` block and swaps them back, exactly (element copies): on NumPy in cache-sized pieces, without a second
model-sized buffer; on a GPU as three whole-buffer copies through one temporary (three launches in all).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..backend import get_array_module, to_numpy
from .flat import FlatDict

Array = Any
_CHUNK = 1 << 16  # NumPy update and swaps: elements per piece; the one temporary stays in the CPU cache


def check_decay(decay: Any) -> float:
    """``decay`` as a float if it is a number in (0, 1), else ValueError saying what to pass."""
    if not isinstance(decay, (int, float, np.floating, np.integer)) or not math.isfinite(decay) or \
            not 0 < decay < 1:  # True is 1: refused too
        raise ValueError(f"the EMA decay must be a number in (0, 1) such as 0.999 (an average over about "
                         f"1 / (1 - decay) steps), got {decay!r}")
    return float(decay)


def decay_at(decay: float, step: int) -> float:
    """d_t = min(decay, (1 + t) / (10 + t)) for the 0-based optimizer step t (the warmup; module docstring)."""
    return min(decay, (1.0 + step) / (10.0 + step))


def ema_update_reference(average: Mapping[str, Array], params: Mapping[str, Array], decay: float) -> None:
    """e <- d e + (1 - d) p for each named array, one parameter at a time (the plain form WeightEMA.update is
    tested against). ``decay`` is d_t, already warmed up; d and 1 - d are rounded once to each array's dtype."""
    for name, p in params.items():
        e = average[name]
        typed = e.dtype.type
        e[...] = e * typed(decay) + p * typed(1.0 - decay)


class WeightEMA:
    """The moving average of a model's parameters (a FlatDict), in a flat buffer of the same layout.

    Args:
        params: the model's ``params``; the average starts as a copy of them (same dtype and backend).
        decay: the long-run decay, in (0, 1): the average spans about 1 / (1 - decay) steps (1,000 for 0.999).

    Attributes:
        weights: name -> view into the average's flat buffer (``weights.flat``), as ``params`` are.
    """

    def __init__(self, params: FlatDict, decay: float) -> None:
        if not isinstance(params, FlatDict):
            raise TypeError(f"WeightEMA averages a model's params (a FlatDict), got {type(params).__name__}")
        self.decay = check_decay(decay)
        self.xp = get_array_module(params.flat)
        self.weights = FlatDict(params.flat.copy(), params.layout)
        self._fused: Callable[..., None] | None = None
        self._always: Array | None = None  # CuPy: a device True for updates given no finite flag
        self._tmp: np.ndarray | None = None  # NumPy: the update's one temporary, a piece long
        self._scalars: Array | None = None  # CuPy, captured steps: d_t and 1 - d_t on the device

    # ---- the update --------------------------------------------------------------------------------------
    def update(self, params_flat: Array, step: int, finite: Array | None = None) -> None:
        """e <- d_t e + (1 - d_t) p over the flat buffers, with d_t = decay_at(decay, step).

        ``params_flat`` is ``model.params.flat`` after optimizer step ``step`` (0-based). ``finite`` is the
        step's 0-d boolean flag (on the backend's device): when False the update changes nothing, as AdamW's
        did not. NumPy reads the flag on the host (free there); CuPy passes it to the kernel.
        """
        e = self.weights.flat
        if params_flat.shape != e.shape or params_flat.dtype != e.dtype:
            raise ValueError(f"params_flat has shape {params_flat.shape} and dtype {params_flat.dtype}; the average "
                             f"has {e.shape} and {e.dtype}")
        if self._scalars is not None:  # a captured step's: what load_step_scalars wrote
            d_typed, c_typed = self._scalars[0], self._scalars[1]
        else:
            d_typed, c_typed = self._step_scalars(step)
        if self.xp is np:
            if finite is not None and not bool(finite):
                return
            if self._tmp is None:
                self._tmp = np.empty(min(e.size, _CHUNK), dtype=e.dtype)
            for start in range(0, e.size, _CHUNK):  # cache-sized pieces through the one small temporary
                stop = min(e.size, start + _CHUNK)
                piece, tmp = e[start:stop], self._tmp[:stop - start]
                piece *= d_typed
                np.multiply(params_flat[start:stop], c_typed, out=tmp)
                piece += tmp  # e = e d + p c
            return
        if self._fused is None:
            self._fused = _fused_update(self.xp)
        if finite is None:
            if self._always is None:
                self._always = self.xp.ones((), dtype=bool)
            finite = self._always
        self._fused(e, params_flat, d_typed, c_typed, finite)

    def _step_scalars(self, step: int) -> tuple[Any, Any]:
        d = decay_at(self.decay, step)
        typed = self.weights.flat.dtype.type
        return typed(d), typed(1.0 - d)  # rounded once, as ema_update_reference rounds them

    def use_device_scalars(self) -> None:
        """Read d_t and 1 - d_t of every later update from a device buffer that ``load_step_scalars`` fills
        (CuPy): what a CUDA graph needs, whose kernels keep the scalars they were captured with."""
        if self.xp is np:
            raise ValueError("device scalars are for CuPy")
        self._scalars = self.xp.zeros(2, dtype=self.weights.flat.dtype)

    def load_step_scalars(self, step: int) -> None:
        """Write step ``step``'s d_t and 1 - d_t into the device buffer (two small fills, no upload)."""
        for i, value in enumerate(self._step_scalars(step)):
            self._scalars[i] = value

    # ---- evaluation --------------------------------------------------------------------------------------
    @contextmanager
    def applied_to(self, params: FlatDict) -> Iterator[None]:
        """Inside the block, ``params`` hold the average (and the average the raw weights); after it, both
        hold what they held before, bit for bit, even if the block raised."""
        if not self.weights.same_layout(params):
            raise ValueError("the parameters are not laid out like the average's: they belong to another model")
        swap_contents(params.flat, self.weights.flat)
        try:
            yield
        finally:
            swap_contents(params.flat, self.weights.flat)

    # ---- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of the average, one array per parameter name, for checkpoints."""
        flat = to_numpy(self.weights.flat)  # one copy from the device
        return {name: flat[offset:offset + math.prod(shape)].reshape(shape).copy()
                for name, offset, shape in self.weights.layout}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore an average saved by ``state_dict``, exactly. ValueError, naming the entry, unless every
        parameter has an entry of its shape holding finite floats."""
        for name, e in self.weights.items():
            if name not in state:
                raise ValueError(f"the EMA weights have no entry {name!r}; they belong to a different model")
            value = np.asarray(state[name])
            if value.shape != tuple(e.shape):
                raise ValueError(f"the EMA weights {name!r} have shape {value.shape}, the parameter has "
                                 f"{tuple(e.shape)}")
            if value.dtype.kind != "f":
                raise ValueError(f"the EMA weights {name!r} are {value.dtype}, not floats")
            if not np.isfinite(value).all():
                raise ValueError(f"the EMA weights {name!r} hold non-finite values")
        for name, e in self.weights.items():
            self.weights[name] = self.xp.asarray(np.asarray(state[name]), dtype=e.dtype)


def ema_kernel(xp: Any, e: Array, p: Array, d: Any, c: Any, ok: Array) -> None:
    """The CuPy form of the update, written with operators and ``copyto`` only so that ``cupy.fuse`` compiles
    it into one kernel: e = d e + c p where ``ok`` (a 0-d boolean), e unchanged elsewhere. The same operations
    as the NumPy form, not the same rounding: NVRTC contracts ``e * d + p * c`` into a fused multiply-add (one
    rounding where NumPy makes two), so the two agree to about one unit in the last place per step."""
    xp.copyto(e, e * d + p * c, where=ok)


def _fused_update(xp: Any) -> Callable[..., None]:
    """ema_kernel compiled by ``xp.fuse`` into one kernel; made once per array module."""
    if xp not in _FUSED:
        def update(e: Array, p: Array, d: Any, c: Any, ok: Array) -> None:
            ema_kernel(xp, e, p, d, c, ok)

        _FUSED[xp] = xp.fuse(kernel_name="npvit_ema")(update)
    return _FUSED[xp]


_FUSED: dict[Any, Callable[..., None]] = {}


def swap_contents(a: Array, b: Array) -> None:
    """Exchange the elements of two 1-D arrays of one shape, dtype and backend (plain copies: every bit is
    kept): on NumPy in pieces of at most ``_CHUNK`` elements through one small temporary, on CuPy in three
    whole-buffer copies (a piece at a time would be three launches per piece). Nothing is read back."""
    if a.shape != b.shape or a.dtype != b.dtype or a.ndim != 1:
        raise ValueError(f"cannot swap arrays of shapes {a.shape}, {b.shape} and dtypes {a.dtype}, {b.dtype}")
    xp = get_array_module(a)
    if xp is not np:  # a GPU: three copies of the whole buffers (three launches), not three per piece
        tmp = a.copy()  # (n,)
        xp.copyto(a, b)
        xp.copyto(b, tmp)
        return
    n = a.shape[0]
    tmp = xp.empty(min(n, _CHUNK), dtype=a.dtype)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        t = tmp[:stop - start]
        xp.copyto(t, a[start:stop])
        xp.copyto(a[start:stop], b[start:stop])
        xp.copyto(b[start:stop], t)
