"""Gradient checking: compare a hand-written backward pass with central finite differences.

In the spirit of Chainer's ``gradient_check.check_backward``. For a function y = f(x_1, ..., x_k) and a
fixed random output gradient dy, the scalar L = sum(y * dy) has dL/dx_i = backward(...)[i]. Each checked
element of each input is nudged by +-eps and

    numerical = (L(x + eps e_j) - L(x - eps e_j)) / (2 eps)

is compared with the analytic value. The error reported for an input is

    max_j |analytic_j - numerical_j| / max(max_j |analytic_j|, max_j |numerical_j|)

over its checked elements: relative to the scale of that input's gradient, so that elements whose gradient
is exactly zero (a dropped unit, a dead branch) neither hide an error nor blow the ratio up.

Central differences in float64 are accurate to about eps^2 (truncation) plus 1e-16 |L| / eps (rounding). The
rounding term is what limits tensors whose gradients are small next to the loss, so the default step is
eps = 1e-5, near the optimum (machine epsilon)^(1/3) ~ 6e-6 that balances the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .backend import get_array_module, to_numpy

Array = Any


@dataclass
class GradcheckResult:
    """Outcome of gradcheck: one relative error per input, and how many elements were checked."""

    errors: list[float]
    checked: list[int]
    sizes: list[int]
    rtol: float
    names: list[str] = field(default_factory=list)

    @property
    def max_error(self) -> float:
        return max(self.errors, default=0.0)

    @property
    def passed(self) -> bool:
        return self.max_error <= self.rtol

    def report(self) -> str:
        """One line per input: name, elements checked, relative error."""
        lines = []
        for name, err, n, size in zip(self.names, self.errors, self.checked, self.sizes):
            mark = "ok" if err <= self.rtol else "FAIL"
            lines.append(f"{mark:4} {name}: {n}/{size} elements, relative error {err:.2e}")
        return "\n".join(lines)


def gradcheck(
    forward: Callable[..., Array],
    backward: Callable[..., Sequence[Array | None]],
    inputs: Sequence[Array],
    grad_output: Array | None = None,
    *,
    eps: float = 1e-5,
    rtol: float = 1e-6,
    max_checks: int | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradcheckResult:
    """Check ``backward`` against central finite differences of ``forward``.

    Args:
        forward: ``forward(*inputs) -> y``, an array (or scalar) depending only on the inputs and on state
            that is the same at every call (reset any random generator inside it).
        backward: ``backward(*inputs, dy) -> (dx_1, ..., dx_k)``, the gradients of sum(y * dy); an entry may
            be None for an input that is not differentiated (it is skipped).
        inputs: float64 arrays. They are perturbed in place and restored, so ``forward`` may also read them
            from elsewhere, such as a model's ``params`` dict.
        grad_output: dy; by default a seeded standard-normal array shaped like y.
        eps: finite-difference step.
        rtol: largest accepted relative error (see the module docstring).
        max_checks: check at most this many elements of each input, chosen at random (seeded) plus the
            element with the largest analytic gradient; None checks every element.
        names: labels for the inputs in the report.
        seed: seeds dy and the choice of elements.
        raise_on_failure: raise AssertionError with the report when an error exceeds rtol.

    Returns:
        A GradcheckResult with one error per differentiated input.
    """
    for i, x in enumerate(inputs):
        if getattr(x, "dtype", None) != np.float64:
            raise ValueError(
                f"gradient checks need float64 inputs (float32 finite differences are too coarse); "
                f"input {i} has dtype {getattr(x, 'dtype', type(x).__name__)}"
            )
    names = list(names) if names is not None else [f"input {i}" for i in range(len(inputs))]
    rng = np.random.default_rng(seed)

    y = forward(*inputs)
    xp = get_array_module(y)
    if grad_output is None:
        grad_output = xp.asarray(rng.standard_normal(np.shape(to_numpy(y))))
    dy = grad_output

    def objective() -> float:
        return float((forward(*inputs) * dy).sum())

    analytic = backward(*inputs, dy)
    if len(analytic) != len(inputs):
        raise ValueError(f"backward returned {len(analytic)} gradients for {len(inputs)} inputs")

    result = GradcheckResult([], [], [], rtol, [])
    for name, x, g in zip(names, inputs, analytic):
        if g is None:
            continue
        if tuple(g.shape) != tuple(x.shape):
            raise ValueError(f"gradient of {name} has shape {tuple(g.shape)}, input has {tuple(x.shape)}")
        g_host = to_numpy(g).reshape(-1)
        if max_checks is None or x.size <= max_checks:
            idx = np.arange(x.size)
        else:
            idx = np.unique(np.append(rng.choice(x.size, max_checks, replace=False), np.abs(g_host).argmax()))
        if not x.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous so it can be perturbed in place")
        flat = x.reshape(-1)  # a view: writes reach x (and whatever else holds it)
        numerical = np.empty(len(idx))
        for k, j in enumerate(idx):
            old = float(flat[j])
            flat[j] = old + eps
            plus = objective()
            flat[j] = old - eps
            minus = objective()
            flat[j] = old
            numerical[k] = (plus - minus) / (2 * eps)
        a = g_host[idx]
        scale = max(np.abs(a).max(initial=0.0), np.abs(numerical).max(initial=0.0))
        diff = np.abs(a - numerical).max(initial=0.0)
        result.errors.append(float(diff / scale) if scale > 0 else float(diff))
        result.checked.append(len(idx))
        result.sizes.append(int(x.size))
        result.names.append(name)

    if raise_on_failure and not result.passed:
        raise AssertionError(f"gradient check failed (rtol {rtol:.0e}):\n{result.report()}")
    return result


def __getattr__(name: str) -> Any:
    if name == "check_backward":  # the checker's second name, kept for one release
        import warnings

        warnings.warn("npvit.gradcheck.check_backward is deprecated: use npvit.gradcheck (the function)",
                      DeprecationWarning, stacklevel=2)
        return gradcheck
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
