"""``python -m npvit.export SOURCE OUT``: a run folder, a timm file with --arch, an export; bad input is one
line and status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npvit
from npvit.export import main as export_main
from npvit.train import main as train_main
from training_runs import ONE_EPOCH
from timm_models import measured, relative

pytest.importorskip("safetensors", reason="safetensors is not installed: pip install 'npvit[interop]'")
TINY = ONE_EPOCH


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    assert train_main([*TINY, "--out", str(out)]) == 0
    return out


def test_a_run_exported_and_read_back(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert export_main([str(run), str(tmp_path / "run.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    original, again = npvit.load(run), npvit.load(tmp_path / "run.safetensors")
    assert again.config == original.config and again.class_names == original.class_names
    assert again.native_size == original.native_size == 16
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(again.model.forward(again.model_input(images)),
                                  original.model.forward(original.model_input(images)))
    assert export_main([str(tmp_path / "run.safetensors"), str(tmp_path / "again.onnx")]) == 0  # an export


def test_a_run_as_onnx_through_the_module(run: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    pytest.importorskip("onnx", reason="onnx is not installed: pip install 'npvit[interop]'")
    done = subprocess.run([sys.executable, "-m", "npvit.export", str(run), str(tmp_path / "run.onnx")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = npvit.load(run)
    x = loaded.model_input(np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    (logits,) = ort.InferenceSession(str(tmp_path / "run.onnx")).run(["logits"], {"images": np.asarray(x)})
    assert measured("ONNX in onnxruntime against npvit float32: logits", relative(logits, loaded.model.forward(x))) \
        <= 1e-5


def test_a_timm_file_at_its_real_size_goes_back_to_timm(tmp_path: Path) -> None:
    """vit_tiny_patch16_224 whole: timm's file -> npvit -> .safetensors, which timm.create_model loads strictly
    as the arch's pretrained weights, with the same logits."""
    timm = pytest.importorskip("timm", reason="timm is not installed")
    from timm_models import random_timm, save_safetensors, timm_logits

    tm = random_timm("vit_tiny_patch16_224")
    source = save_safetensors(tm, tmp_path / "timm.safetensors")
    out = tmp_path / "npvit.safetensors"
    assert export_main([str(source), str(out), "--arch", "vit_tiny_patch16_224"]) == 0
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    loaded = npvit.load(out, dtype="float64")
    assert loaded.class_names[0] == "tench, Tinca tinca" and loaded.preprocess.crop_pct == 0.9
    x = np.random.default_rng(0).standard_normal((2, 224, 224, 3))
    assert measured("npvit .safetensors export -> timm.create_model: logits, float64",
                    relative(loaded.model.forward(x), timm_logits(theirs, x))) <= 1e-10


@pytest.mark.parametrize("argv, message", [
    (["{run}", "{tmp}/model.h5"], "expected one of .safetensors, .onnx, .pt"),
    (["{tmp}/absent", "{tmp}/m.onnx"], "no checkpoint at"),
    (["{run}", "{tmp}/m.onnx", "--num-classes", "3"], "give its --arch"),
    (["{tmp}/weights.bin", "{tmp}/m.onnx", "--arch", "vit_tiny_patch16_224"], "pickle file"),
])
def test_bad_input_is_one_line_and_status_2(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            argv: list[str], message: str) -> None:
    args = [a.format(run=run, tmp=tmp_path) for a in argv]
    assert export_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_an_export_without_a_run_is_not_evaluated(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from npvit.evaluate import main as evaluate_main

    model = npvit.ViT(npvit.ViTConfig.tiny())
    path = npvit.export(model, tmp_path / "bare.safetensors",
                        normalization={"mean": [0.0] * 3, "variance": [1.0] * 3})
    assert evaluate_main([str(path)]) == 2
    assert "records no run" in capsys.readouterr().err
