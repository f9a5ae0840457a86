"""The API bridge's watchdog: heartbeats are dropped, commands pass, and a scaler that sends nothing for
WATCHDOG_S gets its ExaBGP (the bridge's parent) SIGKILLed — a frozen scaler's speaker stops announcing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from actuators.bgp import bridge as exabgp_bridge
from actuators.bgp.config import BgpRouterConfig
from actuators.bgp.speaker import BRIDGE, Speaker, render_exabgp_conf
from tests.support.wait import eventually


def test_heartbeats_are_dropped_and_silence_ends_the_pump() -> None:
    a, b = socket.socketpair()
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(exabgp_bridge.pump(a, r_in, w_out, 1.0)))
    t0 = time.monotonic()
    t.start()
    try:
        hb = exabgp_bridge.HEARTBEAT + b"\n"
        b.sendall(hb + b"announce route 198.19.0.1/32 next-hop 198.18.1.2\n" + hb + b"withdraw ro")
        time.sleep(0.6)
        b.sendall(b"ute 198.19.0.1/32 next-hop 198.18.1.2\n" + hb)     # a line split over two reads
        time.sleep(0.6)
        b.sendall(hb)                       # 1.2 s after the start: alive only thanks to the heartbeats
        t.join(timeout=10)
        assert not t.is_alive() and result == ["watchdog"]
        assert time.monotonic() - t0 >= 2.2
        os.close(w_out)
        with os.fdopen(r_out, "rb") as out:
            assert out.read() == (b"announce route 198.19.0.1/32 next-hop 198.18.1.2\n"
                                  b"withdraw route 198.19.0.1/32 next-hop 198.18.1.2\n")
    finally:
        for fd in (r_in, w_in):
            os.close(fd)
        a.close()
        b.close()


def test_without_a_watchdog_silence_is_fine() -> None:
    a, b = socket.socketpair()
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    t = threading.Thread(target=exabgp_bridge.pump, args=(a, r_in, w_out))
    t.start()
    time.sleep(0.3)
    assert t.is_alive()
    b.close()
    t.join(timeout=10)
    assert not t.is_alive()
    for fd in (r_in, w_in, r_out, w_out):
        os.close(fd)
    a.close()


# Stands in for ExaBGP: its command line names exabgp, it runs the bridge as its API process with
# pipes on stdin/stdout (as ExaBGP does) and waits.
FAKE_EXABGP = textwrap.dedent("""
    import subprocess, sys, time
    bridge = subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2], sys.argv[3]],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    print(bridge.pid, flush=True)
    time.sleep(60)
""")


def test_a_stalled_scaler_gets_its_exabgp_killed(tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    fake = subprocess.Popen([sys.executable, "-c", FAKE_EXABGP, str(BRIDGE), path, "1", "exabgp"],
                            stdout=subprocess.PIPE, text=True)
    try:
        server.settimeout(10)
        conn, _ = server.accept()
        for _ in range(4):                  # 2 s of heartbeats: ExaBGP lives on
            conn.sendall(exabgp_bridge.HEARTBEAT + b"\n")
            time.sleep(0.5)
        assert fake.poll() is None
        t0 = time.monotonic()               # then the scaler stalls
        assert fake.wait(timeout=10) == -signal.SIGKILL
        assert 0.4 < time.monotonic() - t0 < 5
        conn.close()
    finally:
        if fake.poll() is None:
            fake.kill()
            fake.wait()
        server.close()


def test_the_watchdog_is_configured_and_checked(tmp_path: Path) -> None:
    base = {"local_as": 65001, "router_id": "198.18.255.2", "local_address": "198.18.255.2",
            "peers": [{"address": "198.18.255.1", "asn": 65000}], "dir": str(tmp_path)}
    assert BgpRouterConfig.model_validate(base).watchdog_s == 5.0
    text = render_exabgp_conf(BgpRouterConfig.model_validate(base | {"watchdog_s": 2.5}), "/py", tmp_path / "s")
    assert f'run "/py" "{BRIDGE}" "{tmp_path / "s"}" "2.5";' in text
    assert f'"{tmp_path / "s"}" "0";' in render_exabgp_conf(BgpRouterConfig.model_validate(
        base | {"watchdog_s": 0}), "/py", tmp_path / "s")
    with pytest.raises(ValueError, match="watchdog_s must be 0"):
        BgpRouterConfig.model_validate(base | {"watchdog_s": 0.5})


def test_the_bridge_refuses_a_bad_watchdog() -> None:
    proc = subprocess.run([sys.executable, str(BRIDGE), "/nonexistent.sock", "soon"], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "usage" in proc.stderr


async def test_a_speaker_held_after_a_stall_restarts_only_when_released(tmp_path: Path) -> None:
    """After a stall the supervisor does not restart ExaBGP by itself: only the next apply() does."""
    fake = tmp_path / "exabgp"          # stands in for ExaBGP: runs until killed
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    cfg = BgpRouterConfig.model_validate({
        "local_as": 65001, "router_id": "198.18.255.2", "local_address": "198.18.255.2",
        "peers": [{"address": "198.18.255.1", "asn": 65000}], "dir": str(tmp_path / "bgp"),
        "exabgp": str(fake), "restart_backoff_s": 0.05})
    cfg.dir.mkdir()
    speaker = Speaker(cfg, cfg.dir / "api.sock", on_exit=lambda why: None)
    await speaker.start()
    try:
        await eventually(lambda: speaker.status.running, what="ExaBGP running")
        speaker.hold()
        speaker.kill()                  # what the bridge's watchdog does
        await asyncio.sleep(0.5)        # ten backoffs
        assert (speaker.status.running, speaker.status.starts, speaker.status.held) == (False, 1, True)
        speaker.release()
        await eventually(lambda: speaker.status.running and speaker.status.starts == 2, what="restarted")
        assert not speaker.status.held
    finally:
        await speaker.stop()
    assert not speaker.status.running
