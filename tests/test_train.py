"""The training program end to end on the synthetic dataset: learning, run folder, resume, Ctrl-C,
checkpoint safety, bad flags and non-finite losses."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from npvit import evaluate as evaluate_cli
from npvit import train as train_cli
from npvit import train_step as step_module
from npvit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

# A few seconds per run: the tiny model on 16x16 synthetic images, resized to 8x8 by the augmentation.
BASE = ["--dataset", "synthetic", "--synthetic-size", "240,60", "--synthetic-image-size", "16",
        "--synthetic-classes", "4", "--preset", "tiny", "--batch-size", "32", "--learning-rate", "3e-3",
        "--quiet"]


def run(tmp_path: Path, name: str, *flags: str) -> tuple[int, Path]:
    out = tmp_path / name
    return train_cli.main([*BASE, "--out", str(out), *flags]), out


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}


def test_end_to_end_run_learns_and_writes_its_folder(tmp_path, capsys) -> None:
    status, out = run(tmp_path, "run", "--epochs", "6")
    assert status == 0
    log = rows(out)
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert log[-1]["train_loss"] < 0.8 * log[0]["train_loss"]
    assert {"val_loss", "val_top1", "val_top5", "lr", "train_top1"} <= set(log[0])
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["dim"] == 8 and config["run"]["batch_size"] == 32
    for name in ("best.npz", "last.npz"):
        ckpt = load_checkpoint(out / name)
        assert "head.out.w" in ckpt.params and "m/head.out.w" in ckpt.optimizer
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_epoch"] == max(log, key=lambda r: r["val_top1"])["epoch"]
    printed = capsys.readouterr().out
    assert "epoch 6/6" in printed and "test (60 images" in printed and "top-5" in printed

    assert evaluate_cli.main([str(out / "best.npz")]) == 0
    printed = capsys.readouterr().out
    assert "test split, 60 images" in printed and "class_3" in printed


def test_resume_equals_uninterrupted(tmp_path) -> None:
    assert run(tmp_path, "straight", "--epochs", "2")[0] == 0
    assert run(tmp_path, "split", "--epochs", "1")[0] == 0
    assert train_cli.main(["--resume", str(tmp_path / "split"), "--epochs", "2", "--quiet"]) == 0
    a, b = load_checkpoint(tmp_path / "straight" / "last.npz"), load_checkpoint(tmp_path / "split" / "last.npz")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert all(np.array_equal(a.optimizer[k], b.optimizer[k]) for k in a.optimizer)
    assert [comparable(r) for r in rows(tmp_path / "straight")] == [comparable(r) for r in rows(tmp_path / "split")]


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(tmp_path, monkeypatch, capsys) -> None:
    assert run(tmp_path, "straight", "--epochs", "2")[0] == 0

    def interrupt_at_step_9(step: int) -> None:  # mid-way through epoch 2 (7 steps per epoch)
        if step == 9:
            os.kill(os.getpid(), signal.SIGINT)

    real_train = train_cli.train
    monkeypatch.setattr(train_cli, "train", lambda s, r=None: real_train(s, r, on_step=interrupt_at_step_9))
    assert run(tmp_path, "split", "--epochs", "2")[0] == 130
    assert "--resume" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "split" / "last.npz").meta["state"]["global_step"] == 9
    monkeypatch.setattr(train_cli, "train", real_train)
    assert train_cli.main(["--resume", str(tmp_path / "split"), "--quiet"]) == 0
    a, b = load_checkpoint(tmp_path / "straight" / "last.npz"), load_checkpoint(tmp_path / "split" / "last.npz")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert [comparable(r) for r in rows(tmp_path / "straight")] == [comparable(r) for r in rows(tmp_path / "split")]


def test_max_steps_stops_early(tmp_path) -> None:
    status, out = run(tmp_path, "run", "--epochs", "5", "--max-steps", "3")
    assert status == 0
    log = rows(out)
    assert len(log) == 1 and log[0]["partial"] and log[0]["step"] == 3


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch) -> None:
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.ones(3)}, {"step": np.array(1)}, {"note": "first"})

    def failing_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial garbage")
        raise KeyboardInterrupt  # as if Ctrl-C arrived mid-write

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": np.zeros(3)}, {"step": np.array(2)}, {"note": "second"})
    ckpt = load_checkpoint(path)
    assert ckpt.meta["note"] == "first" and np.array_equal(ckpt.params["w"], np.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]  # no temporary file left behind


def test_corrupt_checkpoint_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.npz")


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys) -> None:
    status, out = run(tmp_path, "run", "--epochs", "1")
    assert status == 0
    before = (out / "last.npz").read_bytes()
    real = step_module.cross_entropy_forward
    calls = {"n": 0}

    def poisoned(logits, labels, smoothing=0.0):
        calls["n"] += 1
        loss, cache = real(logits, labels, smoothing)
        return (loss * np.nan if calls["n"] == 3 else loss), cache

    monkeypatch.setattr(step_module, "cross_entropy_forward", poisoned)
    assert train_cli.main(["--resume", str(out), "--epochs", "2", "--quiet"]) == 1
    printed = capsys.readouterr().err
    assert "the loss or the gradient became non-finite (NaN or infinite) at step 10" in printed
    assert f"the last good checkpoint is {out / 'last.npz'} (epoch 1, step 7)" in printed
    assert (out / "last.npz").read_bytes() == before


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-size", "0"], "expected a positive integer"),
        (["--transformer-units", "16,4"], "must end with dim"),
        (["--dropout", "1.5"], r"expected a number in \[0, 1\)"),
        (["--mlp-head-units", "a,b"], "comma-separated integers"),
        (["--pool", "max"], "invalid choice"),
    ],
)
def test_bad_flags_are_clear_errors(tmp_path, capsys, flags, message) -> None:
    try:
        status = train_cli.main([*BASE, "--out", str(tmp_path / "x"), *flags])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_resume_errors(tmp_path, capsys) -> None:
    assert train_cli.main(["--resume", str(tmp_path / "nothing")]) == 2
    assert "no run there" in capsys.readouterr().err
    status, out = run(tmp_path, "run", "--epochs", "1")
    assert train_cli.main(["--resume", str(out), "--learning-rate", "0.1"]) == 2
    assert "cannot change --learning-rate" in capsys.readouterr().err
    assert run(tmp_path, "run", "--epochs", "1")[0] == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_accepts_unchanged_list_flags(tmp_path) -> None:
    status, out = run(tmp_path, "run", "--epochs", "1")
    assert train_cli.main(["--resume", str(out), "--synthetic-size", "240,60", "--epochs", "2", "--quiet"]) == 0


def test_without_validation_the_lowest_train_loss_is_kept(tmp_path) -> None:
    status, out = run(tmp_path, "run", "--epochs", "2", "--validation-split", "0")
    assert status == 0 and (out / "best.npz").exists()
    assert json.loads((out / "summary.json").read_text())["best_epoch"] in (1, 2)


def test_run_files_get_ordinary_permissions(tmp_path) -> None:
    status, out = run(tmp_path, "run", "--epochs", "1")
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "last.npz").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("flags", [["--epsilon", "0"], ["--clip-norm", "-1"], ["--rotation", "1.5"],
                                   ["--zoom", "2"], ["--warmup-steps", "-3"]])
def test_out_of_range_optimizer_and_augmentation_flags(tmp_path, capsys, flags) -> None:
    with pytest.raises(SystemExit) as exc:
        train_cli.main([*BASE, "--out", str(tmp_path / "x"), *flags])
    assert exc.value.code == 2 and "expected" in capsys.readouterr().err


def test_evaluate_rejects_bad_batch_size(tmp_path, capsys) -> None:
    status, out = run(tmp_path, "run", "--epochs", "1")
    with pytest.raises(SystemExit):
        evaluate_cli.main([str(out / "best.npz"), "--batch-size", "0"])
    assert "positive integer" in capsys.readouterr().err
