"""The fake CuPy waits where CuPy 14's source waits, and counts the kernels a GPU would launch."""

from __future__ import annotations

import numpy as np
import pytest

from fakecupy import LAUNCHES, HostSyncError, emulate_kernel, fake_cupy, from_fake, host_syncs, to_fake  # noqa: F401

from npvit.backend import bin_counts


@pytest.mark.parametrize("call", [
    lambda cp, a: cp.bincount(a),  # (x < 0).any() and int(cupy.max(x)) in cupy/_statistics/histogram.py
    lambda cp, a: cp.histogram(a, bins=4),  # range from min() and max(), bin edges checked on the host
    lambda cp, a: cp.nonzero(a), lambda cp, a: a.nonzero(), lambda cp, a: cp.flatnonzero(a),
    lambda cp, a: cp.argwhere(a), lambda cp, a: cp.unique(a),  # a data-dependent size
    lambda cp, a: a[a > 1],  # boolean-mask indexing: the same
    lambda cp, a: a.sum().item(), lambda cp, a: int(a.max()), lambda cp, a: bool(a.any()),
    lambda cp, a: float(a.mean()), lambda cp, a: repr(a), lambda cp, a: str(a), lambda cp, a: f"{a.sum():.3f}",
], ids=["bincount", "histogram", "nonzero", "ndarray.nonzero", "flatnonzero", "argwhere", "unique", "mask",
        "item", "int", "bool", "float", "repr", "str", "format"])
def test_fake_raises_where_cupy_waits_for_the_device(fake_cupy, host_syncs, call) -> None:
    a = to_fake(np.array([0, 3, 1, 2, 3]))
    with pytest.raises(HostSyncError):
        call(fake_cupy.cupy, a)
    with host_syncs.recording():
        call(fake_cupy.cupy, a)
    assert host_syncs.sites  # recorded, with the line that did it


def test_bin_counts_is_bincount_without_a_host_read(fake_cupy, host_syncs) -> None:
    index = np.random.default_rng(0).integers(0, 50, (7, 9))
    expected = np.bincount(index.reshape(-1), minlength=60)
    np.testing.assert_array_equal(bin_counts(index, 60), expected)
    LAUNCHES.reset()
    got = bin_counts(to_fake(index), 60)  # strict: a host read would raise
    assert host_syncs.gets == 0 and LAUNCHES.total == 2  # zeros, scatter-add
    np.testing.assert_array_equal(from_fake(got), expected)


def test_fake_counts_the_kernels_a_gpu_would_launch(fake_cupy) -> None:
    cp = fake_cupy.cupy
    a, b = to_fake(np.ones((4, 3))), to_fake(np.ones((3, 2)))
    LAUNCHES.reset()
    c = a * 2 + 1  # two elementwise kernels
    c.sum(axis=0)  # a reduction
    a @ b  # a matrix product
    c.copy()
    a.reshape(3, 4), a.T, a[1:]  # views: nothing
    a.T.reshape(-1)  # a non-contiguous array made flat: a copy
    c[0] = 5.0  # a fill of a slice
    assert LAUNCHES.counts == {"elementwise": 2, "reduction": 1, "matmul": 1, "copy": 3}

    @cp.fuse()
    def fused(x, y):
        return x * y + x - y  # three operations, one kernel

    emulate_kernel("twice", lambda x, y: np.multiply(x, 2, out=y))
    twice = cp.ElementwiseKernel("T x", "T y", "y = 2 * x", "twice")
    raw = cp.RawKernel("extern \"C\" __global__ void twice(...) {}", "twice")
    LAUNCHES.reset()
    fused(a, a)
    out = cp.empty_like(a)
    twice(a, out)
    raw((1,), (32,), (a, out))
    cp.random.default_rng(0).random((3,))
    assert LAUNCHES.counts == {"kernel": 4} and from_fake(out).tolist() == [[2.0] * 3] * 4


def test_evaluation_reads_the_device_once_per_pass(fake_cupy, host_syncs) -> None:
    """evaluate() keeps its sums on the device and reads them back once, after the last batch; it gives what
    the NumPy path gives."""
    import npvit
    from npvit.data.augment import Augmenter
    from npvit.evaluate import evaluate

    cfg = npvit.ViTConfig.tiny()
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (10, cfg.image_size, cfg.image_size, cfg.channels), dtype=np.uint8)
    y = rng.integers(0, cfg.num_classes, 10)
    aug = Augmenter(np.full(3, 120.0), np.full(3, 3600.0), image_size=cfg.image_size, dtype="float64")
    expected = evaluate(npvit.ViT(cfg, dtype="float64", seed=2), aug, x, y, batch_size=4, flip=True)
    model = npvit.ViT(cfg, backend="cupy", dtype="float64", seed=2)
    host_syncs.reset()
    got = evaluate(model, aug, x, y, batch_size=4, flip=True)  # strict: an implicit read raises
    assert host_syncs.gets == 1
    np.testing.assert_allclose(got.loss, expected.loss, rtol=1e-12)
    assert (got.top1, got.top5) == (expected.top1, expected.top5)
    np.testing.assert_array_equal(got.per_class, expected.per_class)


def test_ema_swap_on_the_gpu_is_three_launches_and_exact(fake_cupy, host_syncs) -> None:
    from npvit.optim.ema import _CHUNK, swap_contents

    a0, b0 = np.random.default_rng(1).standard_normal((2, 3 * _CHUNK + 5)).astype(np.float32)
    a, b = to_fake(a0), to_fake(b0)
    LAUNCHES.reset()
    swap_contents(a, b)
    assert LAUNCHES.total == 3 and host_syncs.gets == 0
    np.testing.assert_array_equal(from_fake(a), b0)
    np.testing.assert_array_equal(from_fake(b), a0)


def test_column_sum_is_two_stage_on_the_gpu_and_numpys_sum_on_numpy(fake_cupy) -> None:
    from npvit.backend import COLUMN_CHUNK, column_sum

    x = np.random.default_rng(2).standard_normal((5 * COLUMN_CHUNK + 17, 64))
    np.testing.assert_array_equal(column_sum(x), x.sum(axis=0))  # NumPy: the very same call
    LAUNCHES.reset()
    got = column_sum(to_fake(x))
    assert LAUNCHES.counts == {"reduction": 3, "elementwise": 1}  # two stages, the rows left over, their add
    np.testing.assert_allclose(from_fake(got), x.sum(axis=0), rtol=1e-12, atol=1e-12)
    LAUNCHES.reset()
    column_sum(to_fake(x[:5 * COLUMN_CHUNK]))
    assert LAUNCHES.counts == {"reduction": 2}
