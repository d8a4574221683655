"""Shared fixtures: every test that takes ``backend`` runs once per backend; CuPy skips, saying why, where
there is no GPU."""

from __future__ import annotations

import numpy as np
import pytest

import npvit
from npvit.backend import BackendUnavailableError


@pytest.fixture(params=["numpy", "cupy"])
def backend(request: pytest.FixtureRequest) -> npvit.Backend:
    try:
        return npvit.get_backend(request.param)
    except BackendUnavailableError as exc:
        pytest.skip(f"{request.param} backend unavailable: {str(exc).split('. ')[0]}")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
