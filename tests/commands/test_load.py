"""``npvit.load``: the one loader every command uses, from a run folder or a checkpoint file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import npvit
from npvit.checkpoint import CheckpointError
from npvit.train import main as train_main
from training_runs import ONE_EPOCH

TINY = ONE_EPOCH


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("load") / "run"
    assert train_main([*TINY, "--out", str(out)]) == 0
    return out


def test_a_run_folder_and_its_best_checkpoint_load_the_same_model(run: Path) -> None:
    from_folder, from_file = npvit.load(run), npvit.load(run / "best.npz")
    assert from_folder.path == run / "best.npz" and isinstance(from_folder, npvit.LoadedModel)
    for name, p in from_folder.model.params.items():
        np.testing.assert_array_equal(p, from_file.model.params[name])
    assert from_folder.config.num_classes == 3 and from_folder.native_size == 16
    assert from_folder.class_names == ["class_0", "class_1", "class_2"]
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    batch = from_folder.model_input(images)  # normalised with the run's statistics, resized to the model's 8x8
    assert batch.shape == (2, 8, 8, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(from_folder.model.forward(batch), from_file.model.forward(batch))


def test_load_keeps_the_dtype_asked_for(run: Path) -> None:
    assert npvit.load(run, dtype="float64").model.dtype == np.float64


def test_what_is_not_a_model_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a .npz"):
        npvit.load(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        npvit.load(tmp_path)
