"""The compiled CPU tier: Numba loops that make one pass over each row where NumPy makes several.

At width 64 the small model's step is paced by its elementwise kernels, not by its matrix products: NumPy
computes a layer norm, a softmax or a GELU as a chain of whole-array operations, each a pass over memory and
a temporary, while a compiled loop reads each row once, keeps it in registers and writes the results once.
This package holds such loops for float32 NumPy arrays; ``npvit.kernels`` dispatches to them, so the model
code is the same on either tier, and the NumPy kernels stay the reference that every compiled one is tested
equal to (tests/kernels/test_compiled_kernels.py). CuPy arrays and float64 arrays (the gradient checks) never
come here.

The tier: ``NPVIT_KERNELS=numpy|compiled|auto`` (default auto: compiled when Numba imports, else numpy), or
:func:`set_kernel_tier` / :func:`kernel_tier_set` in a program. Numba is imported on the first compiled call,
and each kernel is compiled on its first call and cached on disk (``cache=True``), once per machine.

    jit_layernorm.py   layer norm forward and backward, one pass per row
    jit_softmax.py     softmax forward and backward over the last axis (rows) or the one before (columns)
    jit_gelu.py        tanh GELU forward and backward, one pass
    approx.py          float32 exp2 and tanh as vectorisable polynomials, with their error bounds
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any, Iterator

import numpy

from ...backend import BackendUnavailableError

TIERS = ("numpy", "compiled")
ENV = "NPVIT_KERNELS"
_state: dict[str, Any] = {"set": None, "resolved": None}  # set_kernel_tier's choice; the env's, resolved


def numba_version() -> str | None:
    """Numba's version if it imports and compiles a loop, else None."""
    try:
        numba = importlib.import_module("numba")
        _smoke_test()
    except ImportError as exc:  # not installed, or installed against another NumPy: the NumPy tier
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == "numba"
        _state["why"] = "Numba is not installed: pip install numba" if missing else f"Numba does not import ({exc})"
        return None
    except Exception as exc:  # installed, but unable to compile for this machine: the NumPy tier
        _state["why"] = f"Numba cannot compile here ({type(exc).__name__}: {exc})"
        return None
    return str(numba.__version__)


def _smoke_test() -> None:
    """One tiny compiled softmax (loaded from the disk cache after the first run): a Numba that imports but
    cannot compile for this machine is found here, not in the middle of a training step."""
    if not _state.get("smoke"):
        from . import jit_softmax

        y = jit_softmax.softmax_forward(numpy.zeros((1, 2), numpy.float32), "rows", 1.0, None)
        if not numpy.allclose(y, 0.5):
            raise RuntimeError(f"the compiled softmax of (0, 0) gave {y}")
        _state["smoke"] = True


def _resolve(choice: str) -> str:
    choice = choice.strip().lower() or "auto"
    if choice not in (*TIERS, "auto"):
        raise BackendUnavailableError(
            f"{ENV}={choice!r} is not a kernel tier: set it to numpy, compiled or auto (the default), or unset it")
    if choice == "numpy":
        return "numpy"
    if numba_version() is None:
        if choice == "compiled":
            raise BackendUnavailableError(
                f"{ENV}=compiled, but Numba cannot be used ({_state.get('why', 'not installed')}): pip install "
                f"numba, or set {ENV}=numpy")
        return "numpy"
    return "compiled"


def kernel_tier() -> str:
    """The tier in use: "compiled" or "numpy" (see the module docstring). Raises BackendUnavailableError
    for an unknown NPVIT_KERNELS, or for "compiled" without Numba."""
    if _state["set"] is not None:
        return _state["set"]
    env = os.environ.get(ENV, "")
    if _state["resolved"] is None or _state["resolved"][0] != env:
        _state["resolved"] = (env, _resolve(env))
    return _state["resolved"][1]


def set_kernel_tier(tier: str | None) -> str | None:
    """Choose the tier for this process ("numpy", "compiled", "auto"; None: back to NPVIT_KERNELS).
    Returns the previous choice."""
    previous = _state["set"]
    _state["set"] = None if tier is None else _resolve(tier)
    return previous


@contextlib.contextmanager
def kernel_tier_set(tier: str | None) -> Iterator[str]:
    """``with kernel_tier_set("numpy"): ...`` runs the block on that tier, then restores the previous one."""
    previous = set_kernel_tier(tier)
    try:
        yield kernel_tier()
    finally:
        _state["set"] = previous


def describe() -> str:
    """One line for a command's output: which tier runs the CPU kernels, and why."""
    tier = kernel_tier()
    version = numba_version()
    if tier == "compiled":
        return f"kernels: compiled (Numba {version}) for float32 on the CPU; {ENV}=numpy for the NumPy kernels"
    if _state["set"] is not None or version is None:
        why = "chosen in the program" if version is not None else _state.get("why", "Numba is not installed")
    else:
        why = f"{ENV}=numpy"
    return f"kernels: numpy ({why})"


def use_compiled(*arrays: Any) -> bool:
    """Whether the compiled tier takes these arrays: float32 NumPy arrays, C-contiguous, on the compiled tier."""
    for a in arrays:
        if type(a) is not numpy.ndarray or a.dtype != numpy.float32 or not a.flags.c_contiguous:
            return False
    return kernel_tier() == "compiled"


__all__ = ["ENV", "TIERS", "describe", "kernel_tier", "kernel_tier_set", "numba_version", "set_kernel_tier",
           "use_compiled"]
