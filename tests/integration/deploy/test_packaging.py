"""The wheel works alone: built from this tree, installed into a fresh virtualenv, run outside the
source tree, it answers `scaler --version`, finds the user-data template it ships and loads the
production example.

Offline: the wheel is built without build isolation (setuptools of the dev virtualenv), and the new
virtualenv sees the dev virtualenv's installed packages through a .pth file pointing at a directory
of links to them. pip still resolves the wheel's dependencies against what is installed, so a
dependency the wheel does not declare, or one missing, fails here. The dev virtualenv's own editable
scaler and the optional extras' packages (psycopg, openstacksdk, exabgp, matplotlib) are left out of
that view: the core install must not need them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.support.production import install

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SOURCES = ("pyproject.toml", "README.md", "scaler", "collectors", "policies", "actuators")
# Our own editable install, and the extras' packages (pyproject.toml [project.optional-dependencies]).
OURS = ("scaler-", "__editable__")
HIDDEN = (*OURS, "psycopg", "openstack", "exabgp", "matplotlib", "mpl_toolkits")


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path
    work: Path          # a directory outside the source tree, the commands' working directory

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        return subprocess.run(args, cwd=self.work, env=env, capture_output=True, text=True, timeout=120)


def build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(ROOT / name, src / name)
    out = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--wheel-dir", str(out), str(src)], check=True, timeout=300)
    wheels = list(out.glob("scaler-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def dependency_view(tmp: Path, hidden: tuple[str, ...]) -> Path:
    """Links to the dev virtualenv's installed packages but those whose names start with `hidden`."""
    site = Path(sysconfig.get_paths()["purelib"])
    view = tmp / f"deps-{len(hidden)}"
    view.mkdir()
    for entry in site.iterdir():
        if entry.suffix == ".pth" or entry.name.lower().startswith(hidden) or entry.name == "__pycache__":
            continue
        (view / entry.name).symlink_to(entry.resolve())
    return view


def new_venv(tmp: Path, name: str, hidden: tuple[str, ...]) -> Path:
    """A fresh virtualenv seeing the dev virtualenv's packages but `hidden`; returns its python."""
    venv = tmp / name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "dev-dependencies.pth").write_text(f"{dependency_view(tmp, hidden)}\n")
    return python


def pip_install(python: Path, wheel: Path, requirement: str) -> subprocess.CompletedProcess[str]:
    """pip (the dev virtualenv's) installing into `python`'s environment, from `wheel`'s directory only."""
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
                           "--find-links", str(wheel.parent), requirement], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("packaging")
    wheel = build_wheel(tmp)
    python = new_venv(tmp, "venv", HIDDEN)
    done = pip_install(python, wheel, "scaler")
    assert done.returncode == 0, done.stdout + done.stderr
    work = tmp / "elsewhere"
    work.mkdir()
    yield Installed(python.parent.parent, wheel, work)


def test_the_wheel_carries_the_files_loaded_at_run_time(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for needed in ("actuators/openstack/templates/member.yaml.tmpl", "actuators/openstack/templates/heat/pool.yaml",
                   "actuators/openstack/templates/heat/member.yaml", "scaler/migrations/env.py",
                   "scaler/migrations/script.py.mako"):
        assert needed in names
    assert any(n.startswith("scaler/migrations/versions/0001") for n in names)


def test_scaler_version_from_the_installed_package(installed: Installed) -> None:
    done = installed.run(str(installed.venv / "bin" / "scaler"), "--version")
    assert done.returncode == 0, done.stderr
    assert version("scaler") in done.stdout


def test_the_default_user_data_renders_from_the_installed_package(installed: Installed) -> None:
    script = """
import actuators.openstack.userdata as u, scaler
from ipaddress import IPv4Address
inputs = u.UserDataInputs.model_validate({"haproxy": {"backends": ["10.0.0.9:8080"]}})
print(scaler.__file__)
print(u.SHIPPED_TEMPLATE)
print(u.render_user_data(u.SHIPPED_TEMPLATE, inputs, name="web-1", pool="web", vip=IPv4Address("203.0.113.10"),
                         address="10.0.1.20"))
"""
    done = installed.run(str(installed.venv / "bin" / "python"), "-c", script)
    assert done.returncode == 0, done.stderr
    module, template, *user_data = done.stdout.splitlines()
    for path in (module, template):
        assert Path(path).is_relative_to(installed.venv) and not Path(path).is_relative_to(ROOT), path
    text = "\n".join(user_data)
    assert text.startswith("#cloud-config") and "203.0.113.10" in text and "server s1 10.0.0.9:8080 check" in text


def test_scaler_check_loads_the_production_example_without_the_extras(installed: Installed) -> None:
    config = install(installed.work / "etc-scaler")
    done = installed.run(str(installed.venv / "bin" / "scaler"), "check", "-c", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{config}: OK" in done.stdout


def test_a_missing_extra_is_named_with_the_install_command(installed: Installed) -> None:
    script = """
from actuators.errors import OrchestratorError
from actuators.openstack.api import connect
try:
    connect(None, None, None, 1.0)
except OrchestratorError as exc:
    print(exc)
"""
    done = installed.run(str(installed.venv / "bin" / "python"), "-c", script)
    assert done.returncode == 0, done.stderr
    assert "needs openstacksdk" in done.stdout and "pip install 'scaler[openstack]'" in done.stdout


def test_an_extra_is_not_part_of_the_core_install(installed: Installed) -> None:
    """psycopg is not visible to this virtualenv, so asking for the extra must fail, offline."""
    done = pip_install(installed.venv / "bin" / "python", installed.wheel, "scaler[postgresql]")
    assert done.returncode != 0 and "psycopg" in done.stdout + done.stderr, done.stdout + done.stderr


def test_the_all_extra_resolves_to_what_the_drivers_import(installed: Installed,
                                                            tmp_path: Path) -> None:
    python = new_venv(tmp_path, "venv-all", OURS)
    done = pip_install(python, installed.wheel, "scaler[all]")
    assert done.returncode == 0, done.stdout + done.stderr
    for package in ("psycopg", "openstacksdk", "exabgp", "matplotlib"):
        assert re.search(rf"Requirement already satisfied: {package}\b", done.stdout, re.I), package
    imports = installed.run(str(python), "-c", "import psycopg, openstack, exabgp, matplotlib")
    assert imports.returncode == 0, imports.stderr
