"""Resumes that must question what they find: a trained run folder without a usable last.npz, a different
dataset, parameters of the wrong dtype. Each test runs ``python -m npvit.train`` in real processes and checks
the exit status, the one message and that nothing in the folder changed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--dataset", "synthetic", "--synthetic-size", "240,60", "--synthetic-image-size", "16",
        "--synthetic-classes", "4", "--preset", "tiny", "--batch-size", "32", "--learning-rate", "3e-3",
        "--threads", "1", "--quiet", "--seed", "1"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "npvit.train", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file's name and content hash (links by their target), the lock file aside."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name == ".lock":  # holds the pid of the last process that locked the folder
            continue
        if p.is_symlink():
            out[p.name] = "-> " + os.readlink(p)
        elif p.is_file():
            out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished run of 2 epochs (16 steps): last.npz, best.npz, 2 metrics rows, summary.json."""
    out = tmp_path_factory.mktemp("trained") / "run"
    done = cli(*TINY, "--epochs", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize("damage", ["removed", "dangling link", "looping link"])
def test_a_trained_run_without_a_usable_last_checkpoint_is_refused_unchanged(trained, tmp_path, damage) -> None:
    run = copy_run(trained, tmp_path / "run")
    (run / "last.npz").unlink()
    if damage == "dangling link":
        (run / "last.npz").symlink_to(run / "gone.npz")
    elif damage == "looping link":
        (run / "last.npz").symlink_to(run / "last.npz")
    before = snapshot(run)
    done = cli("--resume", str(run), "--max-steps", "7")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "holds a trained run (" in done.stderr and "best.npz, 2 metrics rows, summary.json" in done.stderr
    assert "cp " in done.stderr and "another --out" in done.stderr and "Traceback" not in done.stderr
    assert "starting it over" not in done.stdout
    assert snapshot(run) == before


def test_a_run_stopped_before_its_first_checkpoint_still_starts_over(tmp_path) -> None:
    """Only a config (the run stopped before its first checkpoint): --resume starts it over, as before."""
    run = tmp_path / "run"
    done = cli(*TINY, "--epochs", "1", "--max-steps", "1", "--out", str(run))
    assert done.returncode == 0, done.stderr
    for name in ("last.npz", "best.npz", "metrics.jsonl", "metrics.csv", "summary.json"):
        (run / name).unlink()
    done = cli("--resume", str(run), "--max-steps", "2")
    assert done.returncode == 0, done.stderr
    assert "starting it over from step 0" in done.stdout and (run / "last.npz").is_file()
