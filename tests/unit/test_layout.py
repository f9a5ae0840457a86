"""collectors/, policies/ and actuators/ never import scaler/ or each other, and the drivers in
actuators/ never import each other (docs/design.md)."""

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


DRIVERS = ("kernel", "bgp", "openstack", "lab")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def driver_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "actuators" and parts[1] in DRIVERS else None


@pytest.mark.parametrize("driver", DRIVERS)
def test_drivers_never_import_each_other(driver: str) -> None:
    files = sorted((ROOT / "actuators" / driver).rglob("*.py"))
    assert files, f"actuators/{driver}/ has no modules"
    offenders = {f"{f.relative_to(ROOT)} imports {m}" for f in files for m in imported_modules(f)
                 if driver_of(m) not in (None, driver)}
    assert not offenders, offenders


def test_only_the_registry_imports_drivers_among_the_shared_actuator_modules() -> None:
    shared = [f for f in sorted((ROOT / "actuators").rglob("*.py"))
              if f.relative_to(ROOT / "actuators").parts[0] not in DRIVERS and f.name != "registry.py"]
    assert shared
    offenders = {f"{f.relative_to(ROOT)} imports {m}" for f in shared for m in imported_modules(f)
                 if driver_of(m) is not None}
    assert not offenders, offenders


def test_the_driver_check_sees_a_driver_importing_another(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("from actuators.linux import netns\nfrom actuators.bgp import router\n")
    assert {driver_of(m) for m in imported_modules(bad)} == {None, "bgp"}


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("import os\nfrom scaler.store import Store\n")
    assert "scaler" in imported_roots(bad)
