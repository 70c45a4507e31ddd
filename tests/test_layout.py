"""The layout holds: every import runs down `cli > bench > api, agents > infra > tables > streams`.

Read from the source with `ast` (imports inside functions count too), so a new upward import fails the
build with the file, the line and both packages named.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A package may import its own modules and those of packages with a lower level; api and agents are
# peers and import neither each other nor anything above them.
LEVELS = {"streams": 1, "tables": 2, "infra": 3, "agents": 4, "api": 4, "bench": 5, "cli": 6}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module.split(".")[0]))
    return [(line, pkg) for line, pkg in out if pkg in LEVELS]


def upward_imports() -> list[str]:
    bad = []
    for package, level in LEVELS.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, target in imported_packages(path):
                if target != package and LEVELS[target] >= level:
                    bad.append(f"{path.relative_to(ROOT)}:{line} ({package}) imports {target}")
    return bad


def test_every_import_runs_down() -> None:
    assert upward_imports() == []


def test_the_walker_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom tables import keys\n\ndef f():\n    from api.app import create_app\n")
    assert imported_packages(module) == [(2, "tables"), (5, "api")]
