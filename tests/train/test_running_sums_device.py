"""RunningSums on the CuPy path (one kernel per step, on the fake CuPy) counts what the NumPy path counts."""

from __future__ import annotations

import numpy as np

from fakecupy import LAUNCHES, fake_cupy, to_fake  # noqa: F401 (fixtures)

from npvit.train.step import RunningSums


def test_device_running_sums_equal_numpys_in_one_kernel_per_step(fake_cupy) -> None:
    steps = [(0.7, 3, True), (np.nan, 1, False), (1.3, 2, True), (np.inf, 0, False), (0.2, 4, True)]
    host, device = RunningSums(np, 1.25, 5), RunningSums(fake_cupy.cupy, 1.25, 5)
    LAUNCHES.reset()
    for step, (loss, correct, finite) in enumerate(steps, start=10):
        host.add(step, np.asarray(loss, np.float32), 8, np.asarray(correct, np.int64), np.asarray(finite))
        device.add(step, to_fake(loss, np.float32), 8, to_fake(correct, np.int64), to_fake(finite))
    assert LAUNCHES.total == len(steps)
    got, expected = device.read(), host.read()
    assert got[1:] == expected[1:] == (15, 2, 11)
    assert np.isnan(got[0]) and np.isnan(expected[0])
    clean, clean_host = RunningSums(fake_cupy.cupy), RunningSums(np)
    for step, loss in enumerate((0.7, 1.3)):
        clean.add(step, to_fake(loss, np.float32), 8, to_fake(1, np.int64), to_fake(True))
        clean_host.add(step, np.asarray(loss, np.float32), 8, np.asarray(1, np.int64), np.asarray(True))
    assert clean.read() == clean_host.read()
