"""The compact transformer's parts in npvit.reference: gradient checks, the twins of the fast kernels, the same
initial parameters, the same training step as the fast model (threads and pieces included), and one training
step of the CuPy path on the fake CuPy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fakecupy import fake_cupy, from_fake, host_syncs, to_fake  # noqa: F401 (fixtures)
from parity import assert_reference_equals_fast, fast_and_reference

import npvit
import npvit.kernels as K
import npvit.reference as R
from npvit import ViT, ViTConfig, cross_entropy_backward, cross_entropy_forward, gradcheck
from npvit.model import batched

RTOL = 1e-6
TOL = dict(rtol=1e-12, atol=1e-13)


def conv_config(**changes) -> ViTConfig:
    base = dict(tokenizer="conv", conv_channels=(3, 4), pool="seq", gelu="tanh", dropout=0.0,
                attention_dropout=0.0, head_dropout=0.0)
    return dataclasses.replace(ViTConfig.tiny(num_classes=4), **{**base, **changes})


# ---- the reference's functions against finite differences ----------------------------------------------------
def test_conv2d_and_seq_pool_gradients(rng) -> None:
    x, w = rng.standard_normal((2, 5, 6, 3)), rng.standard_normal((3, 3, 3, 4))
    gradcheck(lambda x, w: R.conv2d_forward(x, w)[0],
              lambda x, w, dy: R.conv2d_backward(dy, R.conv2d_forward(x, w)[1], w), [x, w], rtol=RTOL)
    t, g = rng.standard_normal((3, 5, 4)), rng.standard_normal(4)
    gradcheck(lambda t, g: R.seq_pool_forward(t, g)[0],
              lambda t, g, dy: R.seq_pool_backward(dy, R.seq_pool_forward(t, g)[1], g), [t, g], rtol=RTOL)
    x = rng.standard_normal((2, 7, 6, 3))
    gradcheck(lambda x: R.max_pool2d_forward(x)[0],
              lambda x, dy: [R.max_pool2d_backward(dy, R.max_pool2d_forward(x)[1])], [x], rtol=RTOL)


@pytest.mark.parametrize("channels", [(3, 4), (4, 8)])  # projected to dim 8, or not
def test_conv_tokenizer_gradients(rng, channels) -> None:
    cfg = conv_config(conv_channels=channels)
    params = R.init_params(cfg, seed=1)
    names = [n for n in params if n.startswith("tokenizer.")]
    images = rng.standard_normal((2, 8, 8, 3))

    def backward(*args):
        grads: dict = {}
        dx = R.conv_tokenizer_backward(args[-1], R.conv_tokenizer_forward(params, args[-2], cfg)[1], params, grads)
        return [grads[n] for n in names] + [dx]

    gradcheck(lambda *a: R.conv_tokenizer_forward(params, a[-1], cfg)[0], backward,
              [params[n] for n in names] + [images], rtol=RTOL, names=names + ["images"])


# ---- twins: the same calls, the same numbers, each backward on the other's cache ------------------------------
def swap(forward_args: tuple, dy, ref_pair, fast_pair, backward_extra: tuple = ()) -> None:
    (rf, rb), (kf, kb) = ref_pair, fast_pair
    y_ref, c_ref = rf(*(a.copy() if isinstance(a, np.ndarray) else a for a in forward_args))
    y_fast, c_fast = kf(*(a.copy() if isinstance(a, np.ndarray) else a for a in forward_args))
    np.testing.assert_allclose(y_ref, y_fast, **TOL)
    expected = rb(dy.copy(), c_ref, *backward_extra)
    for backward, cache in ((kb, c_fast), (rb, c_fast), (kb, c_ref)):
        got = backward(dy.copy(), cache, *backward_extra)
        for a, b in zip(expected if isinstance(expected, tuple) else (expected,),
                        got if isinstance(got, tuple) else (got,)):
            np.testing.assert_allclose(a, b, **TOL)


def test_twins(rng) -> None:
    x, w = rng.standard_normal((2, 5, 6, 3)), rng.standard_normal((3, 3, 3, 4))
    swap((x, w), rng.standard_normal((2, 5, 6, 4)), (R.conv2d_forward, R.conv2d_backward),
         (K.conv2d_forward, K.conv2d_backward), (w,))
    assert R.conv2d_backward(rng.standard_normal((2, 5, 6, 4)), K.conv2d_forward(x, w)[1], w, False)[0] is None
    x = np.maximum(rng.standard_normal((2, 7, 6, 3)), 0)  # ties: zeros
    swap((x,), rng.standard_normal((2, 4, 3, 3)), (R.max_pool2d_forward, R.max_pool2d_backward),
         (K.max_pool2d_forward, K.max_pool2d_backward))
    swap((x - 0.5,), rng.standard_normal(x.shape), (R.relu_forward, R.relu_backward),
         (K.relu_forward, K.relu_backward))
    t, g = rng.standard_normal((3, 5, 4)), rng.standard_normal(4)
    swap((t, g), rng.standard_normal((3, 4)), (R.seq_pool_forward, R.seq_pool_backward),
         (K.seq_pool_forward, K.seq_pool_backward), (g,))


# ---- the whole model: the reference and the fast one ---------------------------------------------------------
@pytest.mark.parametrize("changes", [{}, dict(conv_channels=(4, 8), pool="gap"), dict(class_token=True)])
def test_init_params_are_the_fast_models(changes) -> None:
    cfg = conv_config(**changes)
    fast, params = ViT(cfg, dtype="float64", seed=5).params, R.init_params(cfg, seed=5)
    assert list(params) == list(fast)
    for name, p in params.items():
        assert np.array_equal(p, fast[name]), name




def compare_step(model: ViT, params: dict, cfg: ViTConfig, images, labels, masks=None, seed=None) -> None:
    logits = model.forward(images, training=True, dropout_seed=seed)
    loss, c_loss = cross_entropy_forward(logits, labels, 0.1)
    dimages = model.backward(cross_entropy_backward(c_loss))
    assert_reference_equals_fast(model, params, images, labels, cfg, masks, 0.1, logits, loss, dimages)


@pytest.mark.parametrize("changes", [
    {},                                                               # a projection to dim, seq pool
    dict(conv_channels=(4, 8), pool="gap", image_size=9),             # no projection, 9 -> 5 -> 3
    dict(class_token=True, fc_norm=True, gelu="erf"),                 # seq pool over a class token too
    dict(pool="flatten", head_units=(6,)),
])
@pytest.mark.parametrize("pieces", [False, True])
def test_same_numbers_as_the_fast_model(monkeypatch, changes, pieces) -> None:
    """Two threads on NumPy; with ``pieces`` every image a piece of its own."""
    if pieces:
        monkeypatch.setattr(batched, "token_bytes_per_image", lambda config: 10**12)
    cfg = conv_config(**changes)
    model, params = fast_and_reference(cfg)
    data = np.random.default_rng(3)
    images, labels = data.standard_normal((5, cfg.image_size, cfg.image_size, 3)), data.integers(0, 4, 5)
    compare_step(model, params, cfg, images, labels)


def test_same_numbers_as_the_fast_model_with_dropout() -> None:
    cfg = conv_config(dropout=0.2, attention_dropout=0.2, head_dropout=0.3, drop_path=0.3, depth=3)
    model, params = fast_and_reference(cfg)
    data = np.random.default_rng(4)
    images, labels = data.standard_normal((6, 8, 8, 3)), data.integers(0, 4, 6)
    compare_step(model, params, cfg, images, labels, R.keyed_masks(77), seed=77)


def test_the_input_gradient_can_be_skipped_in_both(rng) -> None:
    cfg = conv_config()
    params = R.init_params(cfg, seed=3)
    images, labels = rng.standard_normal((2, 8, 8, 3)), np.array([1, 2])
    logits, cache = R.vit_forward(params, images, cfg)
    dlogits = R.cross_entropy_backward(R.cross_entropy_forward(logits, labels)[1])
    grads, dimages = R.vit_backward(dlogits, cache, params, input_grad=False)
    assert dimages is None
    all_grads, _ = R.vit_backward(dlogits, R.vit_forward(params, images, cfg)[1], params)
    for name, g in grads.items():
        np.testing.assert_array_equal(g, all_grads[name], err_msg=name)


# ---- the CuPy path, on the fake CuPy ------------------------------------------------------------------------
def test_a_training_step_on_the_gpu_path_reads_nothing_and_computes_numpys(fake_cupy, host_syncs) -> None:
    """The training step (npvit.train.step: augmentation, forward, loss, backward without the image gradient,
    clipping, AdamW) of a conv-tokenizer, seq-pool model on the fake CuPy: no host read, NumPy's weights."""
    from npvit.data.device import DeviceDataset
    from npvit.data.augment import Augmenter
    from npvit.train.step import RunningSums, StepSettings, train_step

    cfg = conv_config()
    rng = np.random.default_rng(8)
    x, y = rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, 8)
    trained = {}
    for name in ("numpy", "cupy"):
        backend = npvit.get_backend(name)
        model = ViT(cfg, backend=backend, dtype="float64", seed=5, threads=1)
        opt = npvit.AdamW(model.params, clip_norm=0.5, exclude_from_decay=model.no_decay_names())
        aug = Augmenter(np.full(3, 120.0), np.full(3, 3600.0), image_size=8, flip=False, rotation=0.0, zoom=0.0,
                        dtype="float64")
        data, sums = DeviceDataset(backend, x, y, cfg.num_classes), RunningSums(backend.xp)
        host_syncs.reset()
        for step in range(2):
            train_step(model, opt, aug, data, np.arange(4 * step, 4 * step + 4), step, StepSettings(seed=3), sums)
        if name == "cupy":
            assert host_syncs.gets == 0
        trained[name] = from_fake(model.params.flat) if name == "cupy" else model.params.flat
    start = ViT(cfg, dtype="float64", seed=5).params.flat
    assert np.abs(trained["numpy"] - start).max() > 1e-4  # the steps moved the weights
    np.testing.assert_allclose(trained["cupy"], trained["numpy"], rtol=1e-10, atol=1e-13)
