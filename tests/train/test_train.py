"""The training program end to end on the synthetic dataset: learning, run folder, resume, Ctrl-C,
checkpoint safety, bad flags and non-finite losses."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import tracemalloc

import numpy as np
import pytest

from npvit import evaluate as evaluate_cli
from npvit.train import command as train_cli
from npvit.train import memory
from npvit import settings as settings_module
from npvit.train import step as step_module
from npvit.data.augment import Augmenter
from npvit.distributed import Communicator, SingleProcess, rank_slice
from npvit.config import ViTConfig
from npvit.model import ViT
from npvit.optim.adamw import AdamW
from npvit.train.state import EpochTotals, RunState
from npvit.data.device import DeviceDataset
from npvit.train.loop import ReadSchedule
from npvit.train.step import RunningSums, StepSettings, train_step
from npvit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training_runs import (BASE, ThreadComm, ThreadGroup, assert_thread_ranks_train_what_one_process_trains,
                           comparable, rows, run, toy_model, train_toy)



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


@pytest.mark.parametrize("at", [9, 7])  # mid-way through epoch 2, and after epoch 1's last step (7 per epoch)
def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(tmp_path, monkeypatch, capsys, at) -> None:
    assert run(tmp_path, "straight", "--epochs", "2")[0] == 0

    def interrupt(step: int) -> None:
        if step == at:
            os.kill(os.getpid(), signal.SIGINT)

    real_train = train_cli.train
    monkeypatch.setattr(train_cli, "train", lambda s, r=None: real_train(s, r, on_step=interrupt))
    assert run(tmp_path, "split", "--epochs", "2")[0] == 130
    assert "--resume" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "split" / "last.npz").meta["state"]["global_step"] == at
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


# ---- structure: settings, RunState, train_step, the communicator ---------------------------------------------
def test_help_shows_every_default_from_the_settings_table(capsys) -> None:
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for s in settings_module.SETTINGS:
        assert s.flag in text
        if s.preset_field is not None:
            keras_value = getattr(ViTConfig.keras(), s.preset_field)
            shown = settings_module.show(keras_value) or "none"  # an empty list, such as conv_channels
            assert f"(default from --preset; keras: {shown})" in text
        elif s.kind != "bool" and s.default is not None:
            assert f"{s.help} (default {settings_module.show(s.default)})" in text, s.name
    assert "Exit status (npvit.cli.status" in text and "0 the run finished" in text and "143 SIGTERM" in text


def test_help_follows_a_changed_default(monkeypatch) -> None:
    rows = tuple(dataclasses.replace(s, default=512) if s.name == "batch_size" else s
                 for s in settings_module.SETTINGS)
    monkeypatch.setattr(settings_module, "SETTINGS", rows)
    assert "(default 512)" in settings_module.build_parser().format_help()


def test_run_state_round_trip_and_checks() -> None:
    state = RunState(epoch=3, step_in_epoch=2, global_step=23, best_score=0.5, best_epoch=2,
                     partial=EpochTotals(loss_sum=12.5, correct=30, seen=64, seconds=1.5))
    doc = json.loads(json.dumps(state.to_dict()))
    assert RunState.from_dict(doc) == state
    old = {("best_val_top1" if k == "best_score" else k): v for k, v in doc.items()}  # before the rename
    assert RunState.from_dict(old) == state
    state.check_fits(steps_per_epoch=7, batch_size=32, train_images=216, optimizer_steps=23)
    with pytest.raises(CheckpointError, match="step 2 of an epoch that has 1 steps"):
        state.check_fits(steps_per_epoch=1, batch_size=32, train_images=216, optimizer_steps=23)
    with pytest.raises(CheckpointError, match="global step 23 after 3 epochs of 6 steps"):
        state.check_fits(steps_per_epoch=6, batch_size=32, train_images=216, optimizer_steps=23)
    for bad, message in [({**doc, "epoch": -1}, "'epoch' must be an integer >= 0"),
                         ({**doc, "epoch": True}, "'epoch' must be an integer >= 0"),
                         ({**doc, "best_score": float("nan")}, "'best_score' must be a finite number or null"),
                         ({**doc, "best_epoch": None}, "both or neither"),
                         ({**doc, "partial": {**doc["partial"], "seen": 3}}, "counts 30 correct of 3 images"),
                         ({k: v for k, v in doc.items() if k != "global_step"}, "no field 'global_step'"),
                         ([1, 2], "not an object")]:
        with pytest.raises(CheckpointError, match=re.escape(message)):
            RunState.from_dict(bad)


@pytest.mark.parametrize("batch, size", [(10, 3), (2, 3), (7, 1), (0, 2)])
def test_rank_slices_cut_a_batch_into_disjoint_parts(batch, size) -> None:
    parts = [rank_slice(batch, r, size) for r in range(size)]
    assert [i for p in parts for i in range(batch)[p]] == list(range(batch))
    assert max(len(range(batch)[p]) for p in parts) - min(len(range(batch)[p]) for p in parts) <= 1


class NoSync(np.ndarray):
    """A NumPy array that refuses every conversion to a host number, as a device array would cost a sync."""

    def _sync(self, *args):
        raise AssertionError("host sync")

    __float__ = __int__ = __bool__ = __index__ = item = tolist = _sync


def test_running_sums_never_read_the_device_until_asked() -> None:
    sums = RunningSums(np, loss_sum=1.25, correct=3)
    losses = [np.float32(0.7), np.float32(1.3), np.float32(np.nan), np.float32(0.2)]
    expected = 1.25
    for step, loss in enumerate(losses):
        device_loss = np.asarray(loss).view(NoSync)
        finite = np.isfinite(device_loss).view(NoSync)
        sums.add(step, device_loss, 8, np.asarray(2, dtype=np.int64).view(NoSync), finite)
        expected += float(loss) * 8  # what a Python float accumulating one step at a time gets
    # Still "on the device": 0-d arrays, added to in place (a captured CUDA graph adds to the same arrays).
    assert all(isinstance(a, np.ndarray) and a.ndim == 0 for a in (sums.loss_sum, sums.correct, sums.nonfinite))
    loss_sum, correct, nonfinite, first = sums.read()
    assert correct == 3 + 4 * 2 and nonfinite == 1 and first == 2
    assert math.isnan(loss_sum) and math.isnan(expected)
    sums = RunningSums(np, loss_sum=1.25)
    partial = 1.25
    for step, loss in enumerate(losses[:2] + losses[3:]):
        sums.add(step, np.asarray(loss), 8, np.asarray(1), np.asarray(True))
        partial += float(loss) * 8
    assert sums.read()[0] == partial  # bit for bit: resume and read points change nothing


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_train_step_data_parallel_equals_one_process(dropout) -> None:
    """Two ranks, each with its slice of every global batch and its gradients summed, end with the weights and
    loss sums of one process on the whole batch (float64; dropout masks and augmentation are keyed by the
    global image index, so they are the same either way)."""
    assert isinstance(SingleProcess(), Communicator) and isinstance(ThreadComm(ThreadGroup(1), 0), Communicator)
    cfg = dataclasses.replace(ViTConfig.tiny(num_classes=4), dropout=dropout, attention_dropout=dropout,
                              head_dropout=dropout)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 40).astype(np.int64)
    batches = [rng.permutation(40)[:16], rng.permutation(40)[:9], np.array([5])]  # 1 image: rank 1 gets none
    settings = StepSettings(seed=0)

    def run(comm: Communicator) -> tuple[dict, tuple]:
        model, opt = toy_model(cfg)
        randomness = dropout > 0  # augmentation on together with dropout
        augmenter = Augmenter(np.full(3, 120.0), np.full(3, 3000.0), image_size=8, flip=randomness,
                              rotation=0.05 if randomness else 0.0, zoom=0.2 if randomness else 0.0, dtype="float64")
        return train_toy(comm, model, opt, augmenter, x, y, batches, settings)

    single_params, single_sums = assert_thread_ranks_train_what_one_process_trains(run, 2)
    assert single_sums[1] > 0 and single_sums[2] == 0


def test_memory_estimate_is_a_close_upper_bound_of_the_measured_peak() -> None:
    """tracemalloc sees every NumPy allocation: the estimate of a step's memory must stay above the measured
    peak and not far above it (a model change that adds or drops a cache shows up here). With Mixup/CutMix
    too: the blended batch and the soft targets are made and dropped before the backward pass's peak, so the
    estimate leaves them out."""
    cfg = dataclasses.replace(ViTConfig.small(num_classes=10), depth=2)
    for batch, mixing in ((4, False), (16, False), (16, True)):
        settings = StepSettings(seed=0, mixup=0.8 if mixing else 0.0, cutmix=1.0 if mixing else 0.0)
        model = ViT(cfg, seed=0, threads=1)
        opt = AdamW(model.params)
        augmenter = Augmenter(np.zeros(3), np.ones(3), image_size=cfg.image_size)
        x = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        y = np.arange(batch) % 10
        sums = RunningSums(np)
        train_step(model, opt, augmenter, DeviceDataset(model.backend, x, y), np.arange(batch), 0, settings, sums)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        train_step(model, opt, augmenter, DeviceDataset(model.backend, x, y), np.arange(batch), 1, settings, sums)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        measured = peak + 4 * model.num_params() * 4  # the step's peak, plus parameters, gradients, moments
        assert cfg.num_params() == model.num_params()
        ratio = memory.training_step(cfg, 4, threads=1).total(batch) / measured
        assert 0.95 <= ratio <= 1.4, (batch, mixing, ratio)


def test_read_schedule_reads_about_every_half_second() -> None:
    schedule = ReadSchedule(seconds=0.5)
    schedule.start(10)
    assert not schedule.due(10) and schedule.due(11)
    schedule.update(11, seconds_per_step=0.01)
    assert not schedule.due(60) and schedule.due(61)
    schedule.update(61, seconds_per_step=3.0)  # slow steps: read after every one
    assert schedule.due(62)


def test_the_loop_reads_the_device_sums_now_and_then_not_every_step(tmp_path, monkeypatch) -> None:
    reads = []
    real_read = RunningSums.read
    monkeypatch.setattr(RunningSums, "read", lambda self: reads.append(1) or real_read(self))
    status, out = run(tmp_path, "run", "--epochs", "2", "--batch-size", "8")  # 27 steps per epoch
    assert status == 0
    # After each epoch's first step (to time it), then about every half second, and at the epoch's end.
    assert 4 <= len(reads) <= 8, len(reads)
