"""What a run folder gives other tools: metrics.csv (Keras CSVLogger's layout), TensorBoard event files with
--tensorboard, and --config to start a run again from another run's settings."""

from __future__ import annotations

import csv
import json
import struct
import sys
from pathlib import Path

import pytest
from training_runs import rows

from npvit.train import command as train_cli

TINY = ["--dataset", "synthetic", "--synthetic-size", "96,16", "--synthetic-image-size", "8", "--synthetic-classes",
        "3", "--preset", "tiny", "--batch-size", "32", "--learning-rate", "3e-3", "--threads", "1", "--quiet",
        "--seed", "1"]


def test_metrics_csv_is_keras_csvlogger_layout_and_a_resume_adds_no_duplicate(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train_cli.main([*TINY, "--epochs", "2", "--out", str(out)]) == 0
    assert train_cli.main(["--resume", str(out), "--epochs", "3"]) == 0
    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "epoch" and header[1:] == sorted(header[1:])  # CSVLogger: epoch, then sorted keys
    jsonl = rows(out)
    assert [int(r["epoch"]) for r in table] == [1, 2, 3] == [r["epoch"] for r in jsonl]
    for row, expected in zip(table, jsonl):
        assert float(row["val_loss"]) == expected["val_loss"] and int(row["step"]) == expected["step"]


def test_an_epoch_stopped_part_way_has_one_csv_row_once_it_is_finished(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train_cli.main([*TINY, "--epochs", "2", "--max-steps", "4", "--out", str(out)]) == 0  # 3 steps/epoch
    assert [r["partial"] for r in rows(out)] == [False, True]
    assert train_cli.main(["--resume", str(out), "--epochs", "2", "--max-steps", "6"]) == 0
    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["epoch"], r["partial"], r["step"]) for r in table] == [("1", "False", "3"), ("2", "False", "6")]


def event_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``folder``, read with the record format's own framing
    (length, CRC, payload, CRC) and tensorboardX's Event message."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_event_files_hold_the_rows_and_every_steps_learning_rate(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    out = tmp_path / "run"
    assert train_cli.main([*TINY, "--epochs", "2", "--lr-schedule", "cosine", "--out", str(out),
                           "--tensorboard"]) == 0
    scalars = event_scalars(out / "tensorboard")
    assert [step for step, _ in scalars["lr"]] == list(range(6))  # 3 steps per epoch
    assert scalars["lr"][0][1] > scalars["lr"][-1][1]  # the cosine schedule, step by step
    log = rows(out)
    assert [(s, pytest.approx(v)) for s, v in scalars["epoch/val_top1"]] == [(r["step"], r["val_top1"]) for r in log]


def test_tensorboard_without_tensorboardx_is_one_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    assert train_cli.main([*TINY, "--epochs", "1", "--out", str(tmp_path / "run"), "--tensorboard"]) == 2
    assert "--tensorboard needs tensorboardX, which is not installed: pip install 'npvit[tensorboard]'" in \
        capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # a refused new run leaves no folder


def test_config_starts_a_new_run_with_another_runs_settings_and_flags_win(tmp_path: Path, capsys) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert train_cli.main([*TINY, "--epochs", "1", "--weight-decay", "0.05", "--out", str(first)]) == 0
    assert train_cli.main(["--config", str(first / "config.json"), "--learning-rate", "1e-3", "--quiet",
                           "--out", str(second)]) == 0
    a = json.loads((first / "config.json").read_text())["run"]
    b = json.loads((second / "config.json").read_text())["run"]
    assert b["learning_rate"] == 1e-3 and a["learning_rate"] == 3e-3
    assert {k: v for k, v in b.items() if k != "learning_rate"} == {k: v for k, v in a.items() if k != "learning_rate"}
    assert train_cli.main(["--config", str(first), "--resume", str(second)]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert train_cli.main(["--config", str(tmp_path / "nowhere"), "--out", str(tmp_path / "third")]) == 2
    err = capsys.readouterr().err
    assert f"--config {tmp_path / 'nowhere'}: no run there" in err
