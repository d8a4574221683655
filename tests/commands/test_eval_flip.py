"""Test-time flip (``--eval-flip``): the logits are the mean of the logits of each image and its mirror image,
element by element against a per-image reference; evaluation's loss and accuracies are those of that mean;
a training run records the setting, tests with it and ``npvit.evaluate`` follows the run; the GPU path
computes the same with no host synchronisation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import npvit
from fakecupy import fake_cupy, from_fake, host_syncs, to_fake  # noqa: F401 (fixtures)
from npvit import evaluate as evaluate_cli
from npvit.train import command as train_cli
from npvit.data.augment import Augmenter
from npvit.evaluate import evaluate, inference_logits

TINY = ["--dataset", "synthetic", "--synthetic-size", "64,48", "--synthetic-image-size", "16",
        "--synthetic-classes", "4", "--preset", "tiny", "--batch-size", "32", "--epochs", "2", "--threads", "1",
        "--quiet"]


def tiny_model(backend: str = "numpy") -> npvit.ViT:
    cfg = dataclasses.replace(npvit.ViTConfig.tiny(), dropout=0.0, attention_dropout=0.0, head_dropout=0.0)
    return npvit.ViT(cfg, backend=backend, dtype="float64", seed=3, **({"threads": 1} if backend == "numpy" else {}))


def mirror(image: np.ndarray) -> np.ndarray:
    """One (H, W, C) image with its columns in reverse order, column by column."""
    width = image.shape[1]
    return np.stack([image[:, width - 1 - j] for j in range(width)], axis=1)


def test_flip_logits_are_the_mean_of_the_image_and_its_mirror_image() -> None:
    model = tiny_model()
    x = np.random.default_rng(0).standard_normal((5, 8, 8, 3))
    got = inference_logits(model, x, flip=True)
    for b in range(len(x)):
        one = model.forward(x[b:b + 1])[0]
        mirrored = model.forward(mirror(x[b])[None])[0]
        np.testing.assert_allclose(got[b], (one + mirrored) / 2, rtol=1e-12, atol=1e-13)
    assert not np.allclose(got, model.forward(x))  # the model is not mirror-symmetric: the flip changes logits
    np.testing.assert_array_equal(inference_logits(model, x), model.forward(x))  # without flip: the forward


def test_evaluate_with_flip_scores_the_mean_logits() -> None:
    model = tiny_model()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (23, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, model.config.num_classes, 23)
    augmenter = Augmenter([120.0, 110.0, 100.0], [3000.0, 3100.0, 3200.0], image_size=8, dtype="float64")
    result = evaluate(model, augmenter, images, labels, batch_size=10, flip=True)
    # The reference: one image at a time, the loss from a log-softmax written out.
    losses, top1, top5 = [], 0, 0
    for image, label in zip(images, labels):
        x = augmenter(image[None], training=False)[0]
        z = (model.forward(x[None])[0] + model.forward(mirror(x)[None])[0]) / 2
        log_p = z - z.max() - np.log(np.exp(z - z.max()).sum())
        losses.append(-log_p[label])
        ranked = sorted(range(len(z)), key=lambda c: -z[c])
        top1 += ranked[0] == label
        top5 += label in ranked[:5]
    assert result.loss == pytest.approx(np.mean(losses), rel=1e-12)
    assert (result.top1, result.top5) == (top1 / 23, top5 / 23)
    assert result.loss != pytest.approx(evaluate(model, augmenter, images, labels, batch_size=10).loss, rel=1e-6)


def test_a_run_with_eval_flip_tests_with_it_and_evaluate_follows(tmp_path: Path, capsys) -> None:
    plain, flipped = tmp_path / "plain", tmp_path / "flip"
    assert train_cli.main([*TINY, "--out", str(plain)]) == 0
    assert train_cli.main([*TINY, "--eval-flip", "--out", str(flipped)]) == 0
    out = capsys.readouterr().out
    assert "test-time flip" in out
    config = json.loads((flipped / "config.json").read_text())
    assert config["run"]["eval_flip"] is True
    summary = json.loads((flipped / "summary.json").read_text())
    assert summary["eval_flip"] is True and "eval_flip" not in json.loads((plain / "summary.json").read_text())
    # The same weights were trained (the flip only changes evaluation), so best.npz differs only if the
    # validation picked another epoch; the last weights are the same.
    np.testing.assert_array_equal(np.load(plain / "last.npz", allow_pickle=False)["param/pos_embed"],
                                  np.load(flipped / "last.npz", allow_pickle=False)["param/pos_embed"])

    assert evaluate_cli.main([str(flipped), "--json"]) == 0  # default: as the run did
    followed = json.loads(capsys.readouterr().out)
    assert followed["eval_flip"] is True
    assert followed["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-6)
    assert followed["top1"] == summary["test"]["top1"]
    assert evaluate_cli.main([str(flipped), "--no-eval-flip", "--json"]) == 0
    unflipped = json.loads(capsys.readouterr().out)
    assert unflipped["eval_flip"] is False and unflipped["loss"] != pytest.approx(followed["loss"], rel=1e-6)
    assert evaluate_cli.main([str(plain), "--eval-flip"]) == 0
    assert "test-time flip" in capsys.readouterr().out


def test_eval_flip_gpu_path_has_no_sync_and_equals_numpy(fake_cupy, host_syncs) -> None:
    cpu, gpu = tiny_model("numpy"), tiny_model("cupy")
    x = np.random.default_rng(2).standard_normal((4, 8, 8, 3))
    expected = inference_logits(cpu, x, flip=True)
    host_syncs.reset()
    got = inference_logits(gpu, to_fake(x), flip=True)
    assert host_syncs.gets == 0 and host_syncs.uploads == 0
    np.testing.assert_allclose(from_fake(got), expected, rtol=1e-11, atol=1e-12)


def test_predict_follows_the_runs_flip(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    from npvit import predict as predict_cli
    from npvit.settings import load_run_dataset
    from npvit.visualize.inputs import load_model, probabilities

    out = tmp_path / "flip"
    assert train_cli.main([*TINY, "--eval-flip", "--out", str(out)]) == 0
    loaded = load_model(out)
    image = load_run_dataset(loaded.run, progress=False).x_test[0]
    pil.fromarray(image).save(tmp_path / "test0.png")  # lossless, at the native size: evaluation's input
    x = loaded.model_input(image[None])
    for flip, expected in ((None, inference_logits(loaded.model, x, True)), (False, loaded.model.forward(x))):
        [result] = predict_cli.predict_files(out, [tmp_path / "test0.png"], k=4, flip=flip)
        got = {p["class"]: p["probability"] for p in result["predictions"]}
        np.testing.assert_allclose([got[f"class_{i}"] for i in range(4)], probabilities(expected)[0], rtol=1e-6)
