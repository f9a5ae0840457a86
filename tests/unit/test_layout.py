"""collectors/, policies/ and actuators/ never import scaler/ or each other (docs/design.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("collectors", "policies", "actuators")


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_itself_among_ours(package: str) -> None:
    forbidden = {"scaler", *PACKAGES} - {package}
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    offenders = {f"{f.relative_to(ROOT)} imports {sorted(imported_roots(f) & forbidden)}"
                 for f in files if imported_roots(f) & forbidden}
    assert not offenders, offenders


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("import os\nfrom scaler.store import Store\n")
    assert "scaler" in imported_roots(bad)
