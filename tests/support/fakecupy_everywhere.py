"""pytest plugin: the fake CuPy for a whole run, so that every test's "cupy" case takes npvit's GPU code path.

    PYTHONPATH=.:tests/support python -m pytest -p fakecupy_everywhere tests/

The conftest's ``backend`` fixture then finds a working "cupy" backend, and each backend-parametrised test
runs once more on npvit's CuPy branches (on the CPU, through tests/support/fakecupy.py). Host synchronisations are
allowed here and recorded, since the tests read results back; what this run checks is that the GPU path
computes the same values, uses only what CuPy offers and never hands a device array to NumPy (which CuPy
refuses). Tests that forbid synchronisations are in tests/backend/test_gpu_path.py.
"""

from __future__ import annotations

import pytest

import fakecupy


def pytest_configure(config: pytest.Config) -> None:
    fakecupy.install()
    fakecupy.SYNCS.strict = False


def pytest_unconfigure(config: pytest.Config) -> None:
    fakecupy.uninstall()
