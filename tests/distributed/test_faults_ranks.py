"""Jobs of several processes under faults: a rank that fails before or while connecting, a frozen peer, and
ranks that disagree. Real ``mpiexec`` jobs of ``python -m npvit.train`` and real signals; skipped, saying so,
only where mpi4py or mpiexec is missing."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
                               reason="needs mpi4py and mpiexec (pip install -e '.[mpi]')")
LAUNCH_VARIABLES = ("OMPI_COMM_WORLD_", "PMI_", "PMIX_", "MPI_LOCAL", "SLURM_", "HYDRA_")
# The shorthand M: 2,500 steps per epoch, so a run lasts until stopped.
M = ["--dataset", "synthetic", "--synthetic-size", "20000,40", "--synthetic-image-size", "8",
     "--synthetic-classes", "4", "--preset", "tiny", "--batch-size", "8", "--threads", "1", "--quiet",
     "--seed", "3"]
TRAIN = [sys.executable, "-m", "npvit.train"]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_VARIABLES)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env.pop("NPVIT_COLLECTIVE_TIMEOUT", None)
    return env


def job(*ranks: list[str], timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    """``mpiexec -n 1 RANK0 : -n 1 RANK1 ...``, each a list of mpiexec options then the command; returns
    the finished job and how long it took."""
    command = [MPIEXEC or "mpiexec"]
    for i, rank in enumerate(ranks):
        command += ([":"] if i else []) + ["-n", "1", *rank]
    start = time.monotonic()
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return done, time.monotonic() - start


@needs_mpi
@pytest.mark.parametrize("rank1", [
    ["--epochs", "0"],                                 # refused by the flag's check
    ["--no-such-flag"],                                # refused by the parser
])
def test_a_rank_refusing_its_flags_ends_the_whole_job(tmp_path, rank1) -> None:
    out = str(tmp_path / "x")
    done, seconds = job([*TRAIN, *M, "--epochs", "1", "--out", out], [*TRAIN, *M, "--out", out, *rank1])
    assert seconds < 30, f"the job took {seconds:.0f} s to end"
    assert done.returncode == 2, done.stderr
    assert "rank 1 of 2:" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@needs_mpi
def test_an_unreadable_collective_timeout_on_one_rank_ends_the_whole_job(tmp_path) -> None:
    out = str(tmp_path / "x")
    done, seconds = job([*TRAIN, *M, "--epochs", "1", "--out", out],
                        ["-env", "NPVIT_COLLECTIVE_TIMEOUT", "ten", *TRAIN, *M, "--epochs", "1", "--out", out])
    assert seconds < 30, f"the job took {seconds:.0f} s to end"
    assert done.returncode == 2, done.stderr
    assert "rank 1 of 2: error: NPVIT_COLLECTIVE_TIMEOUT='ten': expected a number of seconds" in done.stderr
    assert "Traceback" not in done.stderr


def rank_pids(launcher: int) -> dict[int, int]:
    """The process ids of the ranks (python processes under ``launcher``), by their PMI_RANK."""
    found, todo = {}, [launcher]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
        if pid != launcher:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"npvit.train" in cmdline:
                for entry in env:
                    if entry.startswith(b"PMI_RANK="):
                        found[int(entry[9:])] = pid
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@needs_mpi
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads process trees from /proc (Linux)")
def test_a_frozen_peer_leaves_a_rank_that_sleeps_and_stops_at_a_second_signal(tmp_path) -> None:
    """Rank 1 frozen (SIGSTOP): rank 0 waits in the gradient sum using almost no CPU; SIGTERM makes it ask to
    stop, a second SIGTERM ends the whole job at once (long before the 600 s watchdog)."""
    proc = subprocess.Popen([MPIEXEC or "mpiexec", "-n", "2", *TRAIN, *M, "--epochs", "1", "--out",
                             str(tmp_path / "run")], env=environment(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(pids := rank_pids(proc.pid)) < 2 or not (tmp_path / "run" / "config.json").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the job did not start training"
            time.sleep(0.2)
        time.sleep(1.0)  # training steps now
        os.kill(pids[1], signal.SIGSTOP)
        time.sleep(1.0)  # rank 0 reaches the next sum and waits
        used = cpu_seconds(pids[0])
        time.sleep(2.0)
        share = (cpu_seconds(pids[0]) - used) / 2.0
        assert share < 0.25, f"rank 0 used {share:.0%} of a core waiting for a frozen peer"
        os.kill(pids[0], signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # the first signal asks to stop after the step: the step waits for rank 1
        os.kill(pids[0], signal.SIGTERM)
        start = time.monotonic()
        _, err = proc.communicate(timeout=30)
        seconds = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert seconds < 10, f"the job took {seconds:.1f} s to end after the second signal"
    assert proc.returncode == 143, err
    assert "rank 0 of 2:" in err, err


# ---- ranks that disagree --------------------------------------------------------------------------------------
TINY = ["--dataset", "synthetic", "--synthetic-size", "240,60", "--synthetic-image-size", "16",
        "--synthetic-classes", "4", "--preset", "tiny", "--batch-size", "32", "--learning-rate", "3e-3",
        "--threads", "1", "--quiet", "--seed", "1"]


@needs_mpi
@pytest.mark.parametrize("rank1, message", [
    (["--seed", "2"], '--seed is 1 on rank 0 and 2 on rank 1'),
    (["--learning-rate", "0.01"], "--learning-rate is 0.003 on rank 0 and 0.01 on rank 1"),
    (["--batch-size", "16"], "--batch-size is 32 on rank 0 and 16 on rank 1"),
])
def test_ranks_started_with_different_flags_stop_naming_the_first_difference(tmp_path, rank1, message) -> None:
    out = str(tmp_path / "run")
    done, seconds = job([*TRAIN, *TINY, "--epochs", "1", "--out", out],
                        [*TRAIN, *TINY, "--epochs", "1", "--out", out, *rank1])
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"the 2 processes disagree on how to train: {message} (rank 1 differ" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "epoch 1/1" not in done.stdout
    assert not (tmp_path / "run").exists()  # the refused new run left nothing


@needs_mpi
def test_ranks_resuming_from_different_checkpoints_stop_naming_the_step(tmp_path) -> None:
    """What an unshared or stale file system does: rank 0 reads a run at step 14, rank 1 a copy at step 7."""
    ahead, behind = tmp_path / "ahead", tmp_path / "behind"
    for folder, epochs in ((ahead, "2"), (behind, "1")):
        done = subprocess.run([*TRAIN, *TINY, "--epochs", epochs, "--out", str(folder)], env=environment(),
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr
    before = (ahead / "last.npz").read_bytes()
    done, _ = job([*TRAIN, "--resume", str(ahead), "--epochs", "3"],
                  [*TRAIN, "--resume", str(behind), "--epochs", "3"])
    assert done.returncode == 2, done.stdout + done.stderr
    assert "disagree on how to train: the step is 14 on rank 0 and 7 on rank 1" in done.stderr, done.stderr
    assert (ahead / "last.npz").read_bytes() == before

    # The same step, other weights: a run with the same settings continued elsewhere.
    (behind / "last.npz").write_bytes(before)
    for name in ("config.json",):
        (behind / name).write_bytes((ahead / name).read_bytes())
    other = tmp_path / "other"
    done = subprocess.run([*TRAIN, *TINY[:-1], "9", "--epochs", "2", "--out", str(other)], env=environment(),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    config = (ahead / "config.json").read_text()
    (other / "config.json").write_text(config)  # the same recorded settings, weights trained from seed 9
    done, _ = job([*TRAIN, "--resume", str(ahead), "--epochs", "3"],
                  [*TRAIN, "--resume", str(other), "--epochs", "3"])
    assert done.returncode == 2, done.stdout + done.stderr
    assert "disagree on how to train: the weights (a hash) is" in done.stderr, done.stderr
