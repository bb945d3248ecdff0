"""Imports flow one way: tui -> analysis, db, themes; db -> analysis; analysis imports neither."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "analysis": {"textual", "textual_plotext", "db", "tui", "themes"},
    "db": {"textual", "textual_plotext", "tui"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_headless_core(package):
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN[package], (
                    f"{path.relative_to(ROOT)} imports {name}"
                )
