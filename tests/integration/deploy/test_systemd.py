"""deploy/systemd: the unit and its drop-ins pass `systemd-analyze verify`, hold exactly the
capabilities of the drivers they are for (`systemd-analyze security --offline=yes`), the sysusers file
makes the user, and the unit's own command lines work with the installed CLI."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from scaler.lab.demo import free_port
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


# ---- the service under the unit's process restrictions ------------------------------------------
# Not systemd (not PID 1 here), but the restrictions that could stop a Python service from starting,
# applied the same way: no capability at all (bounding, inheritable, ambient), no new privileges, and
# MemoryDenyWriteExecute, which systemd does with seccomp and the kernel does with PR_SET_MDWE (no
# mapping may become writable and executable: ctypes' callbacks need libffi's static trampolines).

SANDBOXED_CONFIG = """\
store: {{url: "sqlite:///{tmp}/scaler.db"}}
api:
  host: 127.0.0.1
  port: {port}
  credentials: [{{name: prometheus, token: {{file: {tmp}/read-token}}, scopes: [read]}}]
policy_dir: policies
orchestrator: {{driver: fake, options: {{boot_probes: 0}}}}
router: {{driver: fake}}
collectors:
  haproxy:
    driver: haproxy
    target: {{url: "http://localhost/metrics", uds: "{tmp}/none/{{instance}}.sock"}}
pools:
  web: {{vip: 198.19.0.1, boot_timeout: 10s, drain_timeout: 1s}}
"""
SANDBOXED_POLICY = """\
pools:
  web:
    min: 1
    max: 2
    inputs:
      sessions: {source: haproxy, metric: current_sessions}
    rules:
      - {name: busy, input: sessions, above: 12, adjust: +1}
"""
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
READ_TOKEN = "a-read-token-of-enough-length-0123456789"


def _deny_write_execute() -> None:
    """In the child before exec: PR_SET_MDWE is kept across execve."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def test_the_service_runs_without_capabilities_and_without_writable_code(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "web.yaml").write_text(SANDBOXED_POLICY)
    (tmp_path / "read-token").write_text(f"{READ_TOKEN}\n")
    config = tmp_path / "scaler.yaml"
    config.write_text(SANDBOXED_CONFIG.format(tmp=tmp_path, port=port))
    restricted = ["setpriv", "--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
    probe = ("import ctypes; print(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0)); "      # PR_GET_MDWE
             "print(open('/proc/self/status').read())")
    seen = subprocess.run([*restricted, sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          preexec_fn=_deny_write_execute)
    assert seen.returncode == 0, seen.stderr
    mdwe, status = seen.stdout.split("\n", 1)
    assert mdwe == str(PR_MDWE_REFUSE_EXEC_GAIN)
    assert re.search(r"^CapBnd:\s+0+$", status, re.M) and re.search(r"^NoNewPrivs:\s+1$", status, re.M)

    log = (tmp_path / "scaler.log").open("w")
    proc = subprocess.Popen([*restricted, sys.executable, "-m", "scaler", "run", "-c", str(config)], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                            preexec_fn=_deny_write_execute)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as c:
            for _ in range(300):
                assert proc.poll() is None, (tmp_path / "scaler.log").read_text()[-3000:]
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            else:
                raise AssertionError("no /healthz within 30 s: " + (tmp_path / "scaler.log").read_text()[-3000:])
            metrics = c.get("/metrics", headers={"Authorization": f"Bearer {READ_TOKEN}"})
            assert metrics.status_code == 200
            assert "scaler_build_info{" in metrics.text and "process_open_fds " in metrics.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "scaler.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
