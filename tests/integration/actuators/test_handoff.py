"""Stray-packet handoff in the lab (actuators/handoff.py, issue 19): a connection whose packets the
router starts sending to another member is still served by the member that owns it, nobody resets it,
and new connections are served where they land. Three real HAProxy members, their copies over the
lab's peer bridge or over VXLAN; the router's VIP route is switched by hand (`ip route replace`), as
an ECMP rehash or a withdraw does. bench/bench_handoff.py runs the same over BGP under load."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
from collections.abc import AsyncIterator

import pytest

from actuators import handoff
from actuators.lab.orchestrator import LabOrchestrator
from actuators.linux import netns
from actuators.orchestrator import Instance, InstanceSpec
from scaler.lab.network import LabConfig, lab_down, lab_namespaces, lab_up
from tests.support.wait import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("nft") is None or shutil.which("haproxy") is None,
                       reason="nftables and haproxy are needed"),
]


@pytest.fixture
async def lab() -> AsyncIterator[LabConfig]:
    cfg = LabConfig(name=f"hoi{secrets.token_hex(1)}", keepalive_timeout_s=20)
    await lab_down(cfg)
    try:
        await lab_up(cfg)
        yield cfg
    finally:
        await lab_down(cfg)
        assert lab_namespaces(cfg) == []


@pytest.fixture(params=["bridge", "vxlan"])
async def members(lab: LabConfig,
                  request: pytest.FixtureRequest) -> AsyncIterator[tuple[LabOrchestrator, list[Instance]]]:
    """Three members with handoff; copies travel over a shared bridge, or over VXLAN between the
    members' own addresses through the router (no shared segment)."""
    orch = LabOrchestrator(lab.orchestrator_config(handoff=True, handoff_transport=request.param))
    made = [await orch.create(InstanceSpec("web", lab.vip), n) for n in ("a", "b", "c")]
    await orch.set_peers("web", ["a", "b", "c"])

    async def serving() -> bool:
        return all([await orch.probe(m) for m in made])
    await eventually(serving, timeout_s=20, what="three lab members serve")
    yield orch, made


async def route_to(lab: LabConfig, member: Instance) -> None:
    """The router sends every packet for the VIP to `member` (what a rehash does to some flows)."""
    await netns.run(["ip", "-n", lab.router_ns, "route", "replace", f"{lab.vip}/32", "via", str(member.address)])


class Client:
    """One keep-alive HTTP/1.1 connection from the lab's client namespace to the VIP."""

    def __init__(self, lab: LabConfig) -> None:
        self.lab = lab
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> Client:
        sock = netns.socket_in(self.lab.client_ns, socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (str(self.lab.vip), 80)), 5)
        self.reader, self.writer = await asyncio.open_connection(sock=sock)
        return self

    async def get(self) -> str:
        """GET / on this connection; the member that answered (x-lb)."""
        assert self.reader is not None and self.writer is not None
        self.writer.write(f"GET / HTTP/1.1\r\nHost: {self.lab.vip}\r\n\r\n".encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode().split("\r\n")
        assert lines[0].split(" ")[1] == "200", lines[0]
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", "0"))), 5)
        return headers["x-lb"]

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


async def test_a_moved_connection_is_served_by_its_owner_and_nobody_resets_it(
        lab: LabConfig, members: tuple[LabOrchestrator, list[Instance]]) -> None:
    orch, (a, b, c) = members
    await route_to(lab, a)
    conn = await Client(lab).connect()
    try:
        assert await conn.get() == "a"
        before = {n: await orch.handoff_counters(n) for n in ("a", "b", "c")}
        await route_to(lab, b)                       # a's connection now reaches b
        for _ in range(3):
            assert await conn.get() == "a"           # b copied it to a and c; a answered
        after = {n: await orch.handoff_counters(n) for n in ("a", "b", "c")}
        assert after["b"]["strays"] > before["b"]["strays"]
        assert after["a"]["peer_accepted"] > before["a"]["peer_accepted"]
        assert after["c"]["peer_dropped"] > before["c"]["peer_dropped"]     # c dropped it silently
        assert await orch.open_flows("a") == 1 and await orch.open_flows("b") == 0
        # A new connection is served where it lands.
        fresh = await Client(lab).connect()
        try:
            assert await fresh.get() == "b"
        finally:
            await fresh.close()
        # The owner is withdrawn (the route goes to c): its connection still reaches it.
        await route_to(lab, c)
        assert await conn.get() == "a"
    finally:
        await conn.close()


async def test_without_handoff_on_the_member_it_lands_on_the_moved_connection_is_reset(
        lab: LabConfig, members: tuple[LabOrchestrator, list[Instance]]) -> None:
    orch, (a, b, _) = members
    await route_to(lab, a)
    conn = await Client(lab).connect()
    try:
        assert await conn.get() == "a"
        await handoff.remove(orch.netns_of("b"))
        await route_to(lab, b)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await conn.get()
    finally:
        await conn.close()


async def test_a_member_out_of_the_peer_lists_no_longer_gets_copies(
        lab: LabConfig, members: tuple[LabOrchestrator, list[Instance]]) -> None:
    orch, (a, b, _) = members
    await route_to(lab, a)
    conn = await Client(lab).connect()
    try:
        assert await conn.get() == "a"
        await orch.set_peers("web", ["b", "c"])      # a left the peer lists (as after its drain)
        await route_to(lab, b)
        with pytest.raises((TimeoutError, ConnectionResetError, asyncio.IncompleteReadError)):
            await conn.get()                         # b copies to c only, c drops it: no answer
        assert (await orch.handoff_counters("c"))["peer_dropped"] > 0
    finally:
        await conn.close()
