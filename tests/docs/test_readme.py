"""The README and docs/ stay true: the two opening commands (CI runs the test command exactly), a README
short enough to read, links that resolve, and the Guarantees table naming tests that exist."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md must open with a bash block of commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_two_commands() -> None:
    """Install and train, install and test: the two lines a newcomer copies first, word for word."""
    assert readme_commands() == [
        "pip install -e . && python -m npvit.train --dataset cifar10 --recipe cct",
        "pip install -e '.[test]' && python -m pytest -q",
    ]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_every_guarantee_names_tests_that_exist() -> None:
    """The Guarantees table (docs/training.md) names the tests that prove each promise; a renamed or deleted
    test breaks it."""
    text = (ROOT / "docs" / "training.md").read_text()
    section = text[text.index("\n## Guarantees\n"):]
    section = section[:section.index("\n## ", 1)]
    named, current = [], None
    for path, name in re.findall(r"`(tests/[\w/]+\.py)?::(\w+)`", section):
        current = path or current
        named.append((current, name))
    assert len(named) >= 20
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M)]
    assert not missing, f"docs/training.md's Guarantees names tests that do not exist: {missing}"


def test_readme_is_at_most_200_lines() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move details to docs/ and link them"


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").glob("*.md"))]


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.M):
        slug = "".join(c for c in heading.lower() if c in " -_" or unicodedata.category(c)[0] in "LN")
        found.add(slug.replace(" ", "-"))
    return found


def test_every_relative_link_resolves() -> None:
    """Links and images in README.md, docs/ and benchmarks/ point at files (and headings) that exist."""
    broken, checked = [], 0
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            checked += 1
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert checked >= 20
    assert not broken, "broken links:\n" + "\n".join(broken)
