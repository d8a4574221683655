"""The training program under faults: signals, kills, two runs on one folder, non-finite values, too little
memory, and damaged or hostile run files. Where the behaviour involves processes and signals the tests use
real ones: ``python -m npvit.train`` in a subprocess, sent SIGTERM, SIGINT or SIGKILL.

What each test proves is the safe outcome: the exit status, one clear message (never a traceback), and the
files: nothing non-finite saved, earlier checkpoints unchanged, a resumed run equal to an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from processes import ROOT, checkout_env, run_python
from training_runs import BASE

from npvit.train import memory
from npvit.optim.adamw import AdamW
from npvit.train import command as train_cli
from npvit.train import evaluation
from npvit.checkpoint import load_checkpoint, save_checkpoint

TINY = [*BASE, "--threads", "1"]  # the runs of test_train.py, on one thread
# A run of a few seconds, 135 steps per epoch, for signals to land in the middle of.
LONG = ["--dataset", "synthetic", "--synthetic-size", "1200,40", "--synthetic-image-size", "8",
        "--synthetic-classes", "4", "--preset", "tiny", "--batch-size", "8", "--epochs", "2", "--threads", "1",
        "--quiet"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m npvit.train ARGS`` in a fresh process."""
    return run_python("-m", "npvit.train", *args, timeout=timeout, cwd=ROOT)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "npvit.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=checkout_env(), cwd=ROOT)


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def step_of(path: Path) -> int:
    try:
        return load_checkpoint(path).meta["state"]["global_step"]
    except Exception:  # not there yet, or being replaced
        return -1


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_checkpoint(a), load_checkpoint(b)
    return (x.params.keys() == y.params.keys() and x.optimizer.keys() == y.optimizer.keys()
            and all(np.array_equal(x.params[k], y.params[k]) for k in x.params)
            and all(np.array_equal(x.optimizer[k], y.optimizer[k]) for k in x.optimizer))


def all_finite(path: Path) -> bool:
    ckpt = load_checkpoint(path)
    return all(np.isfinite(a).all() for a in (*ckpt.params.values(), *ckpt.optimizer.values()))


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The LONG run, uninterrupted, for the interrupted ones to equal."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert train_cli.main([*LONG, "--out", str(out)]) == 0
    return out


# ---- 1. nothing non-finite is ever saved ------------------------------------------------------------------
def test_diverging_run_saves_nothing_non_finite_and_names_the_last_good_checkpoint(tmp_path, monkeypatch) -> None:
    out = tmp_path / "x"
    # The step at which the weights overflow into NaN depends on how the kernels treat overflowed values (the
    # compiled GELU's x sigmoid(2u) stays finite where NumPy's x (1 + t) / 2 overflows): the NumPy kernels here
    monkeypatch.setenv("NPVIT_KERNELS", "numpy")
    # One step per epoch: the second update overflows the weights (lr 1e6).
    result = cli("--dataset", "synthetic", "--preset", "tiny", "--epochs", "4", "--learning-rate", "1e6",
                 "--batch-size", "1000", "--quiet", "--out", str(out))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"the last good checkpoint is {out / 'last.npz'} (epoch 1, step 1)" in result.stderr
    assert "Nothing non-finite was saved" in result.stderr
    for name in ("last.npz", "best.npz"):
        assert all_finite(out / name)
    assert step_of(out / "last.npz") == 1


def test_divergence_before_the_first_checkpoint_says_there_is_none(tmp_path) -> None:
    out = tmp_path / "x"
    result = cli("--dataset", "synthetic", "--preset", "tiny", "--epochs", "2", "--learning-rate", "1e6",
                 "--batch-size", "100", "--quiet", "--out", str(out))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no checkpoint was written (the run stopped before its first one)" in result.stderr
    assert not (out / "last.npz").exists() and not (out / "best.npz").exists()


def test_nan_validation_loss_stops_before_saving(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "x"
    assert train_cli.main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    before = {n: (out / n).read_bytes() for n in ("last.npz", "best.npz", "metrics.jsonl")}
    real = evaluation.evaluate

    def nan_loss(*args, **kwargs):
        result = real(*args, **kwargs)
        result.loss = float("nan")
        return result

    monkeypatch.setattr(evaluation, "evaluate", nan_loss)
    assert train_cli.main(["--resume", str(out), "--epochs", "2"]) == 1
    err = capsys.readouterr().err
    assert "the validation loss became nan after step 14" in err
    assert f"the last good checkpoint is {out / 'last.npz'} (epoch 1, step 7)" in err
    assert {n: (out / n).read_bytes() for n in before} == before


def test_sigterm_during_validation_stops_after_the_epoch_is_saved(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "x"
    real = evaluation.evaluate

    def terminated_meanwhile(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", terminated_meanwhile)
    assert train_cli.main([*TINY, "--epochs", "3", "--out", str(out)]) == 143
    assert f"interrupted after epoch 1, step 7: checkpoint saved to {out / 'last.npz'}" in capsys.readouterr().out
    assert step_of(out / "last.npz") == 7 and len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_weights_overflowing_in_an_update_are_never_saved(tmp_path, monkeypatch, capsys) -> None:
    """A finite gradient whose update overflows the weights is caught when the weights are read for saving."""
    out = tmp_path / "x"
    real_step = AdamW.step

    def overflowing(self, grads):
        norm = real_step(self, grads)
        if self.step_count == 7:  # the epoch's last update: no forward pass sees it before the check
            next(iter(self.params.values()))[...] = np.inf
        return norm

    monkeypatch.setattr(AdamW, "step", overflowing)
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: pytest.fail("validated non-finite weights"))
    assert train_cli.main([*TINY, "--epochs", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the parameters or AdamW moments became non-finite" in err
    assert "no checkpoint was written" in err
    assert not (out / "last.npz").exists()


# ---- 2. one run per folder --------------------------------------------------------------------------------
def test_second_run_on_a_live_folder_fails_at_once(tmp_path) -> None:
    out = tmp_path / "run"
    first = start(*LONG, "--epochs", "1000", "--out", str(out))
    try:
        wait_for(lambda: (out / "config.json").exists(), "the first run started", first)
        for flags in ([*LONG, "--out", str(out)], ["--resume", str(out)]):
            second = cli(*flags)
            assert second.returncode == 2 and "Traceback" not in second.stderr
            assert f"{out} is in use by another training run (process {first.pid} on " in second.stderr
        assert first.poll() is None  # failed at once: the first run is still going
        first.send_signal(signal.SIGTERM)
        status, stdout, stderr = finish(first)
    finally:
        first.kill()
    assert status == 143, stderr
    step = step_of(out / "last.npz")
    assert step > 0
    # The lock went with the process; the run continues from where SIGTERM stopped it.
    result = cli("--resume", str(out), "--max-steps", str(step + 3))
    assert result.returncode == 0, result.stderr
    assert step_of(out / "last.npz") == step + 3


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_finishes_the_step_saves_and_resumes_exactly(tmp_path, straight, signum, status) -> None:
    """SIGTERM (a batch scheduler's warning before a kill) is handled as Ctrl-C is: the step is finished,
    last.npz saved, and the exit status says which signal it was."""
    out = tmp_path / "run"
    proc = start(*LONG, "--out", str(out), "--save-every", "0.001")
    try:
        wait_for(lambda: step_of(out / "last.npz") > 0, "a first checkpoint", proc)
        proc.send_signal(signum)
        code, stdout, stderr = finish(proc)
    finally:
        proc.kill()
    assert code == status and "Traceback" not in stderr
    assert f"{signal.Signals(signum).name}: finishing this step and saving a checkpoint" in stderr
    assert f"checkpoint saved to {out / 'last.npz'}" in stdout
    assert f"Continue with: python -m npvit.train --resume {out}" in stdout
    assert 0 < step_of(out / "last.npz") < 270
    assert cli("--resume", str(out)).returncode == 0
    assert same_weights(out / "last.npz", straight / "last.npz")


# ---- 6 and 9. kills: --save-every, stale locks, temporary files, a kill before the first checkpoint ---------
def test_sigkill_mid_epoch_loses_at_most_save_every_and_resumes_exactly(tmp_path, straight) -> None:
    out = tmp_path / "run"
    proc = start(*LONG, "--out", str(out), "--save-every", "0.002")
    try:
        # A mid-epoch checkpoint (--save-every), then a kill with no chance to save or unlock.
        wait_for(lambda: step_of(out / "last.npz") > 0, "a first checkpoint", proc)
        state = load_checkpoint(out / "last.npz").meta["state"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert state["epoch"] == 0 and state["step_in_epoch"] > 0 and state["partial"]["seen"] > 0  # mid-epoch
    # As a kill in the middle of a checkpoint write would leave them:
    for name in (".last.npz.k1l2e3d4.tmp", ".metrics.jsonl.ab12cd34.tmp"):
        (out / name).write_bytes(b"PK\x03\x04 half a checkpoint")
    result = cli("--resume", str(out))  # the dead process's lock is taken over
    assert result.returncode == 0, result.stderr
    removed = re.search(r"removed (\d+) unfinished temporary file", result.stderr)
    assert removed and int(removed.group(1)) >= 2  # ours, and any the kill itself left
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert same_weights(out / "last.npz", straight / "last.npz")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_kill_before_the_first_checkpoint_has_one_way_forward(tmp_path, straight) -> None:
    out = tmp_path / "run"
    proc = start(*LONG, "--out", str(out))
    try:
        wait_for(lambda: (out / "config.json").exists(), "the run started", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert not (out / "last.npz").exists()
    again = cli(*LONG, "--out", str(out))  # the same command again points at --resume ...
    assert again.returncode == 2 and f"start it over with --resume {out}" in again.stderr
    resumed = cli("--resume", str(out))  # ... which starts the run over
    assert resumed.returncode == 0, resumed.stderr
    assert "no checkpoint yet (the run stopped before its first one): starting it over" in resumed.stdout
    assert same_weights(out / "last.npz", straight / "last.npz")


# ---- 7. bad input: one message, no traceback ----------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--seed", "-5"], "--seed: expected an integer >= 0, got '-5'"),
    (["--synthetic-size", "5"], r"synthetic_size \(--synthetic-size\) must be two integers"),
    (["--dataset", "cifar10", "--label-mode", "coarse"], "only CIFAR-100 has coarse labels"),
    (["--learning-rate", "inf"], r"--learning-rate.*(must be a finite number|expected a number >= 0).*inf"),
    (["--save-every", "0"], "--save-every: expected a number > 0"),
    (["--batch-size", "0"], "expected a positive integer"),
    (["--transformer-units", "16,4"], "must end with dim"),
    (["--dropout", "1.5"], r"expected a number in \[0, 1\)"),
    (["--mlp-head-units", "a,b"], "comma-separated integers"),
    (["--pool", "max"], "invalid choice"),
])
def test_bad_flags(tmp_path, capsys, flags, message) -> None:
    try:
        status = train_cli.main([*TINY, "--out", str(tmp_path / "x"), *flags])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2 and re.search(message, err), err
    assert not (tmp_path / "x").exists()  # refused before the run folder was touched


def test_a_step_too_large_for_memory_is_refused_before_allocating(tmp_path, monkeypatch, capsys) -> None:
    cfg = train_cli.model_config(dict(train_cli.DEFAULTS, preset="small"), 4)
    estimate = memory.training_step(cfg, 4, 1)
    monkeypatch.setattr(memory, "available_bytes", lambda: estimate.total(100))
    flags = [*TINY, "--preset", "small", "--batch-size", "4096", "--out", str(tmp_path / "x")]
    assert train_cli.main(flags) == 2
    err = capsys.readouterr().err
    assert "a training step of this model at batch 216 needs about" in err  # the training set is 216 images
    assert "--batch-size 100 would fit" in err
    monkeypatch.setattr(memory, "available_bytes", lambda: estimate.total(0) // 2)
    assert train_cli.main(flags[:-1] + [str(tmp_path / "y")]) == 2
    assert "the model alone needs" in capsys.readouterr().err


def test_memory_error_in_a_real_process_is_a_clear_message(tmp_path) -> None:
    """The address space capped below what a step needs, and the up-front estimate told otherwise: the
    MemoryError numpy raises is reported with advice, not a traceback."""
    flags = ["--dataset", "synthetic", "--synthetic-size", "2000,10", "--preset", "small", "--batch-size", "2000",
             "--threads", "1", "--quiet", "--out", str(tmp_path / "x")]
    code = ("import resource, sys; import npvit.train.memory as m; m.available_bytes = lambda: 1 << 50; "
            "from npvit.train import main; resource.setrlimit(resource.RLIMIT_AS, (1024 << 20, 1024 << 20)); "
            f"sys.exit(main({flags!r}))")
    result = run_python("-c", code)
    assert result.returncode == 3, result.stderr
    assert "out of memory while training (a step at batch 2000 needs about" in result.stderr
    assert "a lower --batch-size, e.g. 1000" in result.stderr and "Traceback" not in result.stderr


def test_resume_from_damaged_checkpoints(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert train_cli.main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    good = load_checkpoint(out / "last.npz")

    def resume_with(params, optimizer, meta) -> str:
        save_checkpoint(out / "last.npz", params, optimizer, meta)
        assert train_cli.main(["--resume", str(out), "--epochs", "2"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    optimizer = {k: v for k, v in good.optimizer.items() if k != "m/head.out.w"}
    assert "optimizer state has no entry 'm/head.out.w'" in resume_with(good.params, optimizer, good.meta)
    meta = {k: v for k, v in good.meta.items() if k != "state"}
    assert "has no training state" in resume_with(good.params, good.optimizer, meta)
    meta = dict(good.meta, state=dict(good.meta["state"], global_step="7"))
    assert "training state field 'global_step' must be an integer >= 0, got '7'" in \
        resume_with(good.params, good.optimizer, meta)
    meta = dict(good.meta, state=dict(good.meta["state"], global_step=70, epoch=10))
    assert "does not fit this run" in resume_with(good.params, good.optimizer, meta)
    params = dict(good.params, **{"head.out.b": np.full_like(good.params["head.out.b"], np.nan)})
    assert "holds non-finite parameters (head.out.b)" in resume_with(params, good.optimizer, good.meta)
    # JSON integers beyond the float range (1e400 written out) are not numbers a float can hold
    meta = dict(good.meta, state=dict(good.meta["state"], partial=dict(good.meta["state"]["partial"],
                                                                       loss_sum=10**400)))
    assert "training state field 'partial.loss_sum' must be a number >= 0" in \
        resume_with(good.params, good.optimizer, meta)


@pytest.mark.parametrize("doc, message", [
    ([1, 2, 3], "is not an npvit run config"),
    ({"run": {"learning_rate": float("nan")}}, "setting 'learning_rate' must be a finite number, got nan"),
    ({"run": {"learning_rate": 10**400}}, "setting 'learning_rate' must be a finite number, got 1000"),
    ({"run": {"synthetic_size": [1e9, 200]}}, "setting 'synthetic_size' must be a list of integers"),
    ({"run": {"seed": -1}}, "setting 'seed' expected an integer >= 0, got '-1'"),
    ({"run": {"dataset": "imagenet"}}, "setting 'dataset' must be one of cifar10, cifar100, synthetic"),
])
def test_resume_from_a_hostile_config(tmp_path, capsys, doc, message) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(doc))
    assert train_cli.main(["--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_sizes_read_from_a_config_are_bounded_by_memory(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert train_cli.main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    doc = json.loads((out / "config.json").read_text())
    doc["run"]["synthetic_size"] = [10**12, 200]
    (out / "config.json").write_text(json.dumps(doc))
    t0 = time.monotonic()
    assert train_cli.main(["--resume", str(out)]) == 2
    assert "synthetic_size" in capsys.readouterr().err and time.monotonic() - t0 < 10


def test_corrupt_metrics_log_is_set_aside_on_resume(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert train_cli.main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    good_row = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text(good_row + "{not json\n[1, 2]\n")
    assert train_cli.main(["--resume", str(out), "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "metrics.jsonl line 2, 3 is not a metrics row; the file was moved to metrics.jsonl.corrupt" in err
    assert (out / "metrics.jsonl.corrupt").read_text() == good_row + "{not json\n[1, 2]\n"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_metrics_log_damaged_during_a_live_run_does_not_stop_it(tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    real_train = train_cli.train

    def damage(step: int) -> None:
        if step == 9:  # in epoch 2, after epoch 1's row was written
            (out / "metrics.jsonl").write_bytes(b"\x00\xff garbage")

    monkeypatch.setattr(train_cli, "train", lambda s, r=None: real_train(s, r, on_step=damage))
    assert train_cli.main([*TINY, "--epochs", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert load_checkpoint(out / "last.npz").meta["state"]["epoch"] == 2


def test_a_refused_new_run_leaves_no_folder(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 20)  # 1 MiB: not even the synthetic data fits
    out = tmp_path / "new" / "run"
    assert train_cli.main([*TINY, "--synthetic-size", "2000,10", "--out", str(out)]) == 2
    assert "needs" in capsys.readouterr().err
    assert not out.exists()
