"""What the README and docs/ show runs as shown.

Every command of their bash blocks that runs on a CPU in seconds is run here verbatim, in a fresh folder:
training on synthetic data (no download), what reads the run folder that makes (``runs/synthetic-*``), the
demo and the study reference. Every Python block of docs/api.md runs too, in that folder, top to bottom.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), re.S | re.M)


def shell_commands(path: Path) -> list[str]:
    """The command lines of a page's bash blocks: continuations joined, comments dropped."""
    commands = []
    for block in blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(shlex.join(shlex.split(line, comments=True)))
    return commands


def runs_in_seconds(command: str) -> bool:
    words = command.split()
    if words[:2] != ["python", "-m"] or not words[2].startswith("npvit."):
        return False
    module, args = words[2], words[3:]
    # Training from a pretrained file needs the file its page makes first: tests/docs/test_interop_doc.py runs it
    synthetic = any(a == "--dataset" and b == "synthetic" for a, b in zip(args, args[1:])) and "--init-from" not in args
    return (module in ("npvit.demo", "npvit.reference") or (module == "npvit.train" and synthetic)
            or any(w.startswith("runs/synthetic-") for w in args))


def quick_commands() -> list[tuple[str, str]]:
    """(page, command) for each quick command, in page order."""
    found = [(path.relative_to(ROOT).as_posix(), c) for path in PAGES for c in shell_commands(path)
             if runs_in_seconds(c)]
    return found


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    argv = [sys.executable, *shlex.split(command)[1:]]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


QUICK = quick_commands()
TRAINING = [c for _, c in QUICK if c.startswith("python -m npvit.train")]
OTHERS = list(dict.fromkeys(c for _, c in QUICK if c not in TRAINING))  # in page order, each once


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where every documented training command has run, as the pages tell the reader to first."""
    folder = tmp_path_factory.mktemp("docs")
    for command in dict.fromkeys(TRAINING):
        result = run(command, folder)
        assert result.returncode == 0, f"`{command}` exited {result.returncode}:\n{result.stderr[-2000:]}"
    assert (folder / "runs" / "synthetic-tiny" / "best.npz").is_file()
    return folder


def test_the_pages_show_quick_commands() -> None:
    assert any("synthetic" in c for c in TRAINING)
    assert {"python -m npvit.demo", "python -m npvit.reference"} <= set(OTHERS)
    assert any(c.startswith("python -m npvit.visualize") for c in OTHERS)


def test_the_readme_shows_a_smoke_run_in_seconds() -> None:
    readme = [c for page, c in QUICK if page == "README.md"]
    assert any(c.startswith("python -m npvit.train") and "synthetic" in c for c in readme), \
        "README.md should show a training run on synthetic data (seconds, no download)"


def figures_first(command: str, workdir: Path) -> None:
    """Run the documented ``visualize`` commands that write the figures ``command`` reads (e.g. patches.png)."""
    for word in command.split()[3:]:
        if word.endswith(".png") and not (workdir / word).exists():
            writer = next(c for c in OTHERS if c.split()[3:4] == [word[:-4]] and "npvit.visualize" in c)
            assert run(writer, workdir).returncode == 0, writer


@pytest.mark.parametrize("command", OTHERS)
def test_quick_command_runs(command: str, workdir: Path) -> None:
    figures_first(command, workdir)
    result = run(command, workdir)
    assert result.returncode == 0, f"`{command}` exited {result.returncode}:\n{result.stderr[-2000:]}"


def test_the_api_page_runs(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/api.md's blocks, in order; the loading example reads the run the smoke command writes."""
    code = blocks(ROOT / "docs" / "api.md", "python")
    assert len(code) >= 3
    monkeypatch.chdir(workdir)
    for i, block in enumerate(code):
        exec(compile(block, f"docs/api.md, python block {i + 1}", "exec"), {"__name__": "__docs__"})
