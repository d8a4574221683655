"""Shared fixtures: every test that takes ``backend`` runs once per backend; CuPy skips, saying why, where
there is no GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import npvit
from npvit.backend import BackendUnavailableError

# The helpers every folder shares (the fake CuPy, tiny CIFAR archives, training runs, fresh processes, fault
# checks) live in tests/support/ and are imported by module name.
SUPPORT = Path(__file__).resolve().parent / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))


@pytest.fixture(params=["numpy", "cupy"])
def backend(request: pytest.FixtureRequest) -> npvit.Backend:
    try:
        return npvit.get_backend(request.param)
    except BackendUnavailableError as exc:
        pytest.skip(f"{request.param} backend unavailable: {str(exc).split('. ')[0]}")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The dataset cache in a temporary folder: a test never reads or fills the user's real one."""
    monkeypatch.setenv("NPVIT_CACHE", str(tmp_path / "default-cache"))


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001  (pytest's hook)
    """The worst differences the interop tests measured against the other libraries, one line per bridge."""
    worst = getattr(sys.modules.get("timm_models"), "WORST", None)
    if worst:
        terminalreporter.section("worst relative differences, npvit against the other side")
        for bridge, value in sorted(worst.items()):
            terminalreporter.write_line(f"{value:9.2e}  {bridge}")
