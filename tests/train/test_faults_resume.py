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
from processes import ROOT, run_python
from training_runs import BASE
from data_fixtures import write_cifar

TINY = [*BASE, "--threads", "1", "--seed", "1"]  # the shorthand: the tiny model, 8 steps an epoch


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_python("-m", "npvit.train", *args, timeout=timeout, cwd=ROOT)


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


CIFAR = ["--dataset", "cifar10", "--preset", "tiny", "--batch-size", "16", "--threads", "1", "--quiet",
         "--no-download"]


@pytest.mark.parametrize("change", ["labels shifted", "pixels inverted"])
def test_a_resume_on_other_data_is_refused_unless_allowed(tmp_path, change) -> None:
    """The run records its data's fingerprint; other data on --resume is refused (nothing written), and with
    --allow-different-data accepted, keeping the run's normalisation."""
    import json

    import numpy as np

    same = write_cifar(tmp_path / "a", "cifar10", "binary", per_file=4, n_test=4)
    run = tmp_path / "run"
    done = cli(*CIFAR, "--data-dir", str(same.folder), "--epochs", "1", "--out", str(run))
    assert done.returncode == 0, done.stderr
    recorded = json.loads((run / "config.json").read_text())
    assert set(recorded["data"]) == {"train", "test", "labels", "pixels"}

    # The same records, changed: each binary record is a label byte then 3,072 pixel bytes.
    other = tmp_path / "b" / same.folder.name
    other.mkdir(parents=True)
    for p in same.folder.iterdir():
        raw = np.frombuffer(p.read_bytes(), dtype=np.uint8).copy()
        if p.name.endswith(".bin"):
            records = raw.reshape(-1, 3073)
            if change == "labels shifted":
                records[:, 0] = (records[:, 0] + 1) % 10
            else:
                records[:, 1:] = 255 - records[:, 1:]
        (other / p.name).write_bytes(raw.tobytes())
    before = snapshot(run)
    done = cli("--resume", str(run), "--data-dir", str(other), "--epochs", "2")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"the data differs from the data {run} was trained on (" in done.stderr
    assert ("labels" if change == "labels shifted" else "pixels (a sample of images)") in done.stderr
    assert "--allow-different-data" in done.stderr and "Traceback" not in done.stderr
    assert snapshot(run) == before

    done = cli("--resume", str(run), "--data-dir", str(other), "--epochs", "2", "--allow-different-data")
    assert done.returncode == 0, done.stderr
    assert "training on other data than before" in done.stdout
    after = json.loads((run / "config.json").read_text())
    assert after["normalization"] == recorded["normalization"]  # the run's own, not the other data's
    assert after["data"] != recorded["data"] and "allow_different_data" not in after["run"]


def rewrite_params(path: Path, dtype: str) -> None:
    from npvit.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    params = {k: (v * 1000).astype(dtype) for k, v in ckpt.params.items()}  # * 1000: not all zeros as ints
    save_checkpoint(path, params, ckpt.optimizer, ckpt.meta, ema=ckpt.ema or None)


@pytest.mark.parametrize("dtype", ["int32", "bool", "float16", "float64"])
def test_parameters_of_another_dtype_are_refused_by_resume_and_evaluate(trained, tmp_path, dtype) -> None:
    run = copy_run(trained, tmp_path / "run")
    rewrite_params(run / "last.npz", dtype)
    rewrite_params(run / "best.npz", dtype)
    before = snapshot(run)
    done = cli("--resume", str(run), "--epochs", "3")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "last.npz: parameter " in done.stderr and f" is {dtype}, not float32 as the checkpoint" in done.stderr
    assert "Traceback" not in done.stderr and snapshot(run) == before
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "npvit.evaluate", str(run / "best.npz")],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f" is {dtype}, not float32 as the checkpoint" in done.stderr and "Traceback" not in done.stderr


def test_a_checkpoint_with_a_member_twice_is_refused(trained, tmp_path) -> None:
    """A zip may hold two members of one name; the last would silently win. Refused on --resume."""
    import zipfile

    run = copy_run(trained, tmp_path / "run")
    with zipfile.ZipFile(run / "last.npz") as zf:
        name = next(n for n in zf.namelist() if n.startswith("param/"))
        data = zf.read(name)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate it is asked to write
        with zipfile.ZipFile(run / "last.npz", "a") as zf:
            zf.writestr(name, data)
    done = cli("--resume", str(run), "--epochs", "3")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"holds member {name!r} more than once" in done.stderr and "Traceback" not in done.stderr
