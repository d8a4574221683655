"""Shipping a model inside the package, proven with a tiny one: a run trained on a tiny CIFAR-10 archive, written
by ``npvit.export RUN --pretrained cifar10 --half`` into a registry in a temporary folder, then loaded by name
by every command (load, evaluate, predict, visualize, export, train --init-from), and the errors."""

from __future__ import annotations

import configparser
import fnmatch
import json
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import CIFAR10_NAMES, write_archive, write_cifar

import npvit
from npvit import zoo
from npvit.checkpoint import CheckpointError
from npvit.evaluate import main as evaluate_main
from npvit.export import main as export_main
from npvit.loading import load
from npvit.train import command as train_cli
from npvit.zoo import ship as ship_module
from npvit.zoo.ship import check_images, check_logits

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["--dataset", "cifar10", "--preset", "tiny", "--batch-size", "16", "--epochs", "2", "--threads", "1",
         "--validation-split", "0.1", "--eval-flip", "--quiet"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CIFAR-10 archive: 40 training and 20 test images of noise, the official layout and class names."""
    folder = tmp_path_factory.mktemp("cifar")
    exp = write_cifar(folder / "src", "cifar10", "binary", per_file=8, n_test=20)
    return write_archive(exp.folder, folder / "cifar-10-binary.tar.gz")


@pytest.fixture(scope="module")
def run(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert train_cli.main([*TRAIN, "--data-dir", str(archive), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def registry(run: Path, archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The registry (``$NPVIT_PRETRAINED_DIR``) holding the tiny run shipped as ``cifar10`` in float16."""
    root = tmp_path_factory.mktemp("zoo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(zoo.ROOT_ENV, str(root))
        assert export_main([str(run), "--pretrained", "cifar10", "--half", "--data-dir", str(archive)]) == 0
    return root


@pytest.fixture
def shipped(registry: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The registry in use for this test (the package's own is never touched); its cifar10 folder."""
    monkeypatch.setenv(zoo.ROOT_ENV, str(registry))
    return registry / "cifar10"


def metrics_of(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_the_three_files_hold_the_run_in_float16(shipped: Path, run: Path, archive: Path) -> None:
    assert sorted(p.name for p in shipped.iterdir()) == sorted(zoo.FILES)  # no temporary file left
    assert sum(p.stat().st_size for p in shipped.iterdir()) <= zoo.MAX_BYTES
    assert npvit.list_pretrained() == ["cifar10"]
    loaded, trained = npvit.pretrained("cifar10"), load(run)
    assert loaded.class_names == CIFAR10_NAMES and loaded.model.dtype == np.float32
    assert loaded.run["dataset"] == "cifar10" and loaded.eval_flip is True
    assert loaded.run["data_dir"] is None and str(archive) not in (shipped / "config.json").read_text()
    np.testing.assert_array_equal(loaded.augmenter.mean, trained.augmenter.mean)
    for name, p in trained.model.params.items():  # the float16 rounding of every weight, computed in float32
        np.testing.assert_array_equal(loaded.param(name), p.astype(np.float16).astype(np.float32), err_msg=name)
    with np.load(shipped / "weights.npz", allow_pickle=False) as stored:
        assert {a.dtype for a in stored.values()} == {np.dtype(np.float16)}
    config = json.loads((shipped / "config.json").read_text())
    assert config["storage"] == "float16" and config["model"] == trained.config.to_dict()


def test_metrics_record_the_test_split_the_command_and_the_machine(shipped: Path, archive: Path) -> None:
    metrics = metrics_of(shipped)
    assert metrics["parameters"] == npvit.pretrained().model.num_params() == 2_202
    assert metrics["classes"] == CIFAR10_NAMES and metrics["dataset"] == "cifar10"
    assert metrics["test"]["images"] == 20 and metrics["test"]["eval_flip"] is True
    assert abs(metrics["test"]["top1"] - metrics["float32_test"]["top1"]) <= ship_module.MAX_TOP1_SHIFT
    assert metrics["command"].startswith("python -m npvit.export ") and "--half" in metrics["command"]
    assert str(archive) in metrics["command"] and metrics["date"][:2] == "20" and metrics["machine"]["cpus"] >= 1


def test_evaluate_by_name_prints_the_recorded_top1(shipped: Path, archive: Path, capsys) -> None:
    assert evaluate_main(["pretrained:cifar10", "--data-dir", str(archive), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == metrics_of(shipped)["test"]["top1"]
    assert result["loss"] == metrics_of(shipped)["test"]["loss"]


def test_the_seeded_check_batch_gives_the_recorded_logits_every_time(shipped: Path) -> None:
    check = metrics_of(shipped)["check"]
    first, second = check_logits(npvit.pretrained("cifar10")), check_logits(load("pretrained:cifar10"))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, check["logits"], atol=1e-6)  # the file rounds them to 6 decimals
    assert first.argmax(axis=1).tolist() == check["predictions"]
    assert check_images(8).shape == (8, 8, 8, 3) and np.array_equal(check_images(8), check_images(8))


def test_predict_without_a_checkpoint_uses_the_shipped_model(shipped: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from npvit.predict import main as predict_main

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert predict_main([str(tmp_path / "a.png"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert err.strip() == "no checkpoint given: using pretrained:cifar10, the model shipped with npvit"
    by_default = json.loads(out)
    assert predict_main(["pretrained:cifar10", str(tmp_path / "a.png"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == by_default and err == ""
    assert by_default[0]["predictions"][0]["class"] in CIFAR10_NAMES

    assert predict_main(["pretrained:cifar10"]) == 2  # a model and no image
    assert "give the image files" in capsys.readouterr().err


def test_visualize_without_a_checkpoint_uses_the_shipped_model(shipped: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    from npvit.visualize.__main__ import main as visualize_main

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    assert visualize_main(["attention", str(tmp_path / "b.png"), "--out", str(tmp_path / "att.png")]) == 0
    assert visualize_main(["pos-embed", "--out", str(tmp_path / "pos.png")]) == 0
    assert visualize_main(["rollout", "pretrained:cifar10", str(tmp_path / "b.png"), "--out",
                           str(tmp_path / "roll.png")]) == 0
    err = capsys.readouterr().err
    assert err.count("using pretrained:cifar10") == 2  # said when it was not named, only then
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("att.png", "pos.png", "roll.png"))


def test_export_and_fine_tune_from_the_shipped_model(shipped: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("safetensors")
    assert export_main(["pretrained:cifar10", str(tmp_path / "m.safetensors")]) == 0
    exported = load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(exported.param("pos_embed"), npvit.pretrained().param("pos_embed"))
    assert exported.class_names == CIFAR10_NAMES

    # A 4-class synthetic set at learning rate 0: the run starts from (and keeps) the shipped weights, with a new
    # output layer for its 4 classes and the shipped normalisation.
    out = tmp_path / "tuned"
    flags = ["--dataset", "synthetic", "--synthetic-size", "32,16", "--synthetic-image-size", "32",
             "--synthetic-classes", "4", "--epochs", "1", "--batch-size", "16", "--threads", "1", "--quiet",
             "--learning-rate", "0", "--weight-decay", "0", "--init-from", "pretrained:cifar10", "--out", str(out)]
    assert train_cli.main(flags) == 0
    tuned, start = load(out), npvit.pretrained()
    assert tuned.config.num_classes == 4 and tuned.config.dim == start.config.dim
    np.testing.assert_array_equal(tuned.augmenter.mean, start.augmenter.mean)
    for name, p in start.model.params.items():
        if tuple(p.shape) == tuple(tuned.model.params[name].shape):
            np.testing.assert_array_equal(tuned.param(name), start.param(name), err_msg=name)
        else:
            assert name.startswith("head."), name
    assert train_cli.main(["--resume", str(out), "--epochs", "2", "--quiet"]) == 0  # keeps that normalisation
    np.testing.assert_array_equal(load(out / "last.npz").augmenter.variance, start.augmenter.variance)
    assert train_cli.main([*flags[:-1], str(tmp_path / "x"), "--preset", "tiny"]) == 2
    assert "--init-from fixes the model: --preset" in capsys.readouterr().err


def test_unknown_names_list_the_shipped_ones(shipped: Path, capsys) -> None:
    with pytest.raises(CheckpointError, match=r"no pretrained model named 'cifar11': the available names are "
                                              r"pretrained:cifar10\."):
        load("pretrained:cifar11")
    assert evaluate_main(["pretrained:../cifar10"]) == 2
    assert "the available names are pretrained:cifar10" in capsys.readouterr().err


def test_an_empty_registry_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from npvit.predict import main as predict_main

    monkeypatch.setenv(zoo.ROOT_ENV, str(tmp_path / "none"))
    assert npvit.list_pretrained() == []
    with pytest.raises(CheckpointError, match="ships no pretrained model yet"):
        npvit.pretrained("cifar10")
    (tmp_path / "a.png").write_bytes(b"")
    assert predict_main([str(tmp_path / "a.png")]) == 2
    assert "no checkpoint given, and this installation ships no model pretrained:cifar10" in capsys.readouterr().err


def test_a_damaged_entry_is_refused(shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "reg" / "cifar10"
    copy.mkdir(parents=True)
    for f in zoo.FILES:
        (copy / f).write_bytes((shipped / f).read_bytes())
    monkeypatch.setenv(zoo.ROOT_ENV, str(copy.parent))
    weights = bytearray((copy / "weights.npz").read_bytes())
    weights[-200] ^= 1
    (copy / "weights.npz").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        npvit.pretrained("cifar10")
    (copy / "config.json").write_text("{\"format_version\": 1, NaN")
    with pytest.raises(CheckpointError, match="cannot read .*config.json"):
        npvit.pretrained("cifar10")


@pytest.mark.parametrize("change, message", [
    ({"MAX_TOP1_SHIFT": -1.0}, "float16 weights move test top-1 by 0.00 points"),  # every shift is too much
    ({"MAX_BYTES": 2**14}, "more than the 0.015625 MiB a shipped model may"),
])
def test_a_refused_ship_writes_nothing(run: Path, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys, change: dict, message: str) -> None:
    for name, value in change.items():
        monkeypatch.setattr(ship_module, name, value)
    monkeypatch.setenv(zoo.ROOT_ENV, str(tmp_path / "reg"))
    assert export_main([str(run), "--pretrained", "cifar10", "--half", "--data-dir", str(archive)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "reg").exists()


@pytest.mark.parametrize("flags, message", [
    (["--pretrained", "Big Model"], "cannot name a pretrained model"),
    (["out.onnx", "--pretrained", "x"], "give no OUT file"),
    ([], "name the file to write"),
    (["out.onnx", "--half"], "apply to --pretrained NAME"),
    (["out.onnx", "--eval-shift", "1"], "apply to --pretrained NAME"),
    (["--pretrained", "x", "--eval-shift", "32", "--data-dir", "."], "--eval-shift 32 does not fit the model's 32x32"),
])
def test_export_flags_that_do_not_fit(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys,
                                      flags: list[str], message: str) -> None:
    monkeypatch.setenv(zoo.ROOT_ENV, str(tmp_path / "reg"))
    assert export_main([str(run), *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_model_shipped_with_test_time_shifts_is_measured_and_evaluated_with_them(
        run: Path, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv(zoo.ROOT_ENV, str(tmp_path / "reg"))
    assert export_main([str(run), "--pretrained", "cifar10", "--data-dir", str(archive), "--eval-shift", "2"]) == 0
    loaded = npvit.pretrained("cifar10")
    assert loaded.eval_shift == 2 and loaded.eval_flip is True and load(run).eval_shift == 0
    metrics = metrics_of(tmp_path / "reg" / "cifar10")
    assert metrics["test"]["eval_shift"] == 2 and metrics["check"]["eval_shift"] == 2
    capsys.readouterr()
    assert evaluate_main(["pretrained:cifar10", "--data-dir", str(archive), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["eval_shift"] == 2 and result["loss"] == metrics["test"]["loss"]
    assert evaluate_main([str(run), "--data-dir", str(archive), "--eval-shift", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == metrics["test"]["top1"]  # float32 weights: the same
    np.testing.assert_allclose(check_logits(loaded), metrics["check"]["logits"], atol=1e-6)
    assert not np.allclose(check_logits(loaded), metrics_of(registry_of(run, archive, tmp_path))["check"]["logits"])


def registry_of(run: Path, archive: Path, tmp_path: Path) -> Path:
    """The run shipped without shifts into a registry of its own; its cifar10 folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(zoo.ROOT_ENV, str(tmp_path / "plain"))
        assert export_main([str(run), "--pretrained", "cifar10", "--data-dir", str(archive)]) == 0
    return tmp_path / "plain" / "cifar10"


def test_shipping_needs_the_test_split(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_cache,
                                       capsys) -> None:
    monkeypatch.setenv(zoo.ROOT_ENV, str(tmp_path / "reg"))
    assert export_main([str(run), "--pretrained", "cifar10"]) == 2  # no --data-dir, nothing in the cache
    assert "cifar" in capsys.readouterr().err.lower() and not (tmp_path / "reg").exists()


def test_the_wheel_packs_the_shipped_files() -> None:
    """setup.cfg's package_data names every file a shipped model has (the wheel built from it was listed by
    hand: ``pip wheel . --no-deps -w /tmp/w``)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["npvit"].split(",")]
    for name in zoo.FILES:
        assert any(fnmatch.fnmatch(f"zoo/cifar10/{name}", p) for p in patterns), name
