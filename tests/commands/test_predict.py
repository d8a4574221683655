"""npvit.predict: top-k classes of PNG/JPEG files of any size, the same numbers as evaluation for a dataset
image, JSON output, folders, and clear errors (unreadable or non-image files, no checkpoint, no Pillow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from training_runs import TINY as ONE_EPOCH

PIL_Image = pytest.importorskip("PIL.Image")

from npvit import predict as predict_cli  # noqa: E402
from npvit.train import command as train_cli  # noqa: E402
from npvit.settings import load_run_dataset  # noqa: E402
from npvit.visualize.inputs import load_model, probabilities  # noqa: E402

# The tiny model on 16x16 synthetic images (resized to 8x8 by its Augmenter), two epochs: well under 1 s.
TINY = [*ONE_EPOCH, "--epochs", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert train_cli.main([*TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    """A folder of PNG and JPEG files of several sizes and modes, plus a file that is not an image."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(0)
    PIL_Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(folder / "b_big.jpg")
    PIL_Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA").save(folder / "a_rgba.png")
    PIL_Image.fromarray(rng.integers(0, 256, (5, 9), dtype=np.uint8), "L").save(folder / "c_grey.PNG")
    (folder / "notes.txt").write_text("skipped: folders stand for their PNG and JPEG files")
    return folder


def test_top_k_of_files_and_folders(run, pictures, capsys) -> None:
    assert predict_cli.main([str(run / "best.npz"), str(pictures), "--top-k", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [Path(r["file"]).name for r in results] == ["a_rgba.png", "b_big.jpg", "c_grey.PNG"]  # sorted
    names = {f"class_{i}" for i in range(4)}
    for r in results:
        probs = [p["probability"] for p in r["predictions"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-12
        assert {p["class"] for p in r["predictions"]} <= names

    assert predict_cli.main([str(run), str(pictures / "b_big.jpg"), "--top-k", "10"]) == 0  # run folder
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("b_big.jpg") and len(lines) == 1 + 4  # top-k capped at the 4 classes
    shares = [float(line.split("%")[0]) for line in lines[1:]]
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(100.0, abs=0.05)


def test_a_dataset_image_gets_the_evaluation_numbers(run, tmp_path) -> None:
    """A lossless PNG of a test image at the dataset's native size: predict == evaluation's preprocessing."""
    loaded = load_model(run / "best.npz")
    data = load_run_dataset(loaded.run, progress=False)
    path = tmp_path / "test0.png"
    PIL_Image.fromarray(data.x_test[0]).save(path)
    [result] = predict_cli.predict_files(run / "best.npz", [path], k=4)
    logits = loaded.model.forward(loaded.augmenter(data.x_test[:1], training=False))
    expected = probabilities(logits)[0]
    got = {p["class"]: p["probability"] for p in result["predictions"]}
    np.testing.assert_allclose([got[f"class_{i}"] for i in range(4)], expected, rtol=1e-6)


def test_large_photo_is_reduced_with_antialiasing(run, tmp_path) -> None:
    """A 10x enlargement of a 16x16 image reads back close to the original, not aliased."""
    loaded = load_model(run)
    small = load_run_dataset(loaded.run, progress=False).x_test[1]
    path = tmp_path / "big.png"
    PIL_Image.fromarray(small).resize((160, 160), PIL_Image.NEAREST).save(path)
    from npvit.visualize.inputs import read_image

    back = read_image(path, 16).astype(float)
    assert back.shape == (16, 16, 3) and np.abs(back - small).mean() < 0.25 * np.abs(small - small.mean()).mean()


@pytest.mark.parametrize("files,message", [
    (["{tmp}/broken.png"], "cannot read image"),
    (["{tmp}/notes.txt"], "cannot read image"),
    (["{tmp}/missing.jpg"], "no such file or folder"),
    (["{tmp}/empty"], "holds no image files"),
])
def test_bad_images_are_clear_errors(run, tmp_path, capsys, files, message) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    assert predict_cli.main([str(run / "best.npz"), *[f.format(tmp=tmp_path) for f in files]]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and message in captured.err
    assert "Traceback" not in captured.err


def test_missing_checkpoint(tmp_path, pictures, capsys) -> None:
    assert predict_cli.main([str(tmp_path / "nothing.npz"), str(pictures)]) == 2
    assert capsys.readouterr().err.startswith(f"error: no checkpoint at {tmp_path / 'nothing.npz'}")
    (tmp_path / "fake.npz").write_bytes(b"not a zip")
    assert predict_cli.main([str(tmp_path / "fake.npz"), str(pictures)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_missing_pillow_names_the_extra(run, pictures, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    assert predict_cli.main([str(run), str(pictures)]) == 2
    assert capsys.readouterr().err.startswith("error: npvit.predict needs Pillow: pip install 'npvit[viz]'")


def test_bad_top_k_is_a_usage_error(run, pictures, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        predict_cli.main([str(run), str(pictures), "--top-k", "0"])
    assert exc.value.code == 2 and "positive integer" in capsys.readouterr().err
