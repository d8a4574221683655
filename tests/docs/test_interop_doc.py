"""docs/interop.md stays true: the commands of its "Try it in a minute" block run as written, and the files
and names it mentions exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "interop.md").read_text()


def quick_commands() -> list[str]:
    section = DOC[DOC.index("## Try it in a minute"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "docs/interop.md's 'Try it in a minute' must hold a bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_quick_commands_run(tmp_path: Path) -> None:
    pytest.importorskip("timm", reason="timm is not installed: pip install timm to run the doc's commands")
    pytest.importorskip("safetensors", reason="safetensors is not installed: pip install 'npvit[interop]'")
    pytest.importorskip("onnx", reason="onnx is not installed: pip install 'npvit[interop]'")
    pytest.importorskip("matplotlib", reason="matplotlib is not installed: pip install 'npvit[viz]'")
    commands = quick_commands()
    assert len(commands) == 5 and "--init-from" in commands[1] and "attention" in commands[2]
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # this checkout's npvit, from any folder
    for command in commands:
        assert command.startswith("python ")
        done = subprocess.run([sys.executable, *_split(command[len("python "):])], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    for produced in ("attention.png", "model.onnx", "model.safetensors", "runs/tiny-finetune/best.npz"):
        assert (tmp_path / produced).is_file(), produced


def _split(text: str) -> list[str]:
    import shlex

    return shlex.split(text)


def test_the_doc_names_what_exists() -> None:
    for test in re.findall(r"`(tests/[\w/]+\.py)`", DOC):
        assert (ROOT / test).is_file(), test
    import npvit

    for arch in re.findall(r"--arch (\w+)", DOC):
        assert arch in npvit.config.TIMM_ARCHS, arch
    for recipe in re.findall(r"--recipe (\w+)", DOC):
        assert recipe in npvit.recipes.RECIPES, recipe
