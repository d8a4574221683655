"""AdamW against a direct transcription of each library's update rule, plus clipping, exclusion and state."""

from __future__ import annotations

import math

import numpy as np
import pytest

import npvit
from npvit.backend import to_numpy
from npvit.optim.adamw import global_norm


def reference_adamw(p, grads, lr, wd, b1, b2, eps, decay, eps_style):
    """Keras 3 / TFA / PyTorch AdamW written out for one parameter over several steps."""
    p = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p - (lr * wd * p if decay == "keras" else wd * p)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if eps_style == "keras":  # keras.optimizers.Adam: alpha = lr sqrt(1-b2^t)/(1-b1^t); m*alpha/(sqrt(v)+eps)
            alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            p = p - m * alpha / (np.sqrt(v) + eps)
        else:  # torch.optim.AdamW: m_hat / (sqrt(v_hat) + eps)
            p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


@pytest.mark.parametrize("decay", ["keras", "tfa"])
@pytest.mark.parametrize("eps_style", ["keras", "pytorch"])
def test_matches_reference_update(backend, decay, eps_style) -> None:
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) * 1e-3 for _ in range(6)]  # small grads make eps matter
    params = {"w": backend.asarray(p0.copy())}
    opt = npvit.AdamW(params, lr=1e-2, weight_decay=0.05, epsilon=1e-4, decay_convention=decay,
                      epsilon_convention=eps_style)
    for g in grads:
        opt.step({"w": backend.asarray(g)})
    expected = reference_adamw(p0, grads, 1e-2, 0.05, 0.9, 0.999, 1e-4, decay, eps_style)
    np.testing.assert_allclose(to_numpy(params["w"]), expected, rtol=1e-12, atol=1e-15)


def test_defaults_are_the_keras_example() -> None:
    opt = npvit.AdamW({"w": np.zeros(2)})
    assert (opt.lr, opt.weight_decay, opt.beta1, opt.beta2, opt.epsilon) == (1e-3, 1e-4, 0.9, 0.999, 1e-7)
    assert (opt.decay_convention, opt.epsilon_convention) == ("keras", "keras")


def test_updates_in_place_and_tfa_decay_is_lr_independent() -> None:
    w = np.ones(3)
    opt = npvit.AdamW({"w": w}, lr=0.0, weight_decay=0.1, decay_convention="tfa")
    opt.step({"w": np.zeros(3)})
    np.testing.assert_allclose(w, 0.9)  # the caller's array itself changed: p -= wd * p even at lr 0
    opt = npvit.AdamW({"w": w}, lr=0.0, weight_decay=0.1)
    opt.step({"w": np.zeros(3)})
    np.testing.assert_allclose(w, 0.9)  # keras convention at lr 0: no decay


def test_exclude_from_decay() -> None:
    params = {"w": np.ones(2), "b": np.ones(2)}
    opt = npvit.AdamW(params, lr=0.5, weight_decay=0.1, exclude_from_decay=["b"])
    opt.step({"w": np.zeros(2), "b": np.zeros(2)})
    np.testing.assert_allclose(params["w"], 0.95)
    np.testing.assert_allclose(params["b"], 1.0)
    with pytest.raises(ValueError, match="do not exist"):
        npvit.AdamW(params, exclude_from_decay=["nope"])


def test_model_no_decay_names() -> None:
    model = npvit.ViT(npvit.ViTConfig.tiny())
    names = set(model.no_decay_names())
    assert "pos_embed" in names and "blocks.0.attn.qkv.b" in names and "norm.gamma" in names
    assert "blocks.0.attn.qkv.w" not in names and "head.out.w" not in names


def test_global_norm_clipping() -> None:
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert global_norm(grads.values()) == pytest.approx(5.0)
    clipped = {"a": np.zeros(2), "b": np.zeros((1, 1))}
    reference = {"a": np.zeros(2), "b": np.zeros((1, 1))}
    opt = npvit.AdamW(clipped, lr=0.1, weight_decay=0.0, beta1=0.0, clip_norm=1.0)
    opt_ref = npvit.AdamW(reference, lr=0.1, weight_decay=0.0, beta1=0.0)
    assert opt.step(grads) == pytest.approx(5.0)  # returns the norm before clipping
    opt_ref.step({k: g / 5.0 for k, g in grads.items()})
    for k in clipped:
        np.testing.assert_allclose(clipped[k], reference[k], rtol=1e-15)


def test_state_round_trip_continues_exactly() -> None:
    rng = np.random.default_rng(0)
    grads = [{"w": rng.standard_normal(5).astype(np.float32)} for _ in range(6)]
    straight = {"w": np.ones(5, dtype=np.float32)}
    opt = npvit.AdamW(straight)
    for g in grads:
        opt.step(g)

    first = {"w": np.ones(5, dtype=np.float32)}
    opt1 = npvit.AdamW(first)
    for g in grads[:3]:
        opt1.step(g)
    state = opt1.state_dict()
    assert set(state) == {"step", "m/w", "v/w"} and int(state["step"]) == 3
    resumed = {"w": first["w"].copy()}
    opt2 = npvit.AdamW(resumed)
    opt2.load_state_dict(state)
    for g in grads[3:]:
        opt2.step(g)
    assert np.array_equal(resumed["w"], straight["w"])


def test_bad_arguments_and_states() -> None:
    with pytest.raises(ValueError, match="decay_convention"):
        npvit.AdamW({"w": np.zeros(1)}, decay_convention="l2")
    with pytest.raises(ValueError, match="epsilon_convention"):
        npvit.AdamW({"w": np.zeros(1)}, epsilon_convention="tf")
    with pytest.raises(ValueError, match="betas"):
        npvit.AdamW({"w": np.zeros(1)}, beta1=1.0)
    with pytest.raises(ValueError, match="epsilon must be positive"):
        npvit.AdamW({"w": np.zeros(1)}, epsilon=0.0)
    with pytest.raises(ValueError, match="clip_norm"):
        npvit.AdamW({"w": np.zeros(1)}, clip_norm=0.0)
    opt = npvit.AdamW({"w": np.zeros(2)})
    with pytest.raises(ValueError, match="missing parameters"):
        opt.step({})
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict({"step": 1, "m/w": np.zeros(3), "v/w": np.zeros(3)})
    with pytest.raises(ValueError, match="no entry 'm/w'"):
        opt.load_state_dict({"step": 1})


def test_non_contiguous_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="C-contiguous"):
        npvit.AdamW({"w": np.ones((3, 4)).T})


def _model_and_grads(seed: int = 0):
    model = npvit.ViT(npvit.ViTConfig.tiny(), seed=seed)
    rng = np.random.default_rng(seed)
    model.grads.flat[...] = rng.standard_normal(model.grads.flat.size).astype(np.float32) * 1e-2
    return model


@pytest.mark.parametrize("exclude, clip", [(False, None), (True, 0.05)])
def test_flat_update_equals_the_per_array_update(exclude, clip) -> None:
    """The one-pass update over a model's flat buffers gives bit for bit what one update per array gives."""
    model = _model_and_grads()
    separate = {n: p.copy() for n, p in model.params.items()}  # a plain dict: one update per array
    excluded = model.no_decay_names() if exclude else ()
    kwargs = dict(lr=1e-2, weight_decay=0.1, exclude_from_decay=excluded, clip_norm=clip)
    flat_opt, separate_opt = npvit.AdamW(model.params, **kwargs), npvit.AdamW(separate, **kwargs)
    grads = {n: g.copy() for n, g in model.grads.items()}
    for _ in range(3):
        norm_flat = flat_opt.step(model.grads)
        norm_separate = separate_opt.step(grads)
    assert float(norm_flat) == pytest.approx(float(norm_separate), rel=1e-6)
    for name in separate:
        np.testing.assert_array_equal(model.params[name], separate[name], err_msg=name)


def test_a_non_finite_gradient_changes_nothing() -> None:
    model = _model_and_grads()
    opt = npvit.AdamW(model.params, lr=1e-2)
    opt.step(model.grads)
    before = (model.params.flat.copy(), opt.m.flat.copy(), opt.v.flat.copy(), opt.step_count)
    model.grads["head.out.b"][0] = np.nan
    norm = opt.step(model.grads)
    assert not np.isfinite(float(norm))
    np.testing.assert_array_equal(model.params.flat, before[0])
    np.testing.assert_array_equal(opt.m.flat, before[1])
    np.testing.assert_array_equal(opt.v.flat, before[2])
    assert opt.step_count == before[3]


def test_step_returns_the_norm_as_an_array() -> None:
    model = _model_and_grads()
    norm = npvit.AdamW(model.params).step(model.grads)
    assert np.ndim(norm) == 0 and norm.dtype == np.float32  # the backend's scalar, not a Python float
    assert float(norm) == pytest.approx(float(np.sqrt((model.grads.flat.astype(np.float64) ** 2).sum())), rel=1e-5)


def test_non_finite_settings_are_refused() -> None:
    for kwargs in ({"lr": float("nan")}, {"weight_decay": float("inf")}, {"epsilon": float("inf")},
                   {"clip_norm": float("nan")}):
        with pytest.raises(ValueError, match="finite"):
            npvit.AdamW({"w": np.zeros(1)}, **kwargs)
