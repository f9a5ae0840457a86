"""deploy/systemd: the unit and its drop-ins pass `systemd-analyze verify`, hold exactly the
capabilities of the drivers they are for (`systemd-analyze security --offline=yes`), the sysusers file
makes the user, and the unit's own command lines work with the installed CLI."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.production import install

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
UNIT_DIR = ROOT / "deploy" / "systemd"
SHIPPED_PROGRAM = "/opt/scaler/bin/scaler"
# The scaler of the virtualenv running the tests: verify wants the unit's programs to exist.
PROGRAM = str(Path(sys.executable).parent / "scaler")
NO_DROP_INS: tuple[str, ...] = ()


def unit_tree(tmp: Path, drop_ins: tuple[str, ...]) -> Path:
    """scaler.service (its program replaced by ours) and the chosen drop-ins, as a unit directory."""
    unit = tmp / "scaler.service"
    unit.write_text((UNIT_DIR / "scaler.service").read_text().replace(SHIPPED_PROGRAM, PROGRAM))
    if drop_ins:
        (tmp / "scaler.service.d").mkdir()
    for name in drop_ins:
        shutil.copy(UNIT_DIR / "scaler.service.d" / name, tmp / "scaler.service.d" / name)
    return tmp


def analyze(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The trailing colon keeps systemd's own unit directories (network-online.target, …) after ours.
    env = os.environ | {"SYSTEMD_UNIT_PATH": f"{tmp}:", "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"}
    return subprocess.run(["systemd-analyze", *args], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("drop_ins", [NO_DROP_INS, ("kernel-router.conf",), ("netns.conf",),
                                      ("kernel-router.conf", "netns.conf")], ids=lambda d: "+".join(d) or "unit")
def test_verify_is_clean(tmp_path: Path, drop_ins: tuple[str, ...]) -> None:
    unit_tree(tmp_path, drop_ins)
    done = analyze(tmp_path, "verify", "scaler.service")
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_verify_reports_a_misspelt_key(tmp_path: Path) -> None:
    """The check above can fail: systemd-analyze names an unknown key in a drop-in."""
    unit_tree(tmp_path, ("kernel-router.conf",))
    conf = tmp_path / "scaler.service.d" / "kernel-router.conf"
    conf.write_text(conf.read_text().replace("AmbientCapabilities=", "AmbientCapabilites="))
    done = analyze(tmp_path, "verify", "scaler.service")
    assert "Unknown key 'AmbientCapabilites'" in done.stderr


def security(tmp: Path) -> tuple[float, dict[str, bool]]:
    """The overall exposure and each check (True: passed) of `systemd-analyze security --offline`."""
    done = analyze(tmp, "security", "--offline=yes", "--no-pager", "scaler.service")
    assert done.returncode == 0, done.stderr
    checks = {m.group(2): m.group(1) == "✓" for m in re.finditer(r"^([✓✗]) (\S+)", done.stdout, re.M)}
    overall = re.search(r"Overall exposure level for scaler\.service: ([0-9.]+)", done.stdout)
    assert overall is not None, done.stdout
    return float(overall.group(1)), checks


@pytest.mark.parametrize(("drop_ins", "granted", "most"), [
    (NO_DROP_INS, set(), 1.5),
    (("kernel-router.conf",), {"CAP_NET_ADMIN", "CAP_(DAC_*|FOWNER|IPC_OWNER)"}, 2.0),
    (("netns.conf",), {"CAP_SYS_ADMIN"}, 2.5),
], ids=["unit", "kernel-router", "netns"])
def test_each_drop_in_grants_exactly_its_capabilities(tmp_path: Path, drop_ins: tuple[str, ...], granted: set[str],
                                                      most: float) -> None:
    exposure, checks = security(unit_tree(tmp_path, drop_ins))
    held = {name.removeprefix("CapabilityBoundingSet=~") for name, ok in checks.items()
            if name.startswith("CapabilityBoundingSet=~") and not ok}
    assert held == granted
    assert exposure <= most
    for hardening in ("NoNewPrivileges=", "ProtectSystem=", "ProtectHome=", "RestrictSUIDSGID=",
                      "RestrictAddressFamilies=~AF_PACKET", "RestrictNamespaces=~user"):
        assert checks[hardening], hardening


def test_sysusers_makes_the_scaler_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    done = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(UNIT_DIR / "scaler.sysusers")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    user = next(line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
                if line.startswith("scaler:"))
    assert user[5] == "/var/lib/scaler" and user[6].endswith("nologin")


def test_the_units_check_command_accepts_the_production_example(tmp_path: Path) -> None:
    unit = (UNIT_DIR / "scaler.service").read_text()
    line = next(x for x in unit.splitlines() if x.startswith("ExecStartPre="))
    config = install(tmp_path / "etc")
    argv = [PROGRAM if a == SHIPPED_PROGRAM else str(config) if a == "/etc/scaler/scaler.yaml" else a
            for a in shlex.split(line.removeprefix("ExecStartPre="))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    run = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    program, command, *options = shlex.split(run.removeprefix("ExecStart="))
    assert (program, command) == (SHIPPED_PROGRAM, "run")
    usage = subprocess.run([PROGRAM, command, "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and all(o in usage.stdout for o in options if o.startswith("-")), usage.stdout


def test_exits_that_a_restart_cannot_fix_are_not_restarted() -> None:
    from scaler.cli import EXIT_PROBLEMS, EXIT_USAGE

    unit = (UNIT_DIR / "scaler.service").read_text()
    kept = re.search(r"^RestartPreventExitStatus=(.*)$", unit, re.M)
    assert kept is not None and re.search(r"^Restart=on-failure$", unit, re.M)
    assert {int(c) for c in kept.group(1).split()} == {EXIT_PROBLEMS, EXIT_USAGE}   # not EXIT_FAILED
