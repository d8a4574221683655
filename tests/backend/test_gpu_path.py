"""npvit's GPU code path, run on the CPU through a fake CuPy (tests/support/fakecupy.py) that raises on every implicit
device-to-host synchronisation: the kernels, the model, the loss and augmentation take their CuPy branches
with no host conversion, and compute what the NumPy path computes (float64, tight tolerances). Also: the
CuPy backend's loading (smoke test, error messages, TF32, generators), the device dataset, and the pieces of
benchmarks/gpu_check.py.
"""

from __future__ import annotations

import dataclasses
import operator
import sys
from pathlib import Path

import numpy as np
import pytest

import npvit
import npvit.backend as backend_module
from fakecupy import HostSyncError, fake_cupy, from_fake, host_syncs, to_fake  # noqa: F401 (fixtures)
from npvit.data.affine import affine_resample, rotation_matrices
from npvit.data.augment import Augmenter, draw_crops, resize_bilinear
from npvit.backend import PHILOX_STATES, BackendUnavailableError, cached_constant, make_rng, row_dot
from npvit.data.device import DeviceDataset, take_rows
from npvit.kernels.dropout import DropoutKey
from npvit.kernels import (
    attention_core_backward,
    attention_core_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    mha_backward,
    mha_forward,
    softmax_backward,
    softmax_forward,
)


def on_both(fn, *host_arrays):
    """fn on NumPy arrays and on fake device arrays (no sync allowed); both results on the host."""
    expected = fn(*host_arrays)
    got = from_fake(fn(*(to_fake(a) for a in host_arrays)))
    return expected, got


def assert_same(expected, got, rtol=1e-12, atol=1e-13):
    if isinstance(expected, (tuple, list)):
        assert len(expected) == len(got)
        for e, g in zip(expected, got):
            assert_same(e, g, rtol, atol)
        return
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------- the fake
def test_fake_raises_on_every_host_conversion(fake_cupy, host_syncs) -> None:
    cp = fake_cupy.cupy
    x = cp.arange(6.0).reshape(2, 3)
    conversions = {
        "float": lambda: float(x.sum()), "int": lambda: int(x.max()), "bool": lambda: bool(x.all()),
        "index": lambda: operator.index(x.astype("int64")[0, 0]), "item": lambda: x[0, 0].item(),
        "tolist": x.tolist, "iteration": lambda: list(x), "numpy.asarray": lambda: np.asarray(x),
        "boolean mask": lambda: x[x > 2], "if": lambda: 1 if x.any() else 0,
    }
    for name, convert in conversions.items():
        with pytest.raises(HostSyncError):
            convert()
    assert host_syncs.gets == 0
    assert np.array_equal(x.get(), np.arange(6.0).reshape(2, 3)) and host_syncs.gets == 1
    with pytest.raises(TypeError, match="Unsupported type"):
        x + np.ones(3)  # CuPy refuses host operands
    with pytest.raises(TypeError, match="host arrays"):
        x[0] = np.ones(3)
    with host_syncs.recording():
        float(x.sum())
    assert [(s.what, Path(s.filename).name) for s in host_syncs.sites] == [("float()", "test_gpu_path.py")]
    assert isinstance(x.sum(), cp.ndarray) and x.sum().shape == ()  # reductions stay on the device


def test_fake_philox_refuses_sizes_that_overrun_the_state(fake_cupy) -> None:
    random = fake_cupy.cupy.random
    with pytest.raises(ValueError, match="multiple of 256"):
        random.Philox4x3210(0, size=1000)
    assert random.Philox4x3210(0).size == 8 * 256 * 132  # CuPy's default: sized by the SM count


def test_fake_models_which_products_each_tf32_switch_reaches(fake_cupy) -> None:
    # The finding behind Backend.set_tf32: CuPy's compute type (what CUPY_TF32 sets) reaches 2-D products
    # only; batched products follow the cuBLAS math mode.
    cp = fake_cupy.cupy
    a = to_fake(np.random.default_rng(0).standard_normal((2, 16, 16)), "float32")
    exact = from_fake(a) @ from_fake(a)

    def changed():
        return (not np.array_equal(from_fake(cp.matmul(a, a)), exact),
                not np.array_equal(from_fake(a[0] @ a[0]), exact[0]))

    assert changed() == (False, False)
    cp._core.set_compute_type(np.float32, 7)
    assert changed() == (False, True)
    cp._core.set_compute_type(np.float32, 1)
    cp.cuda.cublas.setMathMode(1, 3)
    assert changed() == (True, False)


# ---------------------------------------------------------------------------------------------- backend
def test_cupy_backend_loads_through_a_smoke_test(fake_cupy) -> None:
    backend = npvit.get_backend("cupy")
    assert backend.xp is fake_cupy.cupy
    assert fake_cupy.syncs.gets == 1  # the smoke test reads its results back once
    assert fake_cupy.tf32_calls == [("set_compute_type(float32)", 1), ("setMathMode", 0)]  # TF32 off


def test_cupy_tf32_environment_variable_reaches_both_switches(fake_cupy, monkeypatch) -> None:
    monkeypatch.setenv("CUPY_TF32", "1")
    npvit.get_backend("cupy")
    assert fake_cupy.tf32_calls == [("set_compute_type(float32)", 7), ("setMathMode", 3)]


def test_smoke_test_failure_keeps_cupys_error(fake_cupy, monkeypatch) -> None:
    def no_compiler(*args, **kwargs):
        raise RuntimeError("CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: cannot open shared object")

    monkeypatch.setattr(fake_cupy.cupy, "exp2", no_compiler)
    with pytest.raises(BackendUnavailableError) as info:
        npvit.get_backend("cupy")
    message = str(info.value)
    assert "RuntimeError: CuPy failed to load libnvrtc.so.12" in message
    assert "npvit[cuda12]" in message and "cupy-cudaXXx[ctk]" in message


def test_smoke_test_catches_wrong_values(fake_cupy, monkeypatch) -> None:
    monkeypatch.setattr(fake_cupy.cupy, "exp2", lambda x: x * 0)
    with pytest.raises(BackendUnavailableError, match="wrong values"):
        npvit.get_backend("cupy")


def test_no_device_or_broken_driver_is_a_clear_error(fake_cupy, monkeypatch) -> None:
    fake_cupy.device_count = 0
    with pytest.raises(BackendUnavailableError, match="no CUDA device was found"):
        npvit.get_backend("cupy")

    def broken():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    monkeypatch.setattr(fake_cupy.cupy.cuda.runtime, "getDeviceCount", broken)
    with pytest.raises(BackendUnavailableError, match="cudaErrorInsufficientDriver"):
        npvit.get_backend("cupy")


def test_broken_cupy_install_keeps_its_import_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text(
        "raise ImportError('libcudart.so.12: cannot open shared object file: No such file or directory')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(backend_module, "_BACKENDS", {})
    with pytest.raises(BackendUnavailableError, match="failed to import: ImportError: libcudart.so.12") as info:
        npvit.get_backend("cupy")
    assert "npvit[cuda12]" in str(info.value)
    sys.modules.pop("cupy", None)


def test_set_tf32_sets_both_switches_and_knows_old_gpus(fake_cupy) -> None:
    backend = npvit.get_backend("cupy")
    fake_cupy.tf32_calls.clear()
    assert backend.set_tf32(True) is True
    assert backend.set_tf32(False) is False
    assert fake_cupy.tf32_calls == [("set_compute_type(float32)", 7), ("setMathMode", 3),
                                    ("set_compute_type(float32)", 1), ("setMathMode", 0)]
    fake_cupy.compute_capability = "75"  # Turing: no TF32
    assert backend.set_tf32(True) is False and fake_cupy.tf32_calls[-2:] == [
        ("set_compute_type(float32)", 1), ("setMathMode", 0)]
    assert npvit.get_backend("numpy").set_tf32(True) is False


def test_generators_have_a_fixed_number_of_states(fake_cupy) -> None:
    backend = npvit.get_backend("cupy")
    fake_cupy.generators.clear()
    backend.rng(3).random(10, dtype="float32")
    Augmenter(np.zeros(3), np.ones(3), image_size=4, seed=1)(to_fake(np.zeros((2, 4, 4, 3))), training=True)
    assert [g.size for g in fake_cupy.generators] == [PHILOX_STATES, PHILOX_STATES]
    assert PHILOX_STATES % 256 == 0
    np.testing.assert_array_equal(make_rng(np, 5).random(4), np.random.default_rng(5).random(4))


def test_cached_constants_are_made_and_uploaded_once(fake_cupy, host_syncs) -> None:
    calls = []

    def make():
        calls.append(1)
        return np.arange(4.0)

    a = cached_constant(np, "test-constant", make, np.float32)
    assert cached_constant(np, "test-constant", make, np.float32) is a and not a.flags.writeable
    assert a.dtype == np.float32 and np.array_equal(a, np.arange(4.0))
    d = cached_constant(fake_cupy.cupy, "test-constant", make, np.float32)
    assert cached_constant(fake_cupy.cupy, "test-constant", make, np.float32) is d
    assert host_syncs.uploads == 1 and len(calls) == 2  # once per module
    x = to_fake(np.ones((2, 5, 5, 3)))
    resize_bilinear(x, 7)
    before = host_syncs.uploads
    resize_bilinear(x, 7)
    assert host_syncs.uploads == before  # the resize matrices stay on the device


def test_device_dataset_uploads_once_and_gathers_on_the_device(fake_cupy, host_syncs) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, 10)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        DeviceDataset("cupy", images, labels, num_classes=3)
    backend = npvit.get_backend("cupy")
    host_syncs.reset()
    data = DeviceDataset(backend, images, labels, num_classes=5)
    assert host_syncs.uploads == 2 and len(data) == 10
    idx = np.array([7, 2, 2, 9])
    x, y = data.batch(idx)
    assert host_syncs.uploads == 3 and host_syncs.gets == 0  # only the indices crossed
    assert np.array_equal(from_fake(x), images[idx]) and np.array_equal(from_fake(y), labels[idx])
    assert isinstance(x, fake_cupy.cupy.ndarray) and x.dtype == np.uint8
    on_host = DeviceDataset("numpy", images, labels)
    hx, hy = on_host.batch(idx)
    assert np.array_equal(hx, images[idx]) and np.array_equal(hy, labels[idx])
    host_syncs.reset()
    x, y = take_rows(backend, idx, images, data.labels)  # one array still on the host: gathered there, moved
    assert host_syncs.gets == 0 and host_syncs.uploads == 2  # the host rows, and the indices for the labels
    assert np.array_equal(from_fake(x), images[idx]) and np.array_equal(from_fake(y), labels[idx])


def test_row_dot_is_a_product_on_numpy_and_a_reduction_on_the_gpu(fake_cupy) -> None:
    a = np.random.default_rng(0).standard_normal((5, 7))
    w = np.random.default_rng(1).standard_normal(7)
    expected, got = on_both(row_dot, a, w)
    assert_same(expected, got)
    assert np.array_equal(expected, a @ w)


# ---------------------------------------------------------------------------------------------- kernels
def test_layernorm_gpu_path(fake_cupy) -> None:
    rng = np.random.default_rng(0)
    x, g, b, dy = rng.standard_normal((3, 5, 8)), rng.standard_normal(8), rng.standard_normal(8), \
        rng.standard_normal((3, 5, 8))

    def both_passes(x, g, b, dy):
        y, cache = layernorm_forward(x, g, b)
        return (y, *layernorm_backward(dy, cache, g))

    assert_same(*on_both(both_passes, x, g, b, dy))


def test_layernorm_statistics_ignore_tf32_and_attention_products_follow_it(fake_cupy) -> None:
    # Finding 4: with TF32 on, the batched attention products change, the layer norm does not (reductions).
    backend = npvit.get_backend("cupy")
    rng = np.random.default_rng(0)
    x = to_fake(rng.standard_normal((4, 6, 64)), "float32")
    g, b = to_fake(np.ones(64), "float32"), to_fake(np.zeros(64), "float32")
    q, k, v = (to_fake(rng.standard_normal((2, 2, 9, 16)), "float32") for _ in range(3))
    results = {}
    for enabled in (False, True):
        backend.set_tf32(enabled)
        results[enabled] = (from_fake(layernorm_forward(x, g, b)[0]), from_fake(attention_core_forward(q, k, v)[0]))
    assert np.array_equal(results[False][0], results[True][0])
    assert not np.array_equal(results[False][1], results[True][1])


def test_softmax_and_gelu_gpu_path(fake_cupy) -> None:
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((3, 4, 9)) * 3, rng.standard_normal((3, 4, 9))

    def softmax(x, dy):
        y, cache = softmax_forward(x)
        return y, softmax_backward(dy, cache)

    assert_same(*on_both(softmax, x, dy))
    for kind in ("erf", "tanh"):
        def gelu(x, dy, kind=kind):
            y, cache = gelu_forward(x, kind)
            return y, gelu_backward(dy, cache)

        assert_same(*on_both(gelu, x, dy))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_gpu_path_keeps_the_loss_on_the_device(fake_cupy, smoothing) -> None:
    rng = np.random.default_rng(2)
    logits, labels = rng.standard_normal((6, 5)) * 2, rng.integers(0, 5, 6)

    def loss(z, y):
        value, cache = cross_entropy_forward(z, y, smoothing)
        return value, cross_entropy_backward(cache, 0.5)

    assert_same(*on_both(loss, logits, labels))
    value = cross_entropy_forward(to_fake(logits), to_fake(labels))[0]
    assert isinstance(value, fake_cupy.cupy.ndarray) and value.shape == ()
    with pytest.raises(ValueError, match="integers"):
        cross_entropy_forward(to_fake(logits), to_fake(labels.astype(float)))


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_attention_core_gpu_layout_computes_the_same(fake_cupy, monkeypatch, rate) -> None:
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((2, 7, 3, 2, 4)).transpose(2, 0, 3, 1, 4)  # strided views, as mha_forward's
    do = rng.standard_normal((2, 2, 7, 4))
    mask = rng.random((2, 2, 7, 7)) >= rate  # keys along axis -2, as dropout_mask is drawn
    # The same mask on both paths (NumPy and CuPy draw keyed masks from different streams).
    monkeypatch.setattr("npvit.kernels.attention.dropout_mask",
                        lambda shape, r, key, xp: mask if xp is np else to_fake(mask))

    def core(q, k, v, do):
        o, p, cache = attention_core_forward(q, k, v, rate, DropoutKey(seed=1), q_scale=0.7)
        return (o, p, *attention_core_backward(do, cache))

    assert_same(*on_both(core, qkv[0], qkv[1], qkv[2], do))


def test_multi_head_attention_gpu_path(fake_cupy) -> None:
    rng = np.random.default_rng(4)
    x, dy = rng.standard_normal((2, 5, 6)), rng.standard_normal((2, 5, 6))
    w_qkv, b_qkv = rng.standard_normal((6, 3 * 2 * 3)) * 0.5, rng.standard_normal(18)
    w_out, b_out = rng.standard_normal((6, 6)) * 0.5, rng.standard_normal(6)

    def mha(x, dy, w_qkv, b_qkv, w_out, b_out):
        y, cache, p = mha_forward(x, w_qkv, b_qkv, w_out, b_out, num_heads=2)
        return (y, p, *mha_backward(dy, cache, w_qkv, w_out))

    assert_same(*on_both(mha, x, dy, w_qkv, b_qkv, w_out, b_out))


# ------------------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("layout", [{}, dict(arrangement="timm", pool="cls"),
                                    dict(arrangement="timm", pool="gap", class_token=True, fc_norm=True),
                                    dict(pool="gap", fc_norm=True)])
def test_model_forward_backward_gpu_path_equals_numpy(fake_cupy, host_syncs, layout) -> None:
    """The Keras arrangement, timm's (token and avg pooling), and the norm after the pooling."""
    cfg = dataclasses.replace(npvit.ViTConfig.tiny(), dropout=0.0, attention_dropout=0.0, head_dropout=0.0,
                              **layout)
    rng = np.random.default_rng(5)
    images, dlogits = rng.standard_normal((3, 8, 8, 3)), rng.standard_normal((3, cfg.num_classes))
    cpu = npvit.ViT(cfg, backend="numpy", dtype="float64", seed=2, threads=1)
    gpu = npvit.ViT(cfg, backend="cupy", dtype="float64", seed=2)
    expected = [cpu.forward(images), cpu.forward(images, training=True), cpu.backward(dlogits)]
    host_syncs.reset()
    got = [gpu.forward(to_fake(images)), gpu.forward(to_fake(images), training=True)]
    got.append(gpu.backward(to_fake(dlogits)))
    assert host_syncs.gets == 0 and host_syncs.uploads == 0
    assert_same(expected, from_fake(got), rtol=1e-11, atol=1e-12)
    for name, grad in cpu.grads.items():
        np.testing.assert_allclose(from_fake(gpu.grads[name]), grad, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("clip_norm", [None, 0.5])
def test_training_step_with_dropout_and_adamw_has_no_host_sync(fake_cupy, host_syncs, clip_norm) -> None:
    # forward with dropout, loss, backward, AdamW (fused, norm and clip factor on the device): strict mode.
    cfg = npvit.ViTConfig.tiny()
    rng = np.random.default_rng(6)
    images, labels = rng.standard_normal((4, 8, 8, 3)), rng.integers(0, cfg.num_classes, 4)
    models = {}
    for name, convert in (("numpy", np.asarray), ("cupy", to_fake)):
        model = npvit.ViT(cfg, backend=name, dtype="float64", seed=3, threads=1)
        opt = npvit.AdamW(model.params, clip_norm=clip_norm, exclude_from_decay=model.no_decay_names())
        host_syncs.reset()
        for step in range(2):
            logits = model.forward(convert(images), training=True, dropout_seed=step)
            loss, cache = cross_entropy_forward(logits, convert(labels))
            model.backward(cross_entropy_backward(cache))
            norm = opt.step(model.grads)
        models[name] = (model, norm)
    assert host_syncs.gets == 0 and host_syncs.uploads == 0
    (cpu, cpu_norm), (gpu, gpu_norm) = models["numpy"], models["cupy"]
    assert isinstance(gpu_norm, fake_cupy.cupy.ndarray) and gpu_norm.shape == ()
    # NumPy and CuPy draw their keyed dropout masks from different streams, so the two runs differ; both
    # took two AdamW steps of at most about lr = 1e-3 per parameter from the same start.
    start = npvit.ViT(cfg, backend="numpy", dtype="float64", seed=3).params
    for name, p in start.items():
        moved = np.abs(from_fake(gpu.params[name]) - p).max()
        assert 0 < moved < 3e-3 and 0 < np.abs(cpu.params[name] - p).max() < 3e-3, name
    assert np.isfinite(from_fake(gpu_norm)) and np.isfinite(cpu_norm)


def test_adamw_gpu_path_equals_numpy(fake_cupy, host_syncs) -> None:
    cfg = npvit.ViTConfig.tiny()
    rng = np.random.default_rng(7)
    cpu = npvit.ViT(cfg, backend="numpy", dtype="float64", seed=4, threads=1)
    gpu = npvit.ViT(cfg, backend="cupy", dtype="float64", seed=4)
    opts = [npvit.AdamW(m.params, clip_norm=0.3, exclude_from_decay=m.no_decay_names()) for m in (cpu, gpu)]
    for step in range(3):
        grads = {name: rng.standard_normal(p.shape) for name, p in cpu.params.items()}
        host_syncs.reset()
        norms = [opts[0].step(grads), opts[1].step({k: to_fake(g) for k, g in grads.items()})]
        assert host_syncs.gets == 0 and host_syncs.uploads == 0
        np.testing.assert_allclose(from_fake(norms[1]), norms[0], rtol=1e-13)
    for name, p in cpu.params.items():
        np.testing.assert_allclose(from_fake(gpu.params[name]), p, rtol=1e-12, atol=1e-14, err_msg=name)


# ------------------------------------------------------------------------------------------ augmentation
def test_augmenter_gpu_path_has_no_sync_and_equals_numpy(fake_cupy, host_syncs) -> None:
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (5, 9, 9, 3), dtype=np.uint8)
    aug = Augmenter(rng.random(3) * 100, rng.random(3) * 900 + 10, image_size=12, dtype="float64")
    # The same draws on both paths: a NumPy generator, whose draws the GPU path uploads.
    expected = aug(images, training=True, rng=np.random.default_rng(7))
    got = aug(to_fake(images), training=True, rng=np.random.default_rng(7))
    assert_same(expected, from_fake(got), rtol=1e-11, atol=1e-11)
    # Device generators and extreme factors (full turns, zooms from 0 to 2x): no sync either.
    wild = Augmenter(np.zeros(3), np.ones(3), image_size=12, rotation=1.0, zoom=1.0, dtype="float32")
    backend = npvit.get_backend("cupy")
    host_syncs.reset()
    for seed in range(3):
        out = wild(to_fake(images), training=True, rng=backend.rng(seed))
    assert host_syncs.gets == 0 and out.shape == (5, 12, 12, 3)


def test_crop_gpu_path_has_no_sync_and_equals_numpy(fake_cupy, host_syncs) -> None:
    rng = np.random.default_rng(9)
    images = rng.integers(0, 256, (7, 9, 9, 3), dtype=np.uint8)
    aug = Augmenter(rng.random(3) * 100, rng.random(3) * 900 + 10, image_size=12, dtype="float64", crop_padding=4)
    expected = aug(images, training=True, rng=np.random.default_rng(3))
    host_syncs.reset()
    got = aug(to_fake(images), training=True, rng=np.random.default_rng(3), first=0, total=7)
    assert host_syncs.gets == 0
    assert_same(expected, from_fake(got), rtol=1e-11, atol=1e-11)
    part = aug(to_fake(images[2:5]), training=True, rng=np.random.default_rng(3), first=2, total=7)
    assert_same(expected[2:5], from_fake(part), rtol=1e-11, atol=1e-11)
    # Device generators: offsets drawn, floored and used on the device, nothing read back.
    backend = npvit.get_backend("cupy")
    crop_only = Augmenter(np.zeros(3), np.ones(3), image_size=9, flip=False, rotation=0, zoom=0, crop_padding=4)
    host_syncs.reset()
    out = crop_only(to_fake(images), training=True, rng=backend.rng(1))
    assert host_syncs.gets == 0 and out.shape == (7, 9, 9, 3)
    dy, dx = draw_crops(7, 4, backend.rng(1), fake_cupy.cupy)
    assert host_syncs.gets == 0
    reference = np.stack([np.pad(images[b], ((4, 4), (4, 4), (0, 0)))[i : i + 9, j : j + 9]
                          for b, (i, j) in enumerate(zip(from_fake(dy), from_fake(dx)))])
    np.testing.assert_array_equal(from_fake(out), reference.astype(np.float32))


@pytest.mark.parametrize("angle", [-0.02 * 2 * np.pi, 0.02 * 2 * np.pi, 2.5, -3.1])
def test_resampler_padding_from_host_bounds_equals_numpy(fake_cupy, angle) -> None:
    # On a GPU the padding comes from a host-side bound (rotation_reach) or, without one, from folding.
    from npvit.data.affine import rotation_reach

    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 10, 13, 2))
    mats = rotation_matrices(np.array([angle, -angle]), 10, 13)
    expected = affine_resample(x, mats)
    reach = rotation_reach((-abs(angle) / (2 * np.pi), abs(angle) / (2 * np.pi)), 10, 13)
    assert_same(expected, from_fake(affine_resample(to_fake(x), to_fake(mats), reach)), rtol=1e-10, atol=1e-11)
    assert_same(expected, from_fake(affine_resample(to_fake(x), to_fake(mats))), rtol=1e-10, atol=1e-11)


# ------------------------------------------------------------------------------------ the training step
def _train_step_run(backend_name: str, steps: int, cfg: npvit.ViTConfig, augment: bool, dtype: str,
                    crop_padding: int = 0, mix: tuple[float, float] = (0.0, 0.0)):
    """``steps`` steps of npvit.train.step on one backend, from a DeviceDataset, with clipping and decay
    exclusion, and Mixup/CutMix alphas ``mix``; returns (model, sums, (gets, uploads) counted during the steps)."""
    from fakecupy import SYNCS  # the counters of the installed fake

    from npvit.train.step import RunningSums, StepSettings, train_step

    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (12, cfg.image_size, cfg.image_size, cfg.channels), dtype=np.uint8)
    y = rng.integers(0, cfg.num_classes, 12)
    backend = npvit.get_backend(backend_name)
    model = npvit.ViT(cfg, backend=backend, dtype=dtype, seed=5, threads=1)
    opt = npvit.AdamW(model.params, clip_norm=0.5, exclude_from_decay=model.no_decay_names())
    aug = Augmenter(np.full(3, 120.0), np.full(3, 3600.0), image_size=cfg.image_size, flip=augment,
                    rotation=0.05 if augment else 0.0, zoom=0.2 if augment else 0.0, dtype=dtype,
                    crop_padding=crop_padding)
    data = DeviceDataset(backend, x, y, cfg.num_classes)
    sums = RunningSums(backend.xp)
    SYNCS.reset()
    for step in range(steps):
        batch = np.arange(4 * step, 4 * step + 4) % len(x)
        train_step(model, opt, aug, data, batch, step,
                   StepSettings(seed=3, mixup=mix[0], cutmix=mix[1]), sums)
    return model, sums, (SYNCS.gets, SYNCS.uploads)


def test_training_steps_read_nothing_from_the_device(fake_cupy, host_syncs) -> None:
    """npvit.train.step itself (augmentation, forward with dropout, loss, backward, clipping, AdamW, the running
    sums) N times on the GPU path, strict: any implicit read raises. What goes up is small and never waits:
    the batch's indices, once per step for the images and the labels together, and, once, augmentation's
    constant tables (interpolation taps, pixel grids, the neighbours' corner offsets)."""
    cfg = npvit.ViTConfig.tiny()
    steps = 4
    model, sums, (gets, uploads) = _train_step_run("cupy", steps, cfg, augment=True, dtype="float32")
    assert gets == 0
    assert uploads <= steps + 8
    loss_sum, correct, nonfinite, first_nonfinite = sums.read()  # the loop's one read, now and then
    assert host_syncs.gets == 1
    assert np.isfinite(loss_sum) and loss_sum > 0 and 0 <= correct <= 4 * steps
    assert nonfinite == 0 and first_nonfinite == -1


def test_training_steps_with_mixing_read_nothing_from_the_device(fake_cupy, host_syncs) -> None:
    """The same with Mixup and CutMix on: draws, boxes, mixed images, soft targets and their loss stay on the
    device. What goes up besides the batch's indices: the two Beta draws' shape parameters, scalars that
    CuPy's Generator.beta uploads; once, augmentation's constant tables."""
    cfg = npvit.ViTConfig.tiny()
    steps = 4
    _, sums, (gets, uploads) = _train_step_run("cupy", steps, cfg, augment=True, dtype="float32", mix=(0.8, 1.0))
    assert gets == 0
    assert uploads <= (1 + 4) * steps + 8
    loss_sum, correct, nonfinite, _ = sums.read()
    assert np.isfinite(loss_sum) and loss_sum > 0 and 0 <= correct <= 4 * steps and nonfinite == 0


def test_mixing_gpu_path_has_no_sync_and_equals_numpy(fake_cupy, host_syncs) -> None:
    from npvit.kernels import soft_cross_entropy_backward, soft_cross_entropy_forward
    from npvit.data.mix import draw_mix, mix_images, mix_targets
    from npvit.train.step import StepSettings, mix_slice

    cp = fake_cupy.cupy
    rng = np.random.default_rng(12)
    images, labels, logits = rng.standard_normal((7, 6, 9, 3)), rng.integers(0, 5, 7), rng.standard_normal((7, 5))

    def run(xp, convert):  # a host generator: the same draws on both paths, uploaded on the GPU path
        draws = draw_mix(7, 6, 9, 0.8, 1.0, np.random.default_rng(2), xp)
        mixed = mix_images(convert(images), convert(images[::-1]), draws)
        targets = mix_targets(convert(labels), convert(labels[::-1]), draws.lam, 5, 0.1, "float64")
        loss, cache = soft_cross_entropy_forward(convert(logits), targets)
        return [draws.lam, mixed, targets, loss, soft_cross_entropy_backward(cache, 0.5)]

    expected = run(np, np.asarray)
    host_syncs.reset()
    got = run(cp, to_fake)
    assert host_syncs.gets == 0
    assert_same(expected, from_fake(got), rtol=1e-13, atol=1e-15)
    # A device generator: drawn, boxed and mixed on the device, nothing read back; what goes up is the Beta
    # draws' shape parameters (two scalars per draw, as CuPy's Generator.beta takes them).
    backend = npvit.get_backend("cupy")
    device_images = to_fake(images)
    host_syncs.reset()
    for seed in range(3):
        draws = draw_mix(7, 6, 9, 0.8, 1.0, backend.rng(seed), cp)
        mixed = mix_images(device_images, device_images[::-1], draws)
    assert host_syncs.gets == 0 and host_syncs.uploads == 3 * 2 * 2 and mixed.shape == images.shape
    # A rank's slice whose partners are another rank's rows: gathered and augmented on the device.
    x = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 12)
    aug = Augmenter(np.full(3, 120.0), np.full(3, 3600.0), image_size=8, crop_padding=2, dtype="float32")
    data = DeviceDataset(backend, x, y, 4)
    batch, part = np.arange(9), slice(0, 5)
    settings = StepSettings(seed=1, mixup=0.8, cutmix=1.0)
    host_syncs.reset()
    own = aug(data.images[batch[part]], training=True, rng=backend.rng(0), first=0, total=9)
    mixed, targets = mix_slice(aug, data, batch, part, own, data.labels[batch[part]], 0,
                               settings, 4, backend)
    assert host_syncs.gets == 0 and mixed.shape == (5, 8, 8, 3) and targets.shape == (5, 4)


def test_training_steps_on_the_gpu_path_compute_what_numpy_computes(fake_cupy) -> None:
    """Without dropout and augmentation (whose random streams differ by backend) the GPU path's steps give the
    NumPy path's weights and sums, float64."""
    cfg = dataclasses.replace(npvit.ViTConfig.tiny(), dropout=0.0, attention_dropout=0.0, head_dropout=0.0)
    cpu, cpu_sums, _ = _train_step_run("numpy", 3, cfg, augment=False, dtype="float64")
    gpu, gpu_sums, _ = _train_step_run("cupy", 3, cfg, augment=False, dtype="float64")
    np.testing.assert_allclose(gpu_sums.read()[0], cpu_sums.read()[0], rtol=1e-12)
    assert gpu_sums.read()[1:] == cpu_sums.read()[1:]
    np.testing.assert_allclose(from_fake(gpu.params.flat), cpu.params.flat, rtol=1e-10, atol=1e-13)


def test_the_fast_recipes_model_and_crop_run_on_the_gpu_path(fake_cupy, host_syncs) -> None:
    """What --recipe fast adds to the Keras recipe (mean pooling into one linear layer, tanh GELU, random crop
    instead of rotation and zoom) reads nothing from the device, and without the crop computes NumPy's."""
    cfg = dataclasses.replace(npvit.ViTConfig.tiny(), pool="gap", gelu="tanh", head_units=(), dropout=0.0,
                              attention_dropout=0.0, head_dropout=0.0)
    _, sums, (gets, _) = _train_step_run("cupy", 3, cfg, augment=False, dtype="float32", crop_padding=2)
    assert gets == 0 and sums.read()[2] == 0
    cpu, cpu_sums, _ = _train_step_run("numpy", 3, cfg, augment=False, dtype="float64")
    gpu, gpu_sums, _ = _train_step_run("cupy", 3, cfg, augment=False, dtype="float64")
    np.testing.assert_allclose(gpu_sums.read()[0], cpu_sums.read()[0], rtol=1e-12)
    np.testing.assert_allclose(from_fake(gpu.params.flat), cpu.params.flat, rtol=1e-10, atol=1e-13)


def test_adamw_operations_do_not_grow_with_the_number_of_parameters(fake_cupy, monkeypatch) -> None:
    """A launch-count proxy: the array operations of one AdamW step on the GPU path (each would be at least one
    kernel) are the same in number for a model of 1 block and of 6 blocks (73 against 283 parameters)."""
    import fakecupy

    import npvit.optim.adamw as optim

    made, kernels, inside = [], [], []
    real_wrap = fakecupy._wrap
    monkeypatch.setattr(fakecupy, "_wrap", lambda value: (None if inside else made.append(1)) or real_wrap(value))
    real_fuse = fake_cupy.modules["cupy"].fuse

    def counting_fuse(*args, **kwargs):  # a fused function is one kernel: count it once, not its operations
        def decorate(fn):
            fused = real_fuse(*args, **kwargs)(fn)

            def run(*a):
                kernels.append(kwargs.get("kernel_name"))
                inside.append(1)
                try:
                    return fused(*a)
                finally:
                    inside.pop()
            return run
        return decorate

    monkeypatch.setattr(fake_cupy.modules["cupy"], "fuse", counting_fuse)
    monkeypatch.setattr(optim, "_FUSED", {})
    monkeypatch.setattr(optim, "_FUSED_SQUARES", {})
    counts = {}
    for depth in (1, 6):
        model = npvit.ViT(dataclasses.replace(npvit.ViTConfig.tiny(), depth=depth), backend="cupy")
        model.grads.flat[...] = to_fake(np.random.default_rng(0).standard_normal(model.grads.flat.shape), "float32")
        opt = npvit.AdamW(model.params, clip_norm=1.0, exclude_from_decay=model.no_decay_names())
        opt.step(model.grads)  # the first step builds the fused kernels and the decay mask
        made.clear()
        kernels.clear()
        opt.step(model.grads)
        counts[depth] = (len(made), sorted(kernels), len(model.params))
    assert counts[1][2] < counts[6][2]
    assert counts[1][:2] == counts[6][:2]
    assert counts[1][1] == ["npvit_adamw", "npvit_sum_of_squares"]
    assert counts[1][0] <= 8  # outside the two kernels: sqrt, isfinite, the clip factor's divide and min
