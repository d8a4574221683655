"""kernels/compiled: the kernel tier switch (NPVIT_KERNELS, set_kernel_tier), and a whole model trained on
either tier: the same step to float32 precision, float64 untouched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import npvit
from npvit.backend import BackendUnavailableError
from npvit.kernels import compiled
from npvit.kernels.compiled import describe, kernel_tier, kernel_tier_set, set_kernel_tier


@pytest.fixture
def no_numba(monkeypatch):
    """As if Numba were not installed."""
    monkeypatch.setattr(compiled, "numba_version", lambda: None)
    monkeypatch.setitem(compiled._state, "why", "Numba is not installed: pip install numba")
    monkeypatch.setitem(compiled._state, "resolved", None)  # the tier resolved with Numba present: forgotten


def test_the_env_variable_chooses_and_auto_follows_numba(monkeypatch) -> None:
    monkeypatch.setenv("NPVIT_KERNELS", "numpy")
    assert kernel_tier() == "numpy"
    assert describe() == ("kernels: numpy (Numba is not installed: pip install numba)" if compiled.numba_version()
                          is None else "kernels: numpy (NPVIT_KERNELS=numpy)")
    monkeypatch.setenv("NPVIT_KERNELS", "auto")
    assert kernel_tier() == ("numpy" if compiled.numba_version() is None else "compiled")
    monkeypatch.setenv("NPVIT_KERNELS", "")
    assert kernel_tier() == ("numpy" if compiled.numba_version() is None else "compiled")


def test_without_numba_auto_is_numpy_and_compiled_is_refused_with_what_to_do(monkeypatch, no_numba) -> None:
    monkeypatch.delenv("NPVIT_KERNELS", raising=False)
    assert kernel_tier() == "numpy"
    assert describe() == "kernels: numpy (Numba is not installed: pip install numba)"
    monkeypatch.setenv("NPVIT_KERNELS", "compiled")
    with pytest.raises(BackendUnavailableError, match="pip install numba, or set NPVIT_KERNELS=numpy"):
        kernel_tier()
    with pytest.raises(BackendUnavailableError, match="Numba cannot be used"):
        set_kernel_tier("compiled")


def test_an_unknown_tier_says_which_ones_exist(monkeypatch) -> None:
    monkeypatch.setenv("NPVIT_KERNELS", "fast")
    with pytest.raises(BackendUnavailableError, match="'fast' is not a kernel tier: set it to numpy, compiled or auto"):
        kernel_tier()
    monkeypatch.delenv("NPVIT_KERNELS")
    with pytest.raises(BackendUnavailableError, match="not a kernel tier"):
        set_kernel_tier("numba")


def test_the_programmatic_choice_wins_over_the_env_and_is_restored(monkeypatch) -> None:
    monkeypatch.setenv("NPVIT_KERNELS", "numpy")
    with kernel_tier_set("auto") as tier:
        assert kernel_tier() == tier == ("numpy" if compiled.numba_version() is None else "compiled")
        with kernel_tier_set("numpy"):
            assert kernel_tier() == "numpy"
        assert kernel_tier() == tier
    assert kernel_tier() == "numpy"


def _step(dtype: str, tier: str) -> tuple[float, dict]:
    cfg = dataclasses.replace(npvit.ViTConfig.tiny(), gelu="tanh")
    model = npvit.ViT(cfg, dtype=dtype, seed=3)
    rng = np.random.default_rng(4)
    images = rng.standard_normal((6, cfg.image_size, cfg.image_size, cfg.channels)).astype(dtype)
    labels = rng.integers(0, cfg.num_classes, 6)
    with kernel_tier_set(tier):
        loss, cache = npvit.cross_entropy_forward(model.forward(images, training=True), labels)
        model.backward(npvit.cross_entropy_backward(cache))
    return float(loss), {k: v.copy() for k, v in model.grads.items()}


def test_a_training_step_on_the_compiled_tier_equals_the_numpy_tier() -> None:
    pytest.importorskip("numba", reason="the compiled tier needs Numba (pip install numba)")
    loss_c, grads_c = _step("float32", "compiled")
    loss_n, grads_n = _step("float32", "numpy")
    assert abs(loss_c - loss_n) <= 1e-5 * abs(loss_n)
    for name, g in grads_n.items():
        scale = float(np.abs(g).max())
        assert float(np.abs(grads_c[name] - g).max()) <= 1e-4 * scale, name
    # float64 (the gradient checks' dtype) runs the NumPy kernels on either tier: bit for bit the same
    loss_c, grads_c = _step("float64", "compiled")
    loss_n, grads_n = _step("float64", "numpy")
    assert loss_c == loss_n and all(np.array_equal(grads_c[k], grads_n[k]) for k in grads_n)


def test_a_numba_that_cannot_compile_here_leaves_the_numpy_tier_and_says_why(monkeypatch) -> None:
    pytest.importorskip("numba", reason="the compiled tier needs Numba (pip install numba)")

    def broken() -> None:
        raise RuntimeError("no code generator for this CPU")

    monkeypatch.setattr(compiled, "_smoke_test", broken)
    monkeypatch.setitem(compiled._state, "resolved", None)
    monkeypatch.setitem(compiled._state, "why", "")  # restored afterwards
    monkeypatch.delenv("NPVIT_KERNELS", raising=False)
    assert kernel_tier() == "numpy"
    assert describe() == "kernels: numpy (Numba cannot compile here (RuntimeError: no code generator for this CPU))"
    monkeypatch.setenv("NPVIT_KERNELS", "compiled")
    with pytest.raises(BackendUnavailableError, match="no code generator for this CPU"):
        kernel_tier()
