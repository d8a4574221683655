"""benchmarks/gpu_check.py: every section run through the fake CuPy (--simulate), the files it leaves, and its
refusal to start without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def gpu_check(*args: str, timeout: float = 280) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess, float]:
    out = tmp_path_factory.mktemp("gpu-check")
    start = time.perf_counter()
    p = gpu_check("--simulate", "--out", str(out), "--budget", "240")
    return out, p, time.perf_counter() - start


def test_simulate_runs_every_section_and_reports_per_step_counts(simulated) -> None:
    """The whole script on the fake CuPy, as CI runs it: each section ran, the step of each recipe has its
    host syncs (none) and launches, and evaluation reads the device once per pass."""
    out, p, seconds = simulated
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    sections = doc["sections"]
    assert list(sections) == ["environment", "selftest", "steps", "correctness", "nccl", "speed", "colsum", "tests"]
    for name, section in sections.items():
        assert section["status"].startswith(("passed", "measured")), (name, section)
    for recipe in ("fast", "keras"):
        step = doc["steps"][recipe]
        assert step["host_syncs"] == 0 and step["launches"] > 100, step
        assert step["evaluation"]["host_syncs"] == 0 and step["evaluation"]["reads"] == 1
    assert "bytes id" in (out / "report.md").read_text()  # NCCL joined with CuPy 14's id type
    assert seconds < 300


def test_simulate_leaves_at_most_eight_files_and_a_kernel_cache_that_a_second_run_takes(simulated,
                                                                                    tmp_path) -> None:
    out, p, _ = simulated
    files = sorted(f.name for f in out.iterdir())
    assert len(files) <= 8 and all((out / f).is_file() for f in files), files
    assert {"report.md", "results.json", "faulthandler.txt", "kernel-cache.tar.gz", "tests.txt"} <= set(files)
    with tarfile.open(out / "kernel-cache.tar.gz") as tar:
        tar.getmembers()  # a readable archive
    again = tmp_path / "again"
    q = gpu_check("--simulate", "--out", str(again), "--kernel-cache", str(out / "kernel-cache.tar.gz"),
                  "--skip", "steps,correctness,speed,tests")
    assert q.returncode == 0, q.stdout + q.stderr
    assert "cached kernels unpacked" in q.stdout
    assert json.loads((again / "results.json").read_text())["sections"]["steps"]["status"] == "skipped (--skip)"


def test_a_budget_too_small_skips_sections_but_keeps_the_report(tmp_path) -> None:
    p = gpu_check("--simulate", "--out", str(tmp_path), "--budget", "2", "--skip", "tests", timeout=120)
    doc = json.loads((tmp_path / "results.json").read_text())
    statuses = [s["status"] for s in doc["sections"].values()]
    assert any(s.startswith(("skipped (out of budget)", "timed out")) for s in statuses), statuses
    assert (tmp_path / "report.md").read_text().startswith("# npvit GPU check")
    assert "Traceback" not in p.stderr


def test_bad_arguments_are_one_clear_message(tmp_path) -> None:
    p = gpu_check("--simulate", "--out", str(tmp_path), "--kernel-cache", str(tmp_path / "missing.tar.gz"))
    assert p.returncode == 2 and "no such file" in p.stderr and "Traceback" not in p.stderr
    p = gpu_check("--simulate", "--skip", "nothing")
    assert p.returncode == 2 and "unknown section" in p.stderr


def test_without_a_gpu_it_stops_at_once(tmp_path) -> None:
    if any((d.metadata["Name"] or "").lower().startswith("cupy") for d in metadata.distributions()):
        pytest.skip("CuPy is installed here: the no-GPU path is not what this machine would take")
    start = time.perf_counter()
    p = gpu_check("--out", str(tmp_path / "out"), timeout=120)
    assert p.returncode == 2 and "no usable GPU" in p.stderr and "Traceback" not in p.stderr
    assert time.perf_counter() - start < 60 and not (tmp_path / "out").exists()
