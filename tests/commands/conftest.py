"""The run folder the command fault tests load: a tiny model trained for one epoch on synthetic data, once per
test session. Test files that need a run trained with other flags define their own ``run``, which wins."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_runs import TINY

from npvit.train import command as train_cli


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for one epoch on synthetic data: a run folder with best.npz and last.npz."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert train_cli.main([*TINY, "--out", str(out)]) == 0
    return out
