"""Test-time shifts (``--eval-shift``): each view is the image moved by whole pixels with a black border, element
by element against the zero-padded crop; the logits are the mean over the views (with the flip, their mirror
images too) against a per-image reference; a run tests with them, records them, a finished run re-tests with
them on --resume, and ``npvit.evaluate``, ``npvit.predict`` and a shipped model follow the run; a shift the
images cannot take is a clear error; the GPU path computes the same with no host synchronisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fakecupy import fake_cupy, from_fake, host_syncs, to_fake  # noqa: F401 (fixtures)
from npvit import evaluate as evaluate_cli
from npvit.train import command as train_cli
from npvit.data.augment import Augmenter
from npvit.evaluate import describe_views, evaluate, inference_logits, shift_offsets, shifted, view_logits
from test_eval_flip import TINY, mirror, tiny_model


def test_shifted_takes_each_pixel_from_its_offset_and_fills_black() -> None:
    images = np.random.default_rng(0).integers(1, 256, (2, 5, 7, 3), dtype=np.uint8)  # no zeros of its own
    for dy in range(-5, 6):
        for dx in range(-7, 8):
            got = shifted(images, dy, dx)
            assert got.shape == images.shape and got.dtype == images.dtype
            for i in range(5):
                for j in range(7):
                    inside = 0 <= i + dy < 5 and 0 <= j + dx < 7
                    expected = images[:, i + dy, j + dx] if inside else np.zeros((2, 3), np.uint8)
                    np.testing.assert_array_equal(got[:, i, j], expected)
            if abs(dy) <= 4 and abs(dx) <= 4:  # the training crop's window at (dy, dx) of the 4-pixel padding
                padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
                np.testing.assert_array_equal(got, padded[:, 4 + dy:9 + dy, 4 + dx:11 + dx])
    assert shift_offsets(0) == [(0, 0)]
    assert shift_offsets(2) == [(0, 0), (2, 2), (2, -2), (-2, 2), (-2, -2)]


@pytest.mark.parametrize("flip", [False, True])
def test_view_logits_are_the_mean_over_the_shifted_views(flip: bool) -> None:
    model = tiny_model()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    augmenter = Augmenter([120.0, 110.0, 100.0], [3000.0, 3100.0, 3200.0], image_size=8, dtype="float64")

    def preprocess(raw: np.ndarray) -> np.ndarray:
        return augmenter(raw, training=False)

    got = view_logits(model, preprocess, images, flip, shift=1)
    for b in range(len(images)):  # the reference: one image, one view at a time
        padded = np.pad(images[b], ((1, 1), (1, 1), (0, 0)))
        views = []
        for dy, dx in ((0, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)):
            x = preprocess(padded[1 + dy:9 + dy, 1 + dx:9 + dx][None])[0]
            views.append(model.forward(x[None])[0])
            if flip:
                views.append(model.forward(mirror(x)[None])[0])
        np.testing.assert_allclose(got[b], np.mean(views, axis=0), rtol=1e-12, atol=1e-13)
    one_view = inference_logits(model, preprocess(images), flip)
    assert not np.allclose(got, one_view)  # the shifted views change the logits
    np.testing.assert_array_equal(view_logits(model, preprocess, images, flip, shift=0), one_view)
    for bad in (-1, 8, 9):
        with pytest.raises(ValueError, match=f"shift of {bad} pixels does not fit 8x8 images"):
            view_logits(model, preprocess, images, flip, shift=bad)


def test_evaluate_with_shifts_scores_the_mean_logits() -> None:
    model = tiny_model()
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (13, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, model.config.num_classes, 13)
    augmenter = Augmenter([120.0, 110.0, 100.0], [3000.0, 3100.0, 3200.0], image_size=8, dtype="float64")
    result = evaluate(model, augmenter, images, labels, batch_size=5, flip=True, shift=2)
    z = view_logits(model, lambda raw: augmenter(raw, training=False), images, True, 2)  # (13, K), one batch
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    assert result.loss == pytest.approx(-log_p[np.arange(13), labels].mean(), rel=1e-12)
    assert result.top1 == np.mean(z.argmax(axis=1) == labels)
    assert describe_views(True, 2) == ", test-time flip and 2-pixel shifts (10 views)"
    assert describe_views(False, 1) == ", test-time 1-pixel shifts (5 views)"
    assert describe_views(True, 0) == ", test-time flip" and describe_views(False, 0) == ""


def test_a_run_with_eval_shift_tests_with_it_and_evaluate_follows(tmp_path: Path, capsys) -> None:
    plain, shifted_run = tmp_path / "plain", tmp_path / "shift"
    assert train_cli.main([*TINY, "--eval-flip", "--out", str(plain)]) == 0
    assert train_cli.main([*TINY, "--eval-flip", "--eval-shift", "2", "--out", str(shifted_run)]) == 0
    assert "test-time flip and 2-pixel shifts (10 views)" in capsys.readouterr().out
    assert json.loads((shifted_run / "config.json").read_text())["run"]["eval_shift"] == 2
    summary = json.loads((shifted_run / "summary.json").read_text())
    before = json.loads((plain / "summary.json").read_text())
    assert summary["eval_shift"] == 2 and "eval_shift" not in before
    # The shifts change the final test only: the same weights were trained and the same epoch picked.
    assert summary["best_epoch"] == before["best_epoch"] and summary["best_val_top1"] == before["best_val_top1"]
    np.testing.assert_array_equal(np.load(plain / "best.npz", allow_pickle=False)["param/pos_embed"],
                                  np.load(shifted_run / "best.npz", allow_pickle=False)["param/pos_embed"])
    assert summary["test"]["loss"] != pytest.approx(before["test"]["loss"], rel=1e-6)

    assert evaluate_cli.main([str(shifted_run), "--json"]) == 0  # default: as the run did
    followed = json.loads(capsys.readouterr().out)
    assert followed["eval_shift"] == 2 and followed["top1"] == summary["test"]["top1"]
    assert followed["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-6)
    assert evaluate_cli.main([str(shifted_run), "--eval-shift", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(before["test"]["loss"], rel=1e-6)

    # A finished run resumed with the shifts runs its final test again with them, training nothing.
    assert train_cli.main(["--resume", str(plain), "--eval-shift", "2", "--quiet"]) == 0
    assert "2-pixel shifts" in capsys.readouterr().out
    again = json.loads((plain / "summary.json").read_text())
    assert again["eval_shift"] == 2 and again["steps"] == before["steps"]
    assert again["test"]["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-6)


def test_a_shift_the_images_cannot_take_is_refused_before_training(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert train_cli.main([*TINY, "--eval-shift", "16", "--out", str(out)]) == 2  # 16x16 images
    err = capsys.readouterr().err
    assert "--eval-shift 16 does not fit the 16x16 test images" in err and "Traceback" not in err
    assert not (out / "last.npz").exists()
    with pytest.raises(SystemExit) as exit_status:  # argparse's own refusal
        train_cli.main([*TINY, "--eval-shift", "-1", "--out", str(out)])
    assert exit_status.value.code == 2 and "expected an integer >= 0, got '-1'" in capsys.readouterr().err
    assert train_cli.main([*TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert evaluate_cli.main([str(out), "--eval-shift", "20"]) != 0
    err = capsys.readouterr().err
    assert "--eval-shift 20 does not fit the 16x16 test images" in err and "Traceback" not in err


def test_view_logits_gpu_path_has_no_sync_and_equals_numpy(fake_cupy, host_syncs) -> None:
    cpu, gpu = tiny_model("numpy"), tiny_model("cupy")
    images = np.random.default_rng(3).standard_normal((3, 8, 8, 3))
    expected = view_logits(cpu, lambda x: x, images, True, 1)
    host_syncs.reset()
    got = view_logits(gpu, lambda x: x, to_fake(images), True, 1)
    assert host_syncs.gets == 0 and host_syncs.uploads == 0
    np.testing.assert_allclose(from_fake(got), expected, rtol=1e-11, atol=1e-12)


def test_predict_follows_the_runs_shifts(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    from npvit import predict as predict_cli
    from npvit.settings import load_run_dataset
    from npvit.visualize.inputs import InputError, load_model, probabilities

    out = tmp_path / "shift"
    assert train_cli.main([*TINY, "--eval-shift", "1", "--out", str(out)]) == 0
    loaded = load_model(out)
    assert loaded.eval_shift == 1 and loaded.eval_flip is False
    image = load_run_dataset(loaded.run, progress=False).x_test[0]
    pil.fromarray(image).save(tmp_path / "test0.png")  # lossless, at the native size: evaluation's input
    for shift, expected in ((None, view_logits(loaded.model, loaded.model_input, image[None], False, 1)),
                            (0, loaded.model.forward(loaded.model_input(image[None])))):
        [result] = predict_cli.predict_files(out, [tmp_path / "test0.png"], k=4, shift=shift)
        got = {p["class"]: p["probability"] for p in result["predictions"]}
        np.testing.assert_allclose([got[f"class_{i}"] for i in range(4)], probabilities(expected)[0], rtol=1e-6)
    with pytest.raises(InputError, match="--eval-shift 16 does not fit the model's 16x16 images"):
        predict_cli.predict_files(out, [tmp_path / "test0.png"], shift=16)
