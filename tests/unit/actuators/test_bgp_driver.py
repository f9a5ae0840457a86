"""The `bgp` driver's configuration, the ExaBGP configuration it writes, and the API bridge.

The driver's behaviour against a real ExaBGP and FRR is in tests/integration/actuators/test_bgp_router.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from actuators.bgp import BgpRouter, BgpRouterConfig
from actuators.bgp import bridge as exabgp_bridge
from actuators.bgp.router import eor_line, group_commands, route_line
from actuators.bgp.speaker import BRIDGE, render_exabgp_conf
from actuators.errors import RouterError

BASE: dict[str, Any] = {"local_as": 65001, "router_id": "198.18.255.2", "local_address": "198.18.255.2",
                        "peers": [{"address": "198.18.255.1", "asn": 65000, "name": "tor1"}]}


@pytest.mark.parametrize(("change", "message"), [
    pytest.param({"peers": []}, "peers", id="no peer"),
    pytest.param({"peers": [{"address": "198.18.255.1", "asn": 65000}, {"address": "198.18.255.1", "asn": 65010}]},
                 "198.18.255.1 listed more than once", id="the same peer twice"),
    pytest.param({"local_as": 0}, "local_as", id="AS 0"),
    pytest.param({"peers": [{"address": "198.18.255.1", "asn": 65000, "name": "tor 1"}]}, "name",
                 id="a peer name with a space"),
    pytest.param({"dir": "/" + "d" * 120}, "too long for a unix socket path", id="dir too long for the socket"),
    pytest.param({"restart_backoff_s": 10, "restart_backoff_max_s": 5}, "restart_backoff_max_s",
                 id="backoff max below the first"),
    pytest.param({"graceful_restart_s": 5000}, "graceful_restart_s", id="restart time beyond 4095 s"),
    pytest.param({"peers": [{"address": "198.18.255.1", "asn": 65000, "color": "red"}]}, "color",
                 id="unknown peer key"),
])
def test_bad_configurations_are_refused_with_the_field_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BgpRouterConfig.model_validate(BASE | change)


def test_the_exabgp_configuration_has_add_path_graceful_restart_and_manual_eor_for_every_peer(tmp_path: Path) -> None:
    cfg = BgpRouterConfig.model_validate(BASE | {"graceful_restart_s": 90, "peers": [
        {"address": "198.18.255.1", "asn": 65000, "name": "tor1"},
        {"address": "198.18.254.1", "asn": 65002, "local_address": "198.18.254.2", "hold_time_s": 9}]})
    text = render_exabgp_conf(cfg, "/venv/bin/python", tmp_path / "api.sock")
    assert f'run "/venv/bin/python" "{BRIDGE}" "{tmp_path / "api.sock"}" "5";' in text
    assert "encoder json;" in text
    blocks = text.split("neighbor ")[1:]
    assert [b.split()[0] for b in blocks] == ["198.18.255.1", "198.18.254.1"]
    for b in blocks:
        for line in ("manual-eor true;", "add-path send;", "graceful-restart 90;", "family { ipv4 unicast; }",
                     "api { processes [ scaler ]; neighbor-changes; }", "local-as 65001;"):
            assert line in b, (line, b)
    assert "local-address 198.18.255.2;" in blocks[0] and "peer-as 65000;" in blocks[0]
    assert "local-address 198.18.254.2;" in blocks[1] and "hold-time 9;" in blocks[1]
    assert 'description "tor1";' in blocks[0] and 'description "198.18.254.1";' in blocks[1]


def test_commands_name_the_member_as_next_hop_and_as_path_id() -> None:
    vip, hop = IPv4Address("198.19.0.1"), IPv4Address("198.18.3.2")
    assert route_line("announce", vip, hop) == \
        "announce route 198.19.0.1/32 next-hop 198.18.3.2 path-information 198.18.3.2"
    assert route_line("withdraw", vip, hop, IPv4Address("198.18.255.1")) == \
        "neighbor 198.18.255.1 withdraw route 198.19.0.1/32 next-hop 198.18.3.2 path-information 198.18.3.2"
    assert eor_line(IPv4Address("198.18.255.1")) == "neighbor 198.18.255.1 announce eor ipv4 unicast"


async def test_status_before_any_session_says_why_it_cannot_answer(tmp_path: Path) -> None:
    r = BgpRouter(BgpRouterConfig.model_validate(BASE | {"dir": str(tmp_path)}))
    with pytest.raises(RouterError, match=r"no BGP session is established and synchronised \(speaker not "
                                          r"connected; tor1 down\)"):
        await r.status(IPv4Address("198.19.0.1"))
    assert r.health()["sessions"][0] | {"since": 0} == {
        "peer": "tor1", "address": "198.18.255.1", "state": "down", "since": 0, "ups": 0, "downs": 0,
        "replays": 0, "last_replay_paths": 0, "last_replay_s": 0.0}


def test_a_damaged_line_of_the_paths_file_is_reported_and_the_others_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "paths.txt").write_text("+ 198.19.0.1 198.18.1.2\nhalf a line\n+ 198.19.0.1 198.18.2.2\n"
                                        "+ 198.19.0.2 198.18.2.2\n- 198.19.0.1 198.18.1.2\n")
    r = BgpRouter(BgpRouterConfig.model_validate(BASE | {"dir": str(tmp_path)}))
    assert r.health()["paths_maybe_held"] == 2
    assert "paths.txt:2 unreadable ('half a line')" in caplog.text


def test_the_paths_log_is_appended_then_compacted_and_reads_back_the_same(tmp_path: Path) -> None:
    cfg = BgpRouterConfig.model_validate(BASE | {"dir": str(tmp_path)})
    r = BgpRouter(cfg)
    vip = IPv4Address("198.19.0.1")
    held: set[tuple[IPv4Address, IPv4Address]] = set()
    for k in range(1, 1200):          # add, then remove, one path at a time: the log grows, then compacts
        hop = IPv4Address("10.0.0.0") + k
        held.add((vip, hop))
        r._paths.remember(set(held))
        if k % 3 == 0:
            held.discard((vip, hop))
            r._paths.remember(set(held))
    lines = (tmp_path / "paths.txt").read_text().splitlines()
    assert len(lines) < 2 * len(held) + 1000 + 2, "compacted"
    assert BgpRouter(cfg).health()["paths_maybe_held"] == len(held)
    assert BgpRouter(cfg)._paths.held == held


def test_commands_are_grouped_by_next_hop_and_a_single_path_keeps_the_plain_form() -> None:
    vips = [IPv4Address("198.19.0.0") + i for i in range(450)]
    a, b = IPv4Address("198.18.1.2"), IPv4Address("198.18.2.2")
    paths = [(v, a) for v in vips] + [(vips[0], b)]
    cmds = group_commands("announce", paths)
    assert [len(c.paths) for c in cmds] == [200, 200, 50, 1]
    assert cmds[0].line.startswith("announce attributes next-hop 198.18.1.2 path-information 198.18.1.2 nlri "
                                   "198.19.0.0/32 198.19.0.1/32 ")
    assert cmds[-1].line == route_line("announce", vips[0], b)
    assert sorted(p for c in cmds for p in c.paths) == sorted(paths), "every path in exactly one command"
    assert group_commands("withdraw", []) == []


def test_the_bridge_copies_both_ways_and_exits_when_exabgp_closes_its_stdin(tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    proc = subprocess.Popen([sys.executable, str(BRIDGE), path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        server.settimeout(10)
        conn, _ = server.accept()
        conn.settimeout(10)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b'done\n{"type": "state"}\n')     # ExaBGP → scaler
        proc.stdin.flush()
        got = b""
        while got.count(b"\n") < 2:
            got += conn.recv(4096)
        assert got == b'done\n{"type": "state"}\n'
        conn.sendall(b"announce route 198.19.0.1/32 next-hop 198.18.1.2\n")    # scaler → ExaBGP
        assert proc.stdout.readline() == b"announce route 198.19.0.1/32 next-hop 198.18.1.2\n"
        proc.stdin.close()                                  # ExaBGP died
        assert proc.wait(timeout=10) == 0
        assert conn.recv(4096) == b"", "the scaler sees the connection end"
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()


def test_the_bridge_exits_when_the_scaler_closes_the_socket() -> None:
    a, b = socket.socketpair()
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    t = threading.Thread(target=exabgp_bridge.pump, args=(a, r_in, w_out))
    t.start()
    b.close()
    t.join(timeout=10)
    assert not t.is_alive()
    for fd in (r_in, w_in, r_out, w_out):
        os.close(fd)
    a.close()


def test_the_bridge_gives_up_on_a_socket_nobody_listens_on(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BRIDGE), str(tmp_path / "none.sock")], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0 and "cannot connect to" in proc.stderr
