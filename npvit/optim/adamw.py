"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019), in the conventions the Keras example
has been run with.

For each parameter p with gradient g, at step t = 1, 2, ...:

    g  <- g * min(1, clip_norm / ||G||)                  optional clipping by the global norm of all gradients
    p  <- p - lr * wd * p      (decay_convention "keras": Keras 3 and PyTorch; the default)
    p  <- p - wd * p           (decay_convention "tfa": TensorFlow Addons, used by the 2021 example)
    m  <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
    epsilon_convention "keras":    p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    epsilon_convention "pytorch":  p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

The two epsilon conventions differ only in where eps meets the bias correction (Keras adds it to the raw
sqrt(v), PyTorch to the corrected one). Decay happens before the Adam step, as in all three libraries.
Parameters are updated in place, so arrays held elsewhere (a model's ``params``) see the new values.

A step whose global gradient norm ||G|| is not finite changes nothing: parameters and moments keep their
values, and the caller, who gets the norm back, must stop. With a model's parameters (a FlatDict: every
parameter a view into one flat buffer) the whole update is one pass over four flat arrays: one fused kernel
on CuPy, cache-sized pieces shared out among threads on NumPy. On CuPy nothing in ``step`` waits for the
device: the norm, the clipping factor and the finite check stay there.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..backend import get_array_module, to_numpy
from .flat import FlatDict
from ..parallel import available_cores, parallel_map

Array = Any
DECAY_CONVENTIONS = ("keras", "tfa")
EPSILON_CONVENTIONS = ("keras", "pytorch")
_CHUNK = 1 << 16  # NumPy: elements per piece of the update; its temporaries stay in the CPU cache


class AdamW:
    """AdamW over a dict of named arrays.

    Args:
        params: name -> array, updated in place by ``step``; a model's ``params`` (a FlatDict) gets the
            one-pass update, any other dict one update per array.
        lr: learning rate; may be changed between steps (``opt.lr = ...``) for a schedule.
        weight_decay: decoupled decay coefficient (0 turns AdamW into Adam).
        beta1, beta2, epsilon: Adam's moment decay rates and stabiliser (Keras defaults).
        decay_convention: "keras" (p -= lr*wd*p, Keras 3 and PyTorch) or "tfa" (p -= wd*p).
        epsilon_convention: "keras" or "pytorch" (see the module docstring).
        exclude_from_decay: names of parameters that get no weight decay (e.g. ``model.no_decay_names()``).
        clip_norm: if set, gradients are scaled so that their global L2 norm is at most this.
    """

    def __init__(
        self,
        params: Mapping[str, Array],
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-7,
        decay_convention: str = "keras",
        epsilon_convention: str = "keras",
        exclude_from_decay: Iterable[str] = (),
        clip_norm: float | None = None,
    ) -> None:
        if decay_convention not in DECAY_CONVENTIONS:
            raise ValueError(f"decay_convention must be one of {DECAY_CONVENTIONS}, got {decay_convention!r}")
        if epsilon_convention not in EPSILON_CONVENTIONS:
            raise ValueError(
                f"epsilon_convention must be one of {EPSILON_CONVENTIONS}, got {epsilon_convention!r}"
            )
        if not lr >= 0 or not weight_decay >= 0 or not math.isfinite(lr) or not math.isfinite(weight_decay):
            raise ValueError(f"AdamW lr and weight_decay must be finite and >= 0, got lr={lr!r}, "
                             f"weight_decay={weight_decay!r}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"AdamW betas must be in [0, 1), got beta1={beta1!r}, beta2={beta2!r}")
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise ValueError(f"AdamW epsilon must be positive and finite, got {epsilon!r}")
        if clip_norm is not None and not (clip_norm > 0 and math.isfinite(clip_norm)):
            raise ValueError(f"clip_norm must be positive and finite, or None, got {clip_norm!r}")
        not_contiguous = sorted(n for n, p in params.items() if not p.flags.c_contiguous)
        if not_contiguous:
            raise ValueError(f"AdamW updates parameters in place and needs C-contiguous arrays; "
                             f"{not_contiguous[:5]} are not (make them with ascontiguousarray first)")
        unknown = sorted(set(exclude_from_decay) - set(params))
        if unknown:
            raise ValueError(f"exclude_from_decay names parameters that do not exist: {unknown}")

        self.params = params
        self.lr, self.weight_decay = lr, weight_decay
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
        self.decay_convention, self.epsilon_convention = decay_convention, epsilon_convention
        self.exclude_from_decay = frozenset(exclude_from_decay)
        self.clip_norm = clip_norm
        self.step_count = 0
        self.xp = get_array_module(*params.values())
        # The moments always live in flat buffers laid out like the parameters.
        template = params if isinstance(params, FlatDict) else FlatDict.zeros(
            self.xp, {n: p.shape for n, p in params.items()}, _common_dtype(params))
        self.m, self.v = template.zeros_like(), template.zeros_like()
        self._grads: FlatDict | None = None  # a flat copy of gradients that do not come as a FlatDict
        self._decayed: Array | None = None  # CuPy with exclusions: 1 where a parameter decays, else 0
        self._fused: Callable[..., None] | None = None
        self._scalars: Array | None = None  # CuPy, captured steps: the step's scalars, on the device

    # ---- the update --------------------------------------------------------------------------------------
    def step(self, grads: Mapping[str, Array]) -> Array:
        """Apply one update from ``grads`` (same keys as params).

        Returns the global gradient norm before clipping as a 0-d array of the backend (a NumPy scalar on
        NumPy; worth logging; read it with ``float()``, which on CuPy waits for the device). When it is not
        finite, nothing is updated.
        """
        missing = sorted(set(self.params) - set(grads))
        if missing:
            raise ValueError(f"grads is missing parameters: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        g = self._flat_grads(grads)
        norm = global_norm([g.flat])
        if self._scalars is not None:  # a captured step: the scalars load_step_scalars wrote, read on the device
            buf = self._scalars
            decay = (buf[7] if self.exclude_from_decay else buf[6]) if self.weight_decay else 0.0
            self._step_device(g, norm, decay, tuple(buf[i] for i in range(6)))
            return norm
        b1, b2, step, eps, decay, scalars = self._step_scalars(g.flat.dtype)
        if self.xp is np:
            norm_host = float(norm)
            if not math.isfinite(norm_host):
                return norm  # nothing changes; the caller stops the run
            scale = None
            if self.clip_norm is not None and norm_host > self.clip_norm:
                scale = g.flat.dtype.type(self.clip_norm / norm_host)
            self._step_numpy(g, decay, scale, scalars)
        else:
            self._step_device(g, norm, decay, scalars)
        self.step_count = step
        return norm

    def use_device_scalars(self) -> None:
        """Read the learning-rate terms and bias corrections of every later step from a small device buffer
        that ``load_step_scalars`` fills before the step (CuPy, flat parameters): what a CUDA graph needs, whose
        kernels keep the scalars they were captured with. ``step`` then no longer counts steps."""
        if self.xp is np or not isinstance(self.params, FlatDict):
            raise ValueError("device scalars are for CuPy and a model's (flat) parameters")
        self._scalars = self.xp.zeros(8, dtype=self.params.flat.dtype)

    def load_step_scalars(self) -> None:
        """Count the next step and write its scalars into the device buffer (one small fill each: nothing
        waits, nothing is uploaded). Values as ``step`` computes them, rounded the same way."""
        typed = self.params.flat.dtype.type
        _, _, step, _, decay, scalars = self._step_scalars(self.params.flat.dtype)
        for i, value in enumerate((*scalars, typed(1.0 - decay), typed(decay))):
            self._scalars[i] = value
        self.step_count = step

    def _step_scalars(self, dtype: Any) -> tuple:
        """(b1, b2, step number, eps, decay, the kernel's six scalars) of the next step."""
        b1, b2 = self.beta1, self.beta2
        step = self.step_count + 1
        step_size = self.lr * math.sqrt(1.0 - b2**step) / (1.0 - b1**step)
        eps = self.epsilon
        if self.epsilon_convention == "pytorch":
            # sqrt(v / (1 - b2^t)) + eps = (sqrt(v) + eps sqrt(1 - b2^t)) / sqrt(1 - b2^t): one formula for both
            eps *= math.sqrt(1.0 - b2**step)
        decay = self.weight_decay * (self.lr if self.decay_convention == "keras" else 1.0)
        typed = np.dtype(dtype).type  # every scalar rounded once to the parameters' dtype
        scalars = tuple(typed(c) for c in (b1, 1.0 - b1, b2, 1.0 - b2, eps, step_size))
        return b1, b2, step, eps, decay, scalars

    def _flat_grads(self, grads: Mapping[str, Array]) -> FlatDict:
        """The gradients as a FlatDict laid out like the moments: the model's own when it is one, else a copy."""
        if self.m.same_layout(grads):
            return grads  # type: ignore[return-value]
        if self._grads is None:
            self._grads = self.m.zeros_like()
        for name in self.params:
            self._grads[name] = grads[name]
        return self._grads

    def _step_numpy(self, g: FlatDict, decay: float, scale: Any, scalars: tuple) -> None:
        """Cache-sized pieces of every (flat) array, shared out among threads, one decay factor per piece."""
        flat = isinstance(self.params, FlatDict)
        runs: list[tuple[tuple, int, int, float | None]] = []  # (p, g, m, v arrays), start, stop, decay factor
        for name, offset, shape in self.m.layout:
            stop = offset + math.prod(shape)
            factor = 1.0 - decay if decay and name not in self.exclude_from_decay else None
            if not flat:  # one run per parameter, over its own arrays
                arrays = tuple(a.reshape(-1) for a in (self.params[name], g[name], self.m[name], self.v[name]))
                runs.append((arrays, 0, stop - offset, factor))
            elif runs and runs[-1][3] == factor and runs[-1][2] == offset:  # extend the run with the same decay
                runs[-1] = (runs[-1][0], runs[-1][1], stop, factor)
            else:
                runs.append(((self.params.flat, g.flat, self.m.flat, self.v.flat), offset, stop, factor))
        typed = g.flat.dtype.type
        pieces = [(*(a[start:min(stop, start + _CHUNK)] for a in arrays), None if factor is None else typed(factor))
                  for arrays, lo, stop, factor in runs for start in range(lo, stop, _CHUNK)]
        parallel_map(lambda p, gg, m, v, factor: adamw_update(np, p, gg, m, v, factor, scale, *scalars), pieces,
                     available_cores())

    def _step_device(self, g: FlatDict, norm: Array, decay: float, scalars: tuple) -> None:
        """One fused kernel over the flat arrays (one per parameter when params is not a FlatDict)."""
        xp = self.xp
        if self._fused is None:
            self._fused = _fused_update(xp)
        typed = g.flat.dtype.type
        ok = xp.isfinite(norm)  # 0-d: stays on the device
        scale: Any = None
        if self.clip_norm is not None:  # min(1, clip / norm), computed on the device
            scale = xp.minimum(typed(1.0), typed(self.clip_norm) / norm)
        on_device = not isinstance(decay, (int, float))  # a captured step's: 1 - decay, or decay with exclusions
        if isinstance(self.params, FlatDict):
            factor: Any = (decay if on_device else typed(1.0 - decay)) if on_device or decay else None
            if (on_device or decay) and self.exclude_from_decay:
                if self._decayed is None:
                    self._decayed = self.m.zeros_like()
                    for name in self.params:
                        if name not in self.exclude_from_decay:
                            self._decayed[name] = 1
                factor = typed(1.0) - (decay if on_device else typed(decay)) * self._decayed.flat
            self._fused(self.params.flat, g.flat, self.m.flat, self.v.flat, factor, scale, *scalars, ok)
            return
        for name, p in self.params.items():
            factor = typed(1.0 - decay) if decay and name not in self.exclude_from_decay else None
            self._fused(p, g[name], self.m[name], self.v[name], factor, scale, *scalars, ok)

    # ---- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of the step count and both moments (``m/<name>``, ``v/<name>``), for checkpoints."""
        state = {"step": np.asarray(self.step_count, dtype=np.int64)}
        m, v = to_numpy(self.m.flat), to_numpy(self.v.flat)  # one copy each from the device
        for name, offset, shape in self.m.layout:
            size = math.prod(shape)
            state[f"m/{name}"] = m[offset:offset + size].reshape(shape).copy()
            state[f"v/{name}"] = v[offset:offset + size].reshape(shape).copy()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by ``state_dict``, exactly; shapes are checked against the parameters."""
        if "step" not in state:
            raise ValueError("optimizer state has no 'step' entry; was it written by AdamW.state_dict()?")
        for name, p in self.params.items():
            for kind in ("m", "v"):
                key = f"{kind}/{name}"
                if key not in state:
                    raise ValueError(f"optimizer state has no entry {key!r}; it belongs to a different model")
                value = np.asarray(state[key])
                if value.shape != tuple(p.shape):
                    raise ValueError(f"optimizer state {key!r} has shape {value.shape}, parameter has {p.shape}")
        step = np.asarray(state["step"])
        if step.shape != () or not np.issubdtype(step.dtype, np.integer) or int(step) < 0:
            raise ValueError(f"optimizer state 'step' must be a non-negative integer, got {state['step']!r}")
        for name, p in self.params.items():
            for kind, store in (("m", self.m), ("v", self.v)):
                store[name] = self.xp.asarray(np.asarray(state[f"{kind}/{name}"]), dtype=p.dtype)
        self.step_count = int(step)


def adamw_update(xp: Any, p: Array, g: Array, m: Array, v: Array, decay_factor: Any, grad_scale: Any,
                 b1: Any, c1: Any, b2: Any, c2: Any, eps: Any, step_size: Any, ok: Array | None = None) -> None:
    """One AdamW step on (pieces of) a parameter, in place:

        g' = grad_scale g;  m = b1 m + c1 g';  v = b2 v + c2 g'^2      (c1 = 1 - b1, c2 = 1 - b2)
        p  = decay_factor p - step_size m / (sqrt(v) + eps)

    Scalars come as scalars of the parameters' dtype, c1 and c2 rounded from the exact 1 - b (``decay_factor``
    may also be an array of factors, ``grad_scale`` a 0-d array; None for either means 1).

    NumPy callers check the norm on the host and pass ``ok=None``: the arithmetic then runs in place on
    cache-sized pieces with one temporary. On CuPy ``ok`` (a 0-d boolean) keeps every array unchanged when
    False, and the same arithmetic is written with operators, ufuncs and ``copyto`` only, so that
    ``cupy.fuse`` compiles it into one kernel. The same operations, not the same rounding: NVRTC contracts a
    multiply followed by an add into a fused multiply-add (one rounding where NumPy makes two), so the GPU's
    weights agree with NumPy's to about one unit in the last place per step, not bit for bit.
    """
    gs = g if grad_scale is None else g * grad_scale
    if ok is None:  # NumPy: the same arithmetic in place, with one temporary (a third fewer passes)
        if decay_factor is not None:
            p *= decay_factor
        m *= b1
        tmp = gs * c1
        m += tmp  # m = b1 m + c1 g'
        v *= b2
        xp.multiply(gs, gs, out=tmp)
        tmp *= c2
        v += tmp  # v = b2 v + c2 g'^2
        xp.sqrt(v, out=tmp)
        tmp += eps
        xp.divide(m, tmp, out=tmp)
        tmp *= step_size
        p -= tmp  # p = decay_factor p - step_size m / (sqrt(v) + eps)
        return
    m_new = m * b1 + gs * c1
    v_new = v * b2 + (gs * gs) * c2
    update = m_new / (xp.sqrt(v_new) + eps) * step_size
    xp.copyto(p, (p if decay_factor is None else p * decay_factor) - update, where=ok)
    xp.copyto(m, m_new, where=ok)
    xp.copyto(v, v_new, where=ok)


def _fused_update(xp: Any) -> Callable[..., None]:
    """adamw_update compiled by ``xp.fuse`` into one kernel (CuPy); made once per array module."""
    if xp not in _FUSED:
        def update(p: Array, g: Array, m: Array, v: Array, decay_factor: Any, grad_scale: Any, b1: Any, c1: Any,
                   b2: Any, c2: Any, eps: Any, step_size: Any, ok: Array) -> None:
            adamw_update(xp, p, g, m, v, decay_factor, grad_scale, b1, c1, b2, c2, eps, step_size, ok)

        _FUSED[xp] = xp.fuse(kernel_name="npvit_adamw")(update)
    return _FUSED[xp]


_FUSED: dict[Any, Callable[..., None]] = {}


def global_norm(arrays: Iterable[Array]) -> Array:
    """sqrt(sum of squares) over every element of every array, as a 0-d array of their backend (a NumPy
    scalar on NumPy).

    Each array's sum of squares is one pass in the array's own dtype, with no float64 copy of the gradients
    and no temporary: a BLAS dot product on NumPy, one fused reduction kernel on CuPy. Nothing is copied to
    the host.
    """
    total = None
    for a in arrays:
        xp = get_array_module(a)
        flat = a.reshape(-1)
        square = flat @ flat if xp is np else _fused_sum_of_squares(xp)(flat)
        total = square if total is None else total + square
    if total is None:
        raise ValueError("global_norm of no arrays")
    return get_array_module(total).sqrt(total)


def _fused_sum_of_squares(xp: Any) -> Callable[[Array], Array]:
    """sum(x * x) as one reduction kernel (``xp.fuse``); made once per array module."""
    if xp not in _FUSED_SQUARES:
        _FUSED_SQUARES[xp] = xp.fuse(kernel_name="npvit_sum_of_squares")(lambda x: xp.sum(x * x))
    return _FUSED_SQUARES[xp]


_FUSED_SQUARES: dict[Any, Callable[[Array], Array]] = {}


def _common_dtype(params: Mapping[str, Array]) -> Any:
    dtypes = {p.dtype for p in params.values()}
    if len(dtypes) != 1:
        raise ValueError(f"AdamW needs parameters of one dtype, got {sorted(map(str, dtypes))}")
    return dtypes.pop()
