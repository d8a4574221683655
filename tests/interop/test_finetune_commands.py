"""The commands with a timm file: ``npvit.train --init-from FILE --arch ARCH`` fine-tunes it, ``predict`` and
``visualize`` take it with ``--arch`` (ImageNet's names for a 1000-class head, timm's preprocessing)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import npvit
from npvit.interop import load_timm
from npvit.train import main as train_main

pytest.importorskip("safetensors", reason="safetensors is not installed: pip install 'npvit[interop]'")
Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed: pip install 'npvit[viz]'")
ARCH = "vit_tiny_patch16_224"
DATA = ["--dataset", "synthetic", "--synthetic-size", "64,16", "--synthetic-image-size", "16",
        "--synthetic-classes", "3", "--epochs", "1", "--batch-size", "32", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-block vit_tiny_patch16_224 at 32x32 pixels in timm's names, with a 1000-class head (no timm needed)."""
    from safetensors.numpy import save_file

    from npvit.interop.timm_names import to_timm

    cfg = dataclasses.replace(npvit.ViTConfig.timm(ARCH, image_size=32), depth=2)
    model = npvit.ViT(cfg, dtype="float32", seed=4)
    rng = np.random.default_rng(0)
    for p in model.params.values():
        p += rng.standard_normal(p.shape).astype(np.float32) * 0.05
    path = tmp_path_factory.mktemp("timm") / "vit_tiny.safetensors"
    save_file(to_timm(dict(model.params.items()), cfg), str(path))
    return path


def test_fine_tuning_starts_from_the_file(tmp_path: Path, timm_file: Path) -> None:
    out = tmp_path / "run"
    status = train_main([*DATA, "--arch", ARCH, "--init-from", str(timm_file), "--image-size", "32",
                         "--learning-rate", "0", "--out", str(out)])  # lr 0: the weights stay the file's
    assert status == 0
    run = json.loads((out / "config.json").read_text())["run"]
    assert (run["recipe"], run["lr_schedule"], run["crop_padding"], run["init_from"]) == ("finetune", "cosine", 4,
                                                                                         str(timm_file))
    loaded = npvit.load(out)
    assert loaded.config.arrangement == "timm" and loaded.config.depth == 2 and loaded.config.num_classes == 3
    np.testing.assert_allclose(loaded.augmenter.mean, [127.5] * 3)  # the arch's (x / 255 - 0.5) / 0.5
    start = load_timm(timm_file, ARCH, num_classes=3, seed=0)
    for name, p in start.params.items():
        if not name.startswith("head."):  # the new head is the run's own draw
            np.testing.assert_array_equal(loaded.model.params[name], p, err_msg=name)


@pytest.mark.parametrize("flags, message", [
    (["--global-pool", "avg"], "--global-pool needs --arch"),
    (["--init-from", "x.safetensors"], "--init-from: "),  # without --arch: read as an npvit export, not found
    (["--arch", ARCH, "--projection-dim", "64"], "fixes the model: --projection-dim"),
    (["--arch", ARCH, "--preset", "tiny"], "fixes the model: --preset"),
    (["--arch", ARCH, "--init-from", "absent.safetensors"], "--init-from: absent.safetensors: no such file"),
])
def test_fine_tuning_flags_that_do_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str],
                                           message: str) -> None:
    assert train_main([*DATA, *flags, "--out", str(tmp_path / "bad")]) == 2
    assert message in capsys.readouterr().err


def test_predict_a_timm_file_with_imagenet_names(tmp_path: Path, timm_file: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    from npvit.predict import main as predict_main

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert predict_main([str(timm_file), str(tmp_path / "a.png"), "--arch", ARCH, "--json", "--top-k", "2"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    names = npvit.interop.imagenet_class_names()
    assert len(result["predictions"]) == 2 and result["predictions"][0]["class"] in names
    # the same as the model fed timm's preprocessing of the file by hand
    model = load_timm(timm_file, ARCH)
    logits = model.forward(model.preprocess.batch([Image.open(tmp_path / "a.png")]))[0]
    assert result["predictions"][0]["class"] == names[int(np.argmax(logits))]


def test_visualize_the_attention_of_a_timm_file(tmp_path: Path, timm_file: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is not installed: pip install 'npvit[viz]'")
    from npvit.visualize.__main__ import main as visualize_main

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    for figure in ("attention", "rollout"):
        out = tmp_path / f"{figure}.png"
        assert visualize_main([figure, str(timm_file), str(tmp_path / "b.png"), "--arch", ARCH, "--out", str(out)]) == 0
        assert out.stat().st_size > 1000
    assert visualize_main(["attention", str(timm_file), "--arch", ARCH, "--out", str(tmp_path / "c.png")]) == 2
