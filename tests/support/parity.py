"""The reference model against the fast one: the same logits, loss, gradients and input gradient, float64."""

from __future__ import annotations

from typing import Any

import numpy as np

import npvit.reference as ref
from npvit.backend import to_numpy

PARITY = 1e-12  # reference against the fast model, float64, relative to each array's largest entry


def assert_close(actual: Any, expected: Any, what: str, tol: float = PARITY) -> None:
    """``actual`` equals ``expected`` to ``tol`` relative to the largest entry of ``expected``."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} against {expected.shape}"
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-300)
    error = float(np.abs(actual - expected).max(initial=0.0)) / scale
    assert error <= tol, f"{what}: relative error {error:.2e} > {tol:.0e}"


def assert_reference_equals_fast(model: Any, params: Any, images: Any, labels: Any, cfg: Any, masks: Any,
                                 smoothing: float, logits: Any, loss: Any, dimages: Any) -> None:
    """One training forward and backward of ``npvit.reference`` on ``params`` gives what the fast ``model``
    gave (``logits``, ``loss``, ``model.grads``, ``dimages``)."""
    r_logits, cache = ref.vit_forward(params, images, cfg, masks)
    r_loss, r_c_loss = ref.cross_entropy_forward(r_logits, labels, smoothing)
    grads, r_dimages = ref.vit_backward(ref.cross_entropy_backward(r_c_loss), cache, params)
    assert_close(r_logits, logits, "logits")
    assert_close(r_loss, loss, "loss")
    assert set(grads) == set(model.grads)
    for name, g in model.grads.items():
        assert_close(grads[name], g, name)
    assert_close(r_dimages, dimages, "dimages")


def fast_and_reference(cfg: Any, threads: int = 2, backend: Any = "numpy") -> tuple[Any, dict]:
    """A float64 model with its 1-D parameters (biases, norms) moved off their initial 0s and 1s, so that no
    gradient hides behind a zero, and a copy of its parameters for the reference."""
    from npvit import ViT

    model = ViT(cfg, backend=backend, dtype="float64", seed=2, threads=threads)
    data = np.random.default_rng(7)
    for p in model.params.values():
        if p.ndim == 1:
            p += model.backend.asarray(data.standard_normal(p.shape) * 0.1)
    return model, {n: p.copy() for n, p in model.params.items()}

