"""docs/study.md: its reading order names sections and functions that exist, and its examples run as shown."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import npvit.reference

ROOT = Path(__file__).resolve().parents[2]
STUDY = (ROOT / "docs" / "study.md").read_text()
MATH = (ROOT / "docs" / "math.md").read_text()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def run(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/study.md", "exec"), {})
    return out.getvalue()


def test_reading_order_points_at_real_sections_and_functions() -> None:
    rows = re.findall(r"^\| (\d) \| §(\d+) ([^|]+?) \| ([^|]+) \|$", STUDY, re.M)
    assert [int(step) for step, *_ in rows] == list(range(1, 8))
    assert [int(section) for _, section, *_ in rows] == [1, 2, 3, 5, 7, 8, 11]
    for _, section, title, functions in rows:
        assert f"## {section}. {title}" in MATH, f"docs/math.md has no section '{section}. {title}'"
        for name in re.findall(r"`(\w+)`", functions):
            assert callable(getattr(npvit.reference, name, None)), f"npvit.reference has no {name}"


MARKER = "<!-- study example: gradcheck_model -->"
# Every page that shows the whole-model gradient check carries the marker above its block: docs/study.md
# always, the README once it points here.
PAGES = [path for path in (ROOT / "docs" / "study.md", ROOT / "README.md") if MARKER in path.read_text()]


def test_study_md_shows_the_gradcheck_model_example() -> None:
    assert ROOT / "docs" / "study.md" in PAGES


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_the_gradcheck_model_example_runs_as_shown(page: Path) -> None:
    text = page.read_text()
    code = python_blocks(text[text.index(MARKER):])[0]
    assert "npvit.gradcheck_model(" in code and 'dtype="float64"' in code
    lines = run(code).splitlines()
    passed, error = lines[0].split()
    assert passed == "True" and float(error) < 1e-6
    assert lines[-1].startswith("ok   images:") and all(line.startswith("ok ") for line in lines[1:])


def test_the_twin_example_runs_as_shown() -> None:
    code = python_blocks(STUDY)[0]
    first, second = (float(v) for v in run(code).split())
    assert first < 1e-15 and second < 1e-15
