"""The timm arrangement (no GELU after the block MLP's last layer, timm's initializers), the final norm after
the pooling (fc_norm) and gap pooling beside a class token: each part against finite differences in float64,
by hand element by element, and the reference against the fast model to 1e-12."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from parity import assert_close, assert_reference_equals_fast

from npvit import ViT, ViTConfig, cross_entropy_backward, cross_entropy_forward, gradcheck
from npvit import reference as ref
from npvit.backend import to_numpy

RTOL = 1e-6

# (arrangement, pool, class token, fc_norm): timm's global_pool="token", timm's "avg" (class token kept, norm
# after the mean), timm's "avg" on a model without a class token, and the Keras arrangement with fc_norm.
VARIANTS = {
    "timm-token": dict(arrangement="timm", pool="cls"),
    "timm-avg": dict(arrangement="timm", pool="gap", class_token=True, fc_norm=True),
    "timm-avg-no-class-token": dict(arrangement="timm", pool="gap", class_token=False, fc_norm=True),
    "timm-gap-norm-first": dict(arrangement="timm", pool="gap", class_token=True),
    "keras-cls-fc-norm": dict(pool="cls", fc_norm=True),
}


def config(variant: str, dropout: bool = False, **changes) -> ViTConfig:
    rates = dict(dropout=0.2, attention_dropout=0.2, head_dropout=0.3) if dropout else dict(
        dropout=0.0, attention_dropout=0.0, head_dropout=0.0)
    return dataclasses.replace(ViTConfig.tiny(), **VARIANTS[variant], **rates, **changes)


def fixed_masks(seed: int) -> ref.Masks:
    store: dict = {}
    rng = np.random.default_rng(seed)

    def masks(site: str, shape: tuple[int, ...], rate: float) -> np.ndarray:
        if site not in store:
            store[site] = rng.random(shape) >= rate
        return store[site]

    return masks


def perturbed(params: dict, seed: int = 1) -> dict:
    """Every parameter moved off its initial value: zero biases and unit scales would hide their paths."""
    data = np.random.default_rng(seed)
    return {n: p + data.standard_normal(p.shape) * 0.1 for n, p in params.items()}


# ---- the parts against finite differences -------------------------------------------------------------------
def test_mlp_without_the_last_gelu_gradients(rng) -> None:
    cfg = config("timm-token", dropout=True)
    params = perturbed(ref.init_params(cfg))
    names = [n for n in params if n.startswith("blocks.0.mlp.")]
    masks = fixed_masks(0)
    x = rng.standard_normal((2, 3, cfg.dim))

    def run(x, *ws):
        p = dict(params, **dict(zip(names, ws)))
        return ref.mlp_forward(p, "blocks.0.mlp", x, 2, "erf", cfg.dropout, masks, act_last=False)

    def backward(x, *ws_and_dy):
        *ws, dy = ws_and_dy
        grads: dict = {}
        p = dict(params, **dict(zip(names, ws)))
        dx = ref.mlp_backward(dy, run(x, *ws)[1], p, grads)
        return [dx] + [grads[n] for n in names]

    gradcheck(lambda x, *ws: run(x, *ws)[0], backward, [x] + [params[n] for n in names], rtol=RTOL,
              names=["x"] + names)


def test_gap_beside_a_class_token_gradients(rng) -> None:
    t = rng.standard_normal((2, 5, 3))
    gradcheck(lambda t: ref.pool_forward(t, "gap", class_token=True)[0],
              lambda t, dy: [ref.pool_backward(dy, ref.pool_forward(t, "gap", class_token=True)[1])], [t], rtol=RTOL)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_whole_model_gradients(rng, variant) -> None:
    """vit_forward -> cross-entropy: every parameter and the images, dropout and drop path on."""
    cfg = config(variant, dropout=True, depth=2, drop_path=0.5)
    params = perturbed(ref.init_params(cfg))
    names = list(params)
    masks = fixed_masks(0)
    images, labels = rng.standard_normal((3, 8, 8, 3)), np.array([0, 1, 4])

    def loss(*inputs):
        p = dict(zip(names, inputs[:-1]))
        logits, cache = ref.vit_forward(p, inputs[-1], cfg, masks)
        return ref.cross_entropy_forward(logits, labels, 0.1), cache, p

    def backward(*inputs_and_dy):
        *inputs, dloss = inputs_and_dy
        (_, c_loss), cache, p = loss(*inputs)
        grads, dimages = ref.vit_backward(ref.cross_entropy_backward(c_loss, float(dloss)), cache, p)
        assert set(grads) == set(params)
        return [grads[n] for n in names] + [dimages]

    gradcheck(lambda *inputs: loss(*inputs)[0][0], backward, [params[n] for n in names] + [images],
              rtol=RTOL, names=names + ["images"], max_checks=24)


@pytest.mark.parametrize("variant", ["timm-token", "timm-avg"])
def test_fast_model_gradients(backend, variant) -> None:
    """npvit.ViT's own backward (the fast model) against finite differences, dropout on, two threads."""
    cfg = config(variant, dropout=True)
    model = ViT(cfg, backend=backend, dtype="float64", seed=1, threads=2)
    data = np.random.default_rng(0)
    for p in model.params.values():
        p += backend.asarray(data.standard_normal(p.shape) * 0.1)
    images = backend.asarray(data.standard_normal((3, 8, 8, 3)))
    labels = backend.asarray(np.array([0, 1, 4]))
    names = list(model.params)

    def loss_of(x):
        return cross_entropy_forward(model.forward(x, training=True, dropout_seed=42), labels, 0.1)

    def backward(*inputs_and_dy):
        *inputs, dloss = inputs_and_dy
        dimages = model.backward(cross_entropy_backward(loss_of(inputs[-1])[1], float(dloss)))
        return [model.grads[n] for n in names] + [dimages]

    result = gradcheck(lambda *inputs: loss_of(inputs[-1])[0], backward,
                       [model.params[n] for n in names] + [images], names=names + ["images"], rtol=RTOL)
    assert result.max_error < RTOL


# ---- element by element -------------------------------------------------------------------------------------
def test_timm_block_mlp_and_avg_head_element_by_element(rng) -> None:
    """fc2(GELU(fc1(x))) with no GELU after fc2, and LayerNorm(mean of the patch tokens), by loops."""
    cfg = config("timm-avg")
    params = perturbed(ref.init_params(cfg))
    x = rng.standard_normal((2, 3, cfg.dim))
    y, _ = ref.mlp_forward(params, "blocks.0.mlp", x, 2, "erf", 0.0, None, act_last=False)
    w0, b0, w1, b1 = (params[f"blocks.0.mlp.fc{i}.{k}"] for i in (0, 1) for k in ("w", "b"))
    for b in range(2):
        for t in range(3):
            hidden = [0.0] * w0.shape[1]
            for j in range(w0.shape[1]):
                u = sum(x[b, t, i] * w0[i, j] for i in range(cfg.dim)) + b0[j]
                hidden[j] = u * 0.5 * (1.0 + math.erf(u / math.sqrt(2.0)))
            for k in range(cfg.dim):
                out = sum(hidden[j] * w1[j, k] for j in range(len(hidden))) + b1[k]
                assert abs(y[b, t, k] - out) <= 1e-12 * max(1.0, abs(out))
    tokens = rng.standard_normal((2, cfg.num_tokens, cfg.dim))
    pooled = ref.pool_forward(tokens, "gap", class_token=True)[0]
    for b in range(2):
        for c in range(cfg.dim):
            mean = sum(tokens[b, t, c] for t in range(1, cfg.num_tokens)) / (cfg.num_tokens - 1)
            assert abs(pooled[b, c] - mean) <= 1e-15 * max(1.0, abs(mean))


# ---- the reference against the fast model -------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_init_params_are_the_fast_models(variant) -> None:
    cfg = config(variant)
    fast = ViT(cfg, dtype="float64", seed=5).params
    params = ref.init_params(cfg, seed=5)
    assert list(params) == list(fast)
    for name, p in params.items():
        assert np.array_equal(p, fast[name]), name


def test_timm_initializers() -> None:
    """timm's init: linear kernels normal(0, 0.02), zero biases, pos_embed normal(0, 0.02), the class token
    normal(0, 1e-6), the patch projection (a Conv2d in timm) uniform within 1 / sqrt(fan_in), bias too."""
    cfg = dataclasses.replace(ViTConfig.timm("vit_small_patch16_224"), depth=2)
    p = ViT(cfg, dtype="float64", seed=0).params
    for name in ("blocks.0.attn.qkv.w", "blocks.1.attn.proj.w", "blocks.0.mlp.fc0.w", "blocks.1.mlp.fc1.w",
                 "head.out.w", "pos_embed"):
        assert abs(p[name].std() - 0.02) < 0.001 and abs(p[name].mean()) < 0.001, name
    for name in ("blocks.0.attn.qkv.b", "blocks.0.mlp.fc1.b", "head.out.b"):
        assert not p[name].any(), name
    assert 0 < np.abs(p["cls_token"]).max() < 1e-5
    bound = 1 / math.sqrt(16 * 16 * 3)
    for name in ("patch_embed.proj.w", "patch_embed.proj.b"):
        assert np.abs(p[name]).max() <= bound and np.abs(p[name]).max() > 0.9 * bound, name
    assert np.all(p["norm.gamma"] == 1) and not p["norm.beta"].any()


def fast_and_reference(cfg: ViTConfig, backend) -> tuple[ViT, dict]:
    model = ViT(cfg, backend=backend, dtype="float64", seed=2, threads=2)
    data = np.random.default_rng(7)
    for p in model.params.values():
        p += model.backend.asarray(data.standard_normal(p.shape) * 0.1)
    return model, {n: to_numpy(p).copy() for n, p in model.params.items()}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dropout", [False, True])
def test_same_logits_loss_and_gradients_as_the_fast_model(backend, variant, dropout) -> None:
    cfg = config(variant, dropout=dropout, depth=3, drop_path=0.4 if dropout else 0.0)
    model, params = fast_and_reference(cfg, backend)
    data = np.random.default_rng(3)
    images, labels = data.standard_normal((5, 8, 8, 3)), data.integers(0, cfg.num_classes, 5)
    forward = dict(dropout_seed=1234, first_sample=40) if dropout else {}
    masks = ref.keyed_masks(1234, first_sample=40, xp=np) if dropout else None
    logits = model.forward(model.backend.asarray(images), training=True, **forward)
    loss, c_loss = cross_entropy_forward(logits, model.backend.asarray(labels), 0.1)
    dimages = model.backward(cross_entropy_backward(c_loss))
    if model.backend.name != "numpy":  # the reference runs on the host; the masks then come from the device
        masks = ref.keyed_masks(1234, first_sample=40, xp=model.backend.xp) if dropout else None
        images, labels = model.backend.asarray(images), model.backend.asarray(labels)
        params = {n: model.backend.asarray(p) for n, p in params.items()}
    assert_reference_equals_fast(model, params, images, labels, cfg, masks, 0.1, logits, loss, dimages)


def test_forward_head_of_forward_features_with_fc_norm() -> None:
    cfg = config("timm-avg")
    model = ViT(cfg, dtype="float64", seed=0)
    images = np.random.default_rng(0).standard_normal((2, 8, 8, 3))
    tokens = model.forward_features(images)
    assert tokens.shape == (2, cfg.num_tokens, cfg.dim)
    assert_close(model.forward_head(tokens), model.forward(images), "forward_head(forward_features)")
