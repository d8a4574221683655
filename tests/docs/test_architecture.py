"""The layout docs/architecture.md draws: floors that import only downwards, no circles, short files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "npvit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """npvit modules that ``name`` imports, at the top or inside functions (lazy imports count too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


def floors_from_doc() -> dict[str, int]:
    """The floor of each part of the package, from the table in docs/architecture.md (floor | parts)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    floors = {}
    for floor, parts in re.findall(r"^\| (\d+) \| ([^|]+) \|", text, re.M):
        for part in re.findall(r"`([\w/.]+)`", parts):
            name = "npvit." + part.removesuffix("/").removesuffix(".py").replace("/", ".")
            floors[name.removesuffix(".__init__")] = int(floor)
    return floors


def part_of(name: str, floors: dict[str, int]) -> str:
    while name not in floors and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_every_part_has_a_floor_and_every_import_points_down() -> None:
    floors = floors_from_doc()
    assert len(floors) >= 20, "docs/architecture.md lost its floor table"
    unplaced = sorted({part_of(m, floors) for m in MODULES} - set(floors))
    assert not unplaced, f"parts of npvit with no floor in docs/architecture.md: {unplaced}"
    upward = []
    for name in MODULES:
        here = part_of(name, floors)
        for target in imports_of(name):
            there = part_of(target, floors)
            if there != here and floors[there] >= floors[here]:
                upward.append(f"{name} (floor {floors[here]}) imports {target} (floor {floors[there]})")
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_no_import_circle() -> None:
    graph = {name: imports_of(name) for name in MODULES}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph[name]):
            assert state.get(target) != 1, "import circle: " + " -> ".join(path[path.index(target):] + [target])
            if target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_short_files_and_a_short_top_level() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500 and p.name != "reference.py"}
    assert not long, f"files over 500 lines (one job per file): {long}"
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 16, f"{len(top)} modules at the top of npvit/: {top}"
