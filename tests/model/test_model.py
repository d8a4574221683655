"""The whole Vision Transformer: parameter counts, full-model gradient checks, bad input, caching,
float32/float64 agreement and reproducibility."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import npvit
from npvit import ViT, ViTConfig, gradcheck, cross_entropy_backward, cross_entropy_forward
from npvit.backend import to_numpy
from npvit.config import PRESETS
from npvit.model.init import keras_fans
from npvit.model.batched import token_bytes_per_image


def test_keras_preset_parameter_count() -> None:
    # The count Keras' model.summary() prints for the 2021 example with 100 classes.
    assert ViT(ViTConfig.keras(num_classes=100)).num_params() == 21_759_012


def test_keras_wide_preset_parameter_count() -> None:
    assert ViT(ViTConfig.keras_wide(num_classes=100), dtype="float32").num_params() == 81_982_308


def test_parameter_names_follow_timm() -> None:
    """timm's names for the paper's concepts (patch_embed, cls_token, pos_embed, blocks, attn, mlp, norm, head)."""
    names = set(ViT(dataclasses.replace(ViTConfig.tiny(), pool="cls")).params)
    for expected in ("patch_embed.proj.w", "cls_token", "pos_embed", "blocks.0.norm1.gamma",
                     "blocks.1.attn.qkv.w", "blocks.1.attn.proj.b", "blocks.0.mlp.fc1.w", "norm.beta",
                     "head.fc0.w", "head.out.b"):
        assert expected in names
    assert "cls_token" not in ViT(ViTConfig.tiny()).params


def test_initialisation_follows_keras_defaults() -> None:
    m = ViT(dataclasses.replace(ViTConfig.keras(), attention_fans="axes"), dtype="float64", seed=3)
    p = m.params
    assert np.all(p["blocks.0.attn.qkv.b"] == 0) and np.all(p["head.out.b"] == 0)
    assert np.all(p["norm.gamma"] == 1) and np.all(p["norm.beta"] == 0)
    assert np.abs(p["pos_embed"]).max() <= 0.05 and p["pos_embed"].std() > 0.02
    # Glorot uniform: limit sqrt(6 / (fan_in + fan_out)). Keras 3.15+ reads the fans of the attention kernels
    # from their einsum axes: query/key/value (D, H, d) = (64, 4, 64) -> (64, 256), output (4, 64, 64) -> (256, 64).
    assert np.abs(p["head.fc0.w"]).max() <= np.sqrt(6 / (144 * 64 + 2048))
    qkv = p["blocks.0.attn.qkv.w"]
    limit = np.sqrt(6 / (64 + 4 * 64))
    for w in (qkv[:, :256], qkv[:, 256:512], qkv[:, 512:], p["blocks.7.attn.proj.w"]):
        assert np.abs(w).max() <= limit and np.abs(w).max() > 0.95 * limit


def test_receptive_field_fans_are_older_keras() -> None:
    """attention_fans="receptive": TensorFlow Keras and Keras <= 3.14 count the leading axis of a 3-D kernel as
    a receptive field: query/key/value (64, 4, 64) -> fans (4*64, 64*64), output (4, 64, 64) -> (64*4, 64*4)."""
    cfg = dataclasses.replace(ViTConfig.keras(num_classes=10), depth=1, head_units=(8,))  # the default rule
    p = ViT(cfg, dtype="float64", seed=4).params
    for w, limit in ((p["blocks.0.attn.qkv.w"][:, 256:512], np.sqrt(6 / (4 * 64 + 64 * 64))),
                     (p["blocks.0.attn.proj.w"], np.sqrt(6 / (64 * 4 + 64 * 4)))):
        assert np.abs(w).max() <= limit and np.abs(w).max() > 0.95 * limit
    # The rule changes only the attention kernels: the rest is drawn alike from the same seed.
    axes = ViT(dataclasses.replace(cfg, attention_fans="axes"), dtype="float64", seed=4).params
    for name in ("patch_embed.proj.w", "pos_embed", "blocks.0.mlp.fc0.w", "head.out.w"):  # before and after
        assert np.array_equal(axes[name], p[name]), name
    assert not np.array_equal(axes["blocks.0.attn.qkv.w"], p["blocks.0.attn.qkv.w"])


def test_keras_fans() -> None:
    # With axes: Keras' own cases (keras/src/initializers/random_initializers_test.py, test_compute_fans_with_axes).
    assert keras_fans((512, 8, 64), (0,), (1, 2)) == (512, 512)
    assert keras_fans((512, 8, 64), (0, 1), (2,)) == (4096, 64)
    # Without: the receptive-field rule, and plain fans for vectors and matrices.
    assert keras_fans((64, 4, 64)) == (256, 4096) and keras_fans((4, 64, 64)) == (256, 256)
    assert keras_fans((3, 3, 16, 32)) == (144, 288)
    assert keras_fans((108, 64)) == (108, 64) and keras_fans((7,)) == (7, 7) and keras_fans(()) == (1, 1)


@pytest.mark.parametrize("pool", ["flatten", "cls", "gap"])
@pytest.mark.parametrize("gelu", ["erf", "tanh"])
def test_full_model_gradients_with_dropout(backend, pool, gelu) -> None:
    """Every parameter and the input images, dropout on (the same masks at every evaluation: one seed)."""
    cfg = dataclasses.replace(ViTConfig.tiny(), pool=pool, gelu=gelu, dropout=0.2, attention_dropout=0.2,
                              head_dropout=0.3)
    model = ViT(cfg, backend=backend, dtype="float64", seed=1)
    data = np.random.default_rng(0)
    for name, p in model.params.items():  # zero biases would hide errors in their gradient paths
        if p.ndim == 1:
            p[...] = backend.asarray(data.standard_normal(p.shape) * 0.1)
    images = backend.asarray(data.standard_normal((3, 8, 8, 3)))
    labels = backend.asarray(np.array([0, 1, 4]))
    names = list(model.params)

    def loss_of(x):
        logits = model.forward(x, training=True, dropout_seed=42)
        return cross_entropy_forward(logits, labels, label_smoothing=0.1)

    def forward(*inputs):
        return loss_of(inputs[-1])[0]

    def backward(*inputs_and_dy):
        *inputs, dloss = inputs_and_dy
        _, cache = loss_of(inputs[-1])
        dimages = model.backward(cross_entropy_backward(cache, float(dloss)))
        return [model.grads[n] for n in names] + [dimages]

    result = gradcheck(forward, backward, [model.params[n] for n in names] + [images],
                            names=names + ["images"], rtol=1e-6)
    assert len(result.errors) == len(names) + 1
    assert result.max_error < 1e-6


def test_forward_shapes_and_eval_keeps_no_cache() -> None:
    model = ViT(ViTConfig.tiny(num_classes=7))
    images = np.zeros((5, 8, 8, 3), dtype=np.float32)
    logits = model.forward(images)
    assert logits.shape == (5, 7) and logits.dtype == np.float32
    assert model._cache is None
    with pytest.raises(RuntimeError, match="training=True"):
        model.backward(np.zeros((5, 7), dtype=np.float32))
    model.forward(images, training=True)
    assert model._cache is not None
    with pytest.raises(ValueError, match=r"dlogits must have shape \(5, 7\)"):
        model.backward(np.zeros((4, 7), dtype=np.float32))
    model.backward(np.ones((5, 7), dtype=np.float32))
    assert model._cache is None  # released after use


def test_keep_attention_records_probabilities() -> None:
    cfg = dataclasses.replace(ViTConfig.tiny(), pool="cls")
    model = ViT(cfg)
    model.forward(np.zeros((2, 8, 8, 3), dtype=np.float32), keep_attention=True)
    assert len(model.attention_maps) == cfg.depth
    assert model.attention_maps[0].shape == (2, cfg.num_heads, cfg.num_tokens, cfg.num_tokens)
    np.testing.assert_allclose(model.attention_maps[1].sum(axis=-1), 1.0, rtol=1e-5)
    model.forward(np.zeros((2, 8, 8, 3), dtype=np.float32))
    assert model.attention_maps == []


@pytest.mark.parametrize(
    "shape, message",
    [
        ((8, 8, 3), "4 axes"),
        ((2, 16, 16, 3), "must be 8x8 pixels"),
        ((2, 8, 8, 1), "must have 3 channels"),
        ((2, 3, 8, 8), "must be 8x8 pixels"),
        ((0, 8, 8, 3), "empty batch"),
    ],
)
def test_bad_images_are_clear_errors(shape, message) -> None:
    model = ViT(ViTConfig.tiny())
    with pytest.raises(ValueError, match=message):
        model.forward(np.zeros(shape, dtype=np.float32))


def test_non_finite_and_non_numeric_images_are_rejected() -> None:
    model = ViT(ViTConfig.tiny())
    images = np.zeros((2, 8, 8, 3), dtype=np.float32)
    images[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.forward(images)
    with pytest.raises(ValueError, match="real numbers"):
        model.forward(np.zeros((2, 8, 8, 3), dtype=bool))
    with pytest.raises(ValueError, match="array of shape"):
        model.forward([[1.0]])


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        ViT(ViTConfig.tiny(), dtype="float16")
    with pytest.raises(TypeError, match="ViTConfig"):
        ViT({"dim": 8})
    with pytest.raises(ValueError, match="unknown backend"):
        ViT(ViTConfig.tiny(), backend="jax")


def test_float32_agrees_with_float64(backend) -> None:
    cfg = ViTConfig.tiny()
    m32 = ViT(cfg, backend=backend, dtype="float32", seed=2)
    m64 = ViT(cfg, backend=backend, dtype="float64", seed=2)
    data = np.random.default_rng(1)
    images = data.standard_normal((4, 8, 8, 3))
    labels = backend.asarray(np.array([0, 1, 2, 3]))
    grads = {}
    for m in (m32, m64):
        logits = m.forward(backend.asarray(images, dtype=m.dtype), training=True)  # dropout masks match
        loss, cache = cross_entropy_forward(logits, labels)
        m.backward(cross_entropy_backward(cache))
        grads[m.dtype] = (to_numpy(logits), float(loss), {n: to_numpy(g) for n, g in m.grads.items()})
    l32, loss32, g32 = grads[np.dtype("float32")]
    l64, loss64, g64 = grads[np.dtype("float64")]
    np.testing.assert_allclose(l32, l64, rtol=1e-4, atol=1e-5)
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    for name in g64:
        scale = np.abs(g64[name]).max()
        assert np.abs(g32[name] - g64[name]).max() <= 1e-4 * scale + 1e-7, name


def test_same_seed_is_bit_identical_on_numpy() -> None:
    def run(seed):
        model = ViT(ViTConfig.tiny(), seed=seed)
        opt = npvit.AdamW(model.params)
        images = np.random.default_rng(0).standard_normal((4, 8, 8, 3)).astype(np.float32)
        labels = np.array([0, 1, 2, 3])
        for _ in range(3):
            loss, cache = cross_entropy_forward(model.forward(images, training=True), labels)
            model.backward(cross_entropy_backward(cache))
            opt.step(model.grads)
        return float(loss), {n: p.copy() for n, p in model.params.items()}

    (la, pa), (lb, pb), (_, pc) = run(5), run(5), run(6)
    assert la == lb and all(np.array_equal(pa[n], pb[n]) for n in pa)
    assert not np.array_equal(pa["head.out.w"], pc["head.out.w"])


def test_training_reduces_loss_on_a_fixed_batch() -> None:
    cfg = dataclasses.replace(ViTConfig.tiny(), dropout=0.0, attention_dropout=0.0, head_dropout=0.0)
    model = ViT(cfg, seed=0)
    opt = npvit.AdamW(model.params, lr=3e-3)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((16, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 5, 16)
    losses = []
    for _ in range(30):
        loss, cache = cross_entropy_forward(model.forward(images, training=True), labels)
        model.backward(cross_entropy_backward(cache))
        opt.step(model.grads)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_sharded_batch_matches_one_shard() -> None:
    """threads > 1 splits the batch across threads; without dropout the numbers must not change."""
    cfg = dataclasses.replace(ViTConfig.tiny(), pool="cls", dropout=0.0, attention_dropout=0.0, head_dropout=0.0)
    images = np.random.default_rng(0).standard_normal((7, 8, 8, 3))
    labels = np.array([0, 1, 2, 3, 4, 0, 1])
    results = []
    for threads in (1, 3):
        model = ViT(cfg, dtype="float64", seed=4, threads=threads)
        logits = model.forward(images, training=True, keep_attention=True)
        loss, cache = cross_entropy_forward(logits, labels)
        dimages = model.backward(cross_entropy_backward(cache))
        results.append((logits, dimages, dict(model.grads), model.attention_maps))
    (l1, d1, g1, a1), (l3, d3, g3, a3) = results
    np.testing.assert_allclose(l3, l1, rtol=1e-12)
    np.testing.assert_allclose(d3, d1, rtol=1e-10, atol=1e-15)
    for name in g1:
        np.testing.assert_allclose(g3[name], g1[name], rtol=1e-10, atol=1e-15, err_msg=name)
    assert [a.shape for a in a3] == [a.shape for a in a1] and all(np.allclose(x, y) for x, y in zip(a1, a3))
    with pytest.raises(ValueError, match="threads"):
        ViT(cfg, threads=0)


def pieces_of(cfg: ViTConfig, batch: int) -> list[slice]:
    """The pieces a NumPy shard of ``batch`` images goes through the blocks in."""
    return npvit.parallel.batch_chunks(np, batch, token_bytes_per_image(cfg), cache="l3")


def test_blocks_run_piece_by_piece_with_the_same_numbers(monkeypatch) -> None:
    """Each shard goes through the blocks a few images at a time; one image per piece must change nothing."""
    cfg = dataclasses.replace(ViTConfig.tiny(), pool="cls", dropout=0.0, attention_dropout=0.0, head_dropout=0.0)
    images = np.random.default_rng(0).standard_normal((5, 8, 8, 3))
    labels = np.array([0, 1, 2, 3, 4])
    results = []
    for budget in (npvit.parallel.CHUNK_BYTES["l3"], 1):
        monkeypatch.setitem(npvit.parallel.CHUNK_BYTES, "l3", budget)
        model = ViT(cfg, dtype="float64", seed=4, threads=1)
        assert len(pieces_of(cfg, len(images))) == (1 if budget > 1 else 5)
        logits = model.forward(images, training=True, keep_attention=True)
        maps = model.attention_maps
        dimages = model.backward(cross_entropy_backward(cross_entropy_forward(logits, labels)[1]))
        results.append((logits, model.forward(images), dimages, dict(model.grads), maps))
    (l1, e1, d1, g1, a1), (l5, e5, d5, g5, a5) = results
    np.testing.assert_allclose(l5, l1, rtol=1e-12)
    np.testing.assert_allclose(e5, e1, rtol=1e-12)
    np.testing.assert_allclose(d5, d1, rtol=1e-10, atol=1e-15)
    for name in g1:
        np.testing.assert_allclose(g5[name], g1[name], rtol=1e-10, atol=1e-15, err_msg=name)
    assert len(a5) == cfg.depth
    for x, y in zip(a1, a5):
        np.testing.assert_allclose(y, x, rtol=1e-12)


def test_full_model_gradients_piece_by_piece_with_dropout(monkeypatch) -> None:
    """The gradient check again with one image per piece, dropout on: the pieces' gradients add up."""
    monkeypatch.setitem(npvit.parallel.CHUNK_BYTES, "l3", 1)
    monkeypatch.setitem(npvit.parallel.CHUNK_BYTES, "l2", 1)
    cfg = dataclasses.replace(ViTConfig.tiny(), dropout=0.2, attention_dropout=0.2, head_dropout=0.3)
    model = ViT(cfg, dtype="float64", seed=1, threads=1)
    data = np.random.default_rng(0)
    for p in model.params.values():
        if p.ndim == 1:
            p[...] = data.standard_normal(p.shape) * 0.1
    images, labels = data.standard_normal((3, 8, 8, 3)), np.array([0, 1, 4])
    names = [n for n in model.params if n.startswith(("blocks.0.", "pos_embed", "patch_embed"))]

    def loss_of(x):
        return cross_entropy_forward(model.forward(x, training=True, dropout_seed=42), labels)

    def backward(*inputs_and_dy):
        *inputs, dloss = inputs_and_dy
        dimages = model.backward(cross_entropy_backward(loss_of(inputs[-1])[1], float(dloss)))
        return [model.grads[n] for n in names] + [dimages]

    result = gradcheck(lambda *inputs: loss_of(inputs[-1])[0], backward,
                            [model.params[n] for n in names] + [images], names=names + ["images"], rtol=1e-6)
    assert len(pieces_of(cfg, 3)) == 3 and result.max_error < 1e-6


def test_load_params_copies_in_place_and_checks_shapes() -> None:
    source, target = ViT(ViTConfig.tiny(), seed=1), ViT(ViTConfig.tiny(), seed=2)
    before = target.params["head.out.w"]
    target.load_params({n: p.astype(np.float64) for n, p in source.params.items()})
    assert target.params["head.out.w"] is before  # same arrays: an optimizer holding them sees the change
    assert all(np.array_equal(target.params[n], source.params[n]) for n in source.params)
    with pytest.raises(ValueError, match="missing"):
        target.load_params({})
    bad = dict(source.params, **{"head.out.b": np.zeros(3)})
    with pytest.raises(ValueError, match=r"head.out.b has shape \(3,\)"):
        target.load_params(bad)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_forward_head_of_forward_features_is_forward_for_every_preset(preset: str) -> None:
    """timm's meaning: forward_features(images) -> normalised tokens, forward_head(tokens) -> logits, in
    evaluation mode, so their composition is forward(images)."""
    cfg = PRESETS[preset](num_classes=7)
    model = ViT(cfg, dtype="float64", seed=3, threads=2)
    x = np.random.default_rng(0).standard_normal((3, cfg.image_size, cfg.image_size, cfg.channels))
    tokens = model.forward_features(x)
    assert tokens.shape == (3, cfg.num_tokens, cfg.dim)
    np.testing.assert_allclose(model.forward_head(tokens), model.forward(x), rtol=1e-12, atol=1e-12)


def test_forward_head_says_what_tokens_it_expects() -> None:
    model = ViT(ViTConfig.tiny(num_classes=3))
    with pytest.raises(ValueError, match=r"tokens must have shape \(batch, "):
        model.forward_head(np.zeros((2, 5, 3)))


def test_second_names_still_work_for_one_release_with_a_warning() -> None:
    import sys

    import npvit

    gradcheck_module = sys.modules["npvit.gradcheck"]  # the package's attribute is the function

    with pytest.warns(DeprecationWarning, match="use npvit.ViT"):
        assert npvit.VisionTransformer is npvit.ViT
    with pytest.warns(DeprecationWarning, match="use npvit.gradcheck"):
        assert npvit.check_backward is npvit.gradcheck
    with pytest.warns(DeprecationWarning, match="use npvit.gradcheck"):
        assert gradcheck_module.check_backward is npvit.gradcheck
