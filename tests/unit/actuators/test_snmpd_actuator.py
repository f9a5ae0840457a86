"""actuators.lab.snmpd without starting anything: the configuration it writes, the command line and
environment it would run, and that it only ever recognises its own daemon."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest

from actuators.lab.snmpd import Snmpd, SnmpdCommunity, SnmpdConfig, SnmpdError, SnmpdUser


def snmpd(tmp_path: Path, **overrides: object) -> Snmpd:
    base: dict[str, object] = {
        "directory": tmp_path,
        "listen": ("127.0.0.1:16161", "[::1]:16161", "udp:10.0.0.1:161"),
        "communities": (SnmpdCommunity("c0mmunity", "127.0.0.1"), SnmpdCommunity("c0mmunity", "198.18.0.0/15")),
        "users": (SnmpdUser("scaler", "auth-passphrase", "priv-passphrase"),
                  SnmpdUser("ro", "auth-passphrase", None, "SHA", None)),
        "sys_name": "lb-1",
    }
    return Snmpd(SnmpdConfig(**(base | overrides)))  # type: ignore[arg-type]


def test_rendered_configuration(tmp_path: Path) -> None:
    text = snmpd(tmp_path).render()
    assert text.splitlines()[1:] == [
        "agentAddress udp:127.0.0.1:16161,udp6:[::1]:16161,udp:10.0.0.1:161",
        "view all included .1",
        "sysName lb-1",
        "rocommunity c0mmunity 127.0.0.1 -V all",
        "rocommunity c0mmunity 198.18.0.0/15 -V all",
        'createUser scaler SHA-256 "auth-passphrase" AES "priv-passphrase"',
        "rouser scaler priv -V all",
        'createUser ro SHA "auth-passphrase"',
        "rouser ro auth -V all",
    ]
    assert snmpd(tmp_path).render() == text


@pytest.mark.parametrize(("overrides", "message"), [
    pytest.param({"users": (SnmpdUser("u", "short"),)}, "8\\+ characters", id="short passphrase"),
    pytest.param({"users": (SnmpdUser("u", 'quote"in-it'),)}, "no quote", id="quote in passphrase"),
    pytest.param({"users": (SnmpdUser("u", "auth-passphrase", "priv-passphrase", "SHA-3"),)},
                 "unknown auth protocol", id="unknown auth protocol"),
    pytest.param({"users": (SnmpdUser("u", "auth-passphrase", None, "SHA", "AES"),)}, "needs a known name and",
                 id="priv protocol without passphrase"),
    pytest.param({"communities": (SnmpdCommunity("two words"),)}, "one non-empty word", id="community with space"),
])
def test_bad_configurations(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SnmpdError, match=message):
        snmpd(tmp_path, **overrides).render()


def test_command_line_and_environment(tmp_path: Path) -> None:
    s = snmpd(tmp_path, netns="lab-i-a")
    argv = s.argv()
    assert argv[:3] == ["snmpd", "-I", "-smux,mteTrigger,mteTriggerConf"]     # no TCP :199 listener
    assert str(s.pidfile) in argv and str(s.log_path) in argv
    env = s.env()
    # The persistent directory must be searched too, or the engine ID changes at every start.
    assert env["SNMPCONFPATH"] == f"{tmp_path}:{tmp_path / 'persist'}"
    assert env["SNMP_PERSISTENT_DIR"] == str(tmp_path / "persist")
    assert env["MIBS"] == ""
    assert "auth-passphrase" not in repr(s) and "auth-passphrase" not in repr(s.config)
    assert "c0mmunity" not in repr(s.config)


def test_config_file_is_private_and_rewritten_only_on_change(tmp_path: Path) -> None:
    s = snmpd(tmp_path)
    assert s.write_config() is True
    assert stat.S_IMODE(os.stat(s.conf_path).st_mode) == 0o600
    assert s.write_config() is False
    assert snmpd(tmp_path, sys_name="lb-2").write_config() is True


async def test_only_our_daemon_is_recognised(tmp_path: Path) -> None:
    s = snmpd(tmp_path)
    assert s.pid() is None and await s.stop() is False
    s.pidfile.write_text(f"{os.getpid()}\n")            # a live process that is not our snmpd
    assert s.pid() is None and await s.stop() is False
    # A process whose command line names our pidfile is ours (what snmpd's looks like).
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(30)",
                                                "-p", str(s.pidfile))
    try:
        s.pidfile.write_text(f"{proc.pid}\n")
        assert s.pid() == proc.pid
        assert await s.stop(timeout_s=5) is True
        assert await asyncio.wait_for(proc.wait(), 5) is not None
        assert not s.pidfile.exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
