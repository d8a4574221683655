"""Errors that must be one clear message, never a traceback or a bare errno: --out naming a file, a learning
rate that overflows, a full disk, a metrics line nested too deep. Real ``python -m npvit.train`` processes."""

from __future__ import annotations

import subprocess

import pytest
from processes import ROOT, run_python
from training_runs import BASE

TINY = [*BASE, "--threads", "1", "--seed", "1"]  # the shorthand: the tiny model, 8 steps an epoch


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_python("-m", "npvit.train", *args, timeout=timeout, cwd=ROOT)


def test_out_naming_a_file_is_one_message(tmp_path) -> None:
    (tmp_path / "afile").write_text("mine")
    for out, message in ((tmp_path / "afile", "is a file, not a folder"),
                         (tmp_path / "afile" / "run", "a part of the path is a file, not a folder")):
        done = cli(*TINY, "--epochs", "1", "--out", str(out))
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Errno" not in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "afile").read_text() == "mine"


def test_an_overflowing_learning_rate_prints_only_the_clear_message(tmp_path) -> None:
    at = TINY.index("--learning-rate")
    done = cli(*TINY[:at], "--learning-rate", "1e30", *TINY[at + 2:], "--epochs", "1", "--out", str(tmp_path / "r"))
    assert done.returncode == 1, done.stderr
    assert "RuntimeWarning" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith("error: the loss or the gradient became non-finite"), done.stderr


def test_a_metrics_line_nested_too_deep_is_set_aside_not_a_traceback(tmp_path) -> None:
    run = tmp_path / "run"
    assert cli(*TINY, "--epochs", "1", "--out", str(run)).returncode == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write("[" * 100_000 + "]" * 100_000 + "\n")
    done = cli("--resume", str(run), "--epochs", "2")
    assert done.returncode == 0, done.stderr
    assert "line 2 is not a metrics row" in done.stderr and "Traceback" not in done.stderr
    assert (run / "metrics.jsonl.corrupt").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (mounting needs root; elsewhere the test says why it cannot run)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_names_the_folder_and_leaves_no_empty_folder(small_disk) -> None:
    # Room for the config and metrics but not a checkpoint: the message names the folder and the way on.
    done = cli(*TINY, "--epochs", "3", "--out", str(small_disk / "run"))
    assert done.returncode == 2, done.stderr
    assert (f"No space left on device while saving a checkpoint in {small_disk / 'run'}; no checkpoint was "
            "written") in done.stderr and f"--resume {small_disk / 'run'} starts the run over" in done.stderr
    assert "Traceback" not in done.stderr
    # A full disk: a refused new run leaves nothing, not a folder holding an empty .lock.
    with open(small_disk / "fill", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    done = cli(*TINY, "--epochs", "1", "--out", str(small_disk / "new"))
    assert done.returncode == 2, done.stderr
    assert f"No space left on device while starting in {small_disk / 'new'}" in done.stderr
    assert not (small_disk / "new").exists()
