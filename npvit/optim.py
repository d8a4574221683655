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
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from .backend import get_array_module, to_numpy
from .parallel import available_cores, parallel_map

Array = Any
DECAY_CONVENTIONS = ("keras", "tfa")
EPSILON_CONVENTIONS = ("keras", "pytorch")


class AdamW:
    """AdamW over a dict of named arrays.

    Args:
        params: name -> array, updated in place by ``step``.
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
        if not lr >= 0 or not weight_decay >= 0:
            raise ValueError(f"AdamW lr and weight_decay must be >= 0, got lr={lr!r}, weight_decay={weight_decay!r}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"AdamW betas must be in [0, 1), got beta1={beta1!r}, beta2={beta2!r}")
        if not epsilon > 0:
            raise ValueError(f"AdamW epsilon must be positive, got {epsilon!r}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {clip_norm!r}")
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
        xp = get_array_module(*params.values())
        # NumPy: pieces of 64 Ki elements spread over the cores; CuPy: whole arrays, one kernel each.
        self.chunk = 1 << 16 if xp is np else max([1, *(int(p.size) for p in params.values())])
        self.threads = available_cores() if xp is np else 1
        self.m = {n: get_array_module(p).zeros_like(p) for n, p in params.items()}
        self.v = {n: get_array_module(p).zeros_like(p) for n, p in params.items()}

    def step(self, grads: Mapping[str, Array]) -> float:
        """Apply one update from ``grads`` (same keys as params). Returns the global gradient norm before
        clipping, which is worth logging."""
        missing = sorted(set(self.params) - set(grads))
        if missing:
            raise ValueError(f"grads is missing parameters: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        norm = global_norm(grads.values())
        scale = 1.0
        if self.clip_norm is not None and norm > self.clip_norm:
            scale = self.clip_norm / norm

        self.step_count += 1
        t, b1, b2 = self.step_count, self.beta1, self.beta2
        step_size = self.lr * math.sqrt(1.0 - b2**t) / (1.0 - b1**t)
        eps = self.epsilon
        if self.epsilon_convention == "pytorch":
            # sqrt(v / (1 - b2^t)) + eps = (sqrt(v) + eps sqrt(1 - b2^t)) / sqrt(1 - b2^t): one formula for both
            eps *= math.sqrt(1.0 - b2**t)
        decay = self.weight_decay * (self.lr if self.decay_convention == "keras" else 1.0)

        # Work on cache-sized pieces of each (flattened) parameter: the temporaries then stay in the CPU's
        # cache instead of streaming through memory, and on NumPy the pieces are shared out among threads.
        jobs = []
        for name, p in self.params.items():
            factor = 1.0 - decay if decay and name not in self.exclude_from_decay else 1.0
            flat = [a.reshape(-1) for a in (p, grads[name], self.m[name], self.v[name])]
            for start in range(0, p.size, self.chunk):
                jobs.append((*(a[start:start + self.chunk] for a in flat), factor))
        parallel_map(lambda p, g, m, v, factor: adamw_update(p, g, m, v, scale, factor, b1, b2, eps, step_size),
                     jobs, self.threads)
        return norm

    # ---- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of the step count and both moments (``m/<name>``, ``v/<name>``), for checkpoints."""
        state = {"step": np.asarray(self.step_count, dtype=np.int64)}
        for name in self.params:
            state[f"m/{name}"] = to_numpy(self.m[name]).copy()
            state[f"v/{name}"] = to_numpy(self.v[name]).copy()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by ``state_dict``, exactly; shapes are checked against the parameters."""
        if "step" not in state:
            raise ValueError("optimizer state has no 'step' entry; was it written by AdamW.state_dict()?")
        for name, p in self.params.items():
            for kind, store in (("m", self.m), ("v", self.v)):
                key = f"{kind}/{name}"
                if key not in state:
                    raise ValueError(f"optimizer state has no entry {key!r}; it belongs to a different model")
                value = np.asarray(state[key])
                if value.shape != tuple(p.shape):
                    raise ValueError(f"optimizer state {key!r} has shape {value.shape}, parameter has {p.shape}")
                store[name][...] = get_array_module(p).asarray(value, dtype=p.dtype)
        self.step_count = int(np.asarray(state["step"]))


def adamw_update(p: Array, g: Array, m: Array, v: Array, grad_scale: float, decay_factor: float, b1: float,
                 b2: float, eps: float, step_size: float) -> None:
    """One AdamW step on (pieces of) a parameter, in place:
    p *= decay_factor; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= step_size m / (sqrt(v) + eps)."""
    xp = get_array_module(p)
    t = p.dtype.type
    if grad_scale != 1.0:
        g = g * t(grad_scale)
    if decay_factor != 1.0:
        p *= t(decay_factor)
    m *= t(b1)
    tmp = g * t(1.0 - b1)
    m += tmp
    v *= t(b2)
    xp.multiply(g, g, out=tmp)
    tmp *= t(1.0 - b2)
    v += tmp
    xp.sqrt(v, out=tmp)
    tmp += t(eps)
    xp.divide(m, tmp, out=tmp)
    tmp *= t(step_size)
    p -= tmp


def global_norm(arrays: Iterable[Array]) -> float:
    """sqrt(sum of squares) over every element of every array.

    Each array's sum of squares is one BLAS dot product in the array's own dtype (a single pass, no float64
    copy of the gradients); the per-array sums are added in Python floats.
    """
    total = 0.0
    for a in arrays:
        flat = a.reshape(-1)
        total = total + flat @ flat  # stays on the device until the one float() below
    return math.sqrt(float(total))
