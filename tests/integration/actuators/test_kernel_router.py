"""KernelRouter against the real kernel: a router namespace, three member namespaces and a client.

Every namespace is created here with the prefix `sclk` + a random suffix and deleted by the fixture
even when a test fails; addresses are from 198.18.0.0/15 and exist only inside those namespaces.
Assertions read the kernel with `ip -j`, never the driver's own view.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import pytest

from actuators.errors import RouterConflict, RouterError
from actuators.kernel import netlink as nl
from actuators.kernel.router import KernelRouter, KernelRouterConfig
from actuators.linux.netns import socket_in
from actuators.router import DesiredRoutes, HopState, NextHop

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                       reason="needs root and iproute2 to create network namespaces"),
]

VIP = IPv4Address("198.19.0.10")
VIP2 = IPv4Address("198.19.0.11")
PORT = 8080
PROTO = 99


def sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Lab:
    router: str
    client: str
    members: list[str] = field(default_factory=list)
    addresses: list[IPv4Address] = field(default_factory=list)

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.router, *args)

    def ipj(self, *args: str) -> Any:
        """`ip -j` in the router namespace, numeric protocols (ours prints as "99")."""
        out = sh("ip", "-N", "-d", "-j", "-n", self.router, *args).strip()
        return json.loads(out) if out else []

    def nexthops(self) -> dict[int, dict[str, Any]]:
        return {nh["id"]: nh for nh in self.ipj("nexthop", "show")}

    def group_weights(self, vip: IPv4Address) -> dict[IPv4Address, int]:
        # iproute2 leaves "weight" out when it is 1
        group = self.nexthops()[int(vip)]
        return {IPv4Address(m["id"]): m.get("weight", 1) for m in group["group"]}

    def vip_route(self, vip: IPv4Address) -> dict[str, Any] | None:
        return next((r for r in self.ipj("route", "show", "table", "main") if r["dst"] == str(vip)), None)

    def bucket_counts(self, vip: IPv4Address) -> Counter[IPv4Address]:
        buckets = self.ipj("nexthop", "bucket", "show", "id", str(int(vip)))
        return Counter(IPv4Address(b["bucket"]["nhid"]) for b in buckets)

    def hops(self, *states: HopState) -> frozenset[NextHop]:
        return frozenset(NextHop(a, s) for a, s in zip(self.addresses, states, strict=False))


def _build(lab: Lab, created: list[str]) -> None:
    def netns(name: str) -> None:
        sh("ip", "netns", "add", name)
        created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        for key in ("all", "default"):
            sh("ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")

    netns(lab.router)
    sh("ip", "netns", "exec", lab.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    # L4 hash: with the default L3 hash every connection from the one client picks the same member.
    sh("ip", "netns", "exec", lab.router, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1")

    def link(peer: str, dev: str, subnet: int) -> None:
        # "name" is needed: `ip link add m1 ...` would parse a short word like "a" as "address".
        lab.ip("link", "add", "name", dev, "type", "veth", "peer", "name", "eth0", "netns", peer)
        lab.ip("addr", "add", f"198.18.{subnet}.1/24", "dev", dev)
        lab.ip("link", "set", dev, "up")
        sh("ip", "-n", peer, "addr", "add", f"198.18.{subnet}.2/24", "dev", "eth0")
        sh("ip", "-n", peer, "link", "set", "eth0", "up")
        sh("ip", "-n", peer, "route", "add", "default", "via", f"198.18.{subnet}.1")

    for i, member in enumerate(lab.members, start=1):
        netns(member)
        link(member, f"m{i}", i)
        sh("ip", "-n", member, "addr", "add", f"{VIP}/32", "dev", "lo")
        lab.addresses.append(IPv4Address(f"198.18.{i}.2"))
    netns(lab.client)
    link(lab.client, "c0", 100)


@pytest.fixture
def lab() -> Iterator[Lab]:
    prefix = f"sclk{secrets.token_hex(3)}"
    lab = Lab(router=f"{prefix}r", client=f"{prefix}c", members=[f"{prefix}m{i}" for i in (1, 2, 3)])
    created: list[str] = []
    try:
        _build(lab, created)
        yield lab
    finally:
        for name in reversed(created):    # only the namespaces this fixture made
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


class CountingSocket:
    """Wraps the real netlink socket to record the message types of every send()."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends: list[list[int]] = []

    def sendto(self, data: bytes, addr: Any) -> int:
        self.sends.append([m.type for m in nl.decode_msgs(data)])
        return self.sock.sendto(data, addr)

    def change_sends(self) -> list[list[int]]:
        changes = {nl.RTM_NEWNEXTHOP, nl.RTM_DELNEXTHOP, nl.RTM_NEWROUTE, nl.RTM_DELROUTE}
        return [s for s in self.sends if changes & set(s)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@dataclass
class Rig:
    router: KernelRouter
    wire: CountingSocket


async def _rig(lab: Lab, **config: Any) -> Rig:
    wire = CountingSocket(socket_in(lab.router, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE))
    client = nl.NetlinkClient(lab.router, opener=lambda: wire)  # type: ignore[arg-type, return-value]
    # The tests above the conntrack section are about resilient groups; that section sets its mode.
    cfg = KernelRouterConfig.model_validate({"netns": lab.router, "mode": "resilient", **config})
    return Rig(KernelRouter(cfg, client=client), wire)


@pytest.fixture
async def rig(lab: Lab) -> AsyncIterator[Rig]:
    r = await _rig(lab)
    yield r
    await r.router.close()


A, D = HopState.ACTIVE, HopState.DRAINING


# --- programming -----------------------------------------------------------------------------------

async def test_apply_creates_one_resilient_group_with_one_hop_per_member(lab: Lab, rig: Rig) -> None:
    result = await rig.router.apply({VIP: lab.hops(A, A, A)})

    assert result.messages == 5          # 3 nexthops, the group, the route
    assert sorted(result.added) == [(VIP, a) for a in lab.addresses]
    assert len(rig.wire.change_sends()) == 1
    nhs = lab.nexthops()
    for i, addr in enumerate(lab.addresses, start=1):
        nh = nhs[int(addr)]
        assert (nh["gateway"], nh["dev"], nh["protocol"]) == (str(addr), f"m{i}", str(PROTO))
    group = nhs[int(VIP)]
    assert group["type"] == "resilient" and group["protocol"] == str(PROTO)
    assert group["resilient_args"]["buckets"] == 128
    assert group["resilient_args"]["idle_timer"] == 30
    assert lab.group_weights(VIP) == dict.fromkeys(lab.addresses, 255)
    route = lab.vip_route(VIP)
    assert route is not None and route["nhid"] == int(VIP) and route["protocol"] == str(PROTO)
    counts = lab.bucket_counts(VIP)
    assert sum(counts.values()) == 128 and all(42 <= counts[a] <= 43 for a in lab.addresses)

    status = await rig.router.status(VIP)
    assert status.addresses() == frozenset(lab.addresses)
    assert {h.address: (h.state, h.buckets) for h in status.hops} == {
        a: (A, counts[a]) for a in lab.addresses}


async def test_draining_lowers_the_weight_to_one(lab: Lab, rig: Rig) -> None:
    await rig.router.apply({VIP: lab.hops(A, A, A)})
    result = await rig.router.apply({VIP: lab.hops(A, A, D)})

    assert result.reweighted == ((VIP, lab.addresses[2]),) and result.messages == 1
    assert lab.group_weights(VIP) == {lab.addresses[0]: 255, lab.addresses[1]: 255, lab.addresses[2]: 1}
    # No flow ever used its buckets, so they were idle and all moved at once: 255/255/1 leaves the
    # draining member none of 128 buckets.
    counts = lab.bucket_counts(VIP)
    assert counts[lab.addresses[2]] == 0 and sum(counts.values()) == 128
    status = await rig.router.status(VIP)
    assert {h.address: h.state for h in status.hops} == {
        lab.addresses[0]: A, lab.addresses[1]: A, lab.addresses[2]: D}


async def test_removing_a_member_drops_it_and_its_nexthop(lab: Lab, rig: Rig) -> None:
    await rig.router.apply({VIP: lab.hops(A, A, A)})
    result = await rig.router.apply({VIP: lab.hops(A, A)})

    assert result.removed == ((VIP, lab.addresses[2]),)
    assert result.messages == 2          # replace the group, then delete the unused nexthop
    assert set(lab.group_weights(VIP)) == set(lab.addresses[:2])
    assert int(lab.addresses[2]) not in lab.nexthops()


async def test_empty_set_removes_route_group_and_nexthops(lab: Lab, rig: Rig) -> None:
    await rig.router.apply({VIP: lab.hops(A, A, A)})
    result = await rig.router.apply({VIP: frozenset()})

    assert result.messages == 5 and len(result.removed) == 3
    assert lab.vip_route(VIP) is None
    assert [nh for nh in lab.nexthops().values() if nh["protocol"] == str(PROTO)] == []
    assert (await rig.router.status(VIP)).hops == ()
    assert (await rig.router.apply({VIP: frozenset()})).messages == 0


async def test_reapply_sends_nothing(lab: Lab, rig: Rig) -> None:
    desired: DesiredRoutes = {VIP: lab.hops(A, A, D)}
    await rig.router.apply(desired)
    sends = len(rig.wire.sends)

    again = await rig.router.apply(desired)

    assert again.messages == 0 and not again.changed
    assert rig.wire.change_sends() == [rig.wire.change_sends()[0]]
    assert len(rig.wire.sends) - sends == 2         # the two dumps, nothing else


async def test_vips_absent_from_desired_are_untouched(lab: Lab, rig: Rig) -> None:
    await rig.router.apply({VIP: lab.hops(A, A, A), VIP2: lab.hops(A, A)})
    await rig.router.apply({VIP: frozenset()})

    assert lab.vip_route(VIP) is None
    assert set(lab.group_weights(VIP2)) == set(lab.addresses[:2])
    assert lab.vip_route(VIP2) is not None
    assert int(lab.addresses[2]) not in lab.nexthops()      # only VIP used it
    assert int(lab.addresses[0]) in lab.nexthops()          # VIP2 still does


async def test_foreign_nexthop_with_our_id_is_a_conflict(lab: Lab, rig: Rig) -> None:
    addr = lab.addresses[0]
    lab.ip("nexthop", "add", "id", str(int(addr)), "via", str(addr), "dev", "m1")   # protocol unspec

    with pytest.raises(RouterConflict, match=f"nexthop id {int(addr)} .*protocol 0"):
        await rig.router.apply({VIP: lab.hops(A, A)})

    assert rig.wire.change_sends() == []                     # refused before anything was sent
    assert list(lab.nexthops()) == [int(addr)]
    assert lab.nexthops()[int(addr)]["protocol"] == "0"


async def test_foreign_route_to_the_vip_is_a_conflict(lab: Lab, rig: Rig) -> None:
    lab.ip("route", "add", f"{VIP}/32", "via", str(lab.addresses[0]))       # protocol boot

    expected = f"add route {VIP}/32 nhid {int(VIP)} table 254: File exists"
    with pytest.raises(RouterConflict, match=re.escape(expected)):
        await rig.router.apply({VIP: lab.hops(A, A)})

    route = lab.vip_route(VIP)
    assert route is not None and "nhid" not in route and route["gateway"] == str(lab.addresses[0])


async def test_replay_restores_everything_in_one_batch(lab: Lab, rig: Rig) -> None:
    desired: DesiredRoutes = {VIP: lab.hops(A, A, D), VIP2: lab.hops(A)}
    await rig.router.apply(desired)
    before = (lab.nexthops(), lab.vip_route(VIP), lab.vip_route(VIP2))

    # (`ip route flush proto 99` is what an operator would type, but iproute2 6.1 fails on routes
    # with a nhid: "Failed to send flush request: Invalid argument".)
    for vip in (VIP, VIP2):
        lab.ip("route", "del", f"{vip}/32")
    assert lab.vip_route(VIP) is None
    result = await rig.router.replay(desired)
    assert result.messages == 2 and not result.changed      # only the two routes were missing

    lab.ip("nexthop", "flush")
    rig.wire.sends.clear()
    result = await rig.router.replay(desired)
    assert result.messages == 3 + 1 + 2 + 2                 # nexthops, VIP2's shadow, groups, routes
    assert len(rig.wire.change_sends()) == 1 and len(rig.wire.change_sends()[0]) == 8
    assert (lab.nexthops(), lab.vip_route(VIP), lab.vip_route(VIP2)) == before


async def test_unreachable_member_is_named(lab: Lab, rig: Rig) -> None:
    with pytest.raises(RouterError, match=re.escape("next hop 198.18.200.2: no route")):
        await rig.router.apply({VIP: frozenset({NextHop(IPv4Address("198.18.200.2"))})})
    assert rig.wire.change_sends() == []


# --- real traffic ----------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def serving(lab: Lab, handler_for: Any) -> AsyncIterator[None]:
    """A TCP server on VIP:PORT in each member namespace, with `handler_for(member index)`."""
    servers = []
    try:
        for i, member in enumerate(lab.members):
            sock = socket_in(member, socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(VIP), PORT))
            servers.append(await asyncio.start_server(handler_for(i), sock=sock))
        yield
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


@contextlib.asynccontextmanager
async def listeners(lab: Lab) -> AsyncIterator[None]:
    """A TCP listener on VIP:PORT in each member namespace that answers with the member's index."""
    def serve(index: int) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(str(index).encode())
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        return handle

    async with serving(lab, serve):
        yield


async def connect_many(lab: Lab, n: int) -> Counter[IPv4Address]:
    """n TCP connections from the client namespace to the VIP; which member answered each."""
    loop = asyncio.get_running_loop()
    seen: Counter[IPv4Address] = Counter()
    for _ in range(n):
        with socket_in(lab.client, socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (str(VIP), PORT)), 5)
            data = await asyncio.wait_for(loop.sock_recv(sock, 16), 5)
            seen[lab.addresses[int(data)]] += 1
    return seen


async def test_connections_spread_and_drained_member_keeps_only_busy_buckets(lab: Lab, rig: Rig) -> None:
    async with listeners(lab):
        await rig.router.apply({VIP: lab.hops(A, A, A)})
        seen = await connect_many(lab, 60)
        assert set(seen) == set(lab.addresses) and sum(seen.values()) == 60

        await rig.router.apply({VIP: lab.hops(A, A, D)})
        # idle_timer 30 s: buckets that carried a flow in the last 30 s stay with the draining member.
        kept = lab.bucket_counts(VIP)[lab.addresses[2]]
        assert 0 < kept < 43

        await rig.router.apply({VIP: lab.hops(A, A)})
        after = await connect_many(lab, 30)
        assert set(after) == set(lab.addresses[:2])


async def test_single_member_group_has_a_hidden_shadow_that_goes_with_a_second_member(lab: Lab, rig: Rig) -> None:
    await rig.router.apply({VIP: lab.hops(A)})
    group = lab.nexthops()[int(VIP)]["group"]
    shadow = [m["id"] for m in group if m["id"] != int(lab.addresses[0])]
    assert len(group) == 2 and len(shadow) == 1 and shadow[0] < 1 << 24
    assert lab.nexthops()[shadow[0]]["gateway"] == str(lab.addresses[0])
    status = await rig.router.status(VIP)
    assert [(h.address, h.buckets) for h in status.hops] == [(lab.addresses[0], 128)]

    await rig.router.apply({VIP: lab.hops(A, A)})
    assert shadow[0] not in lab.nexthops()
    assert set(lab.group_weights(VIP)) == set(lab.addresses[:2])


async def test_adding_a_second_member_moves_only_idle_buckets(lab: Lab, rig: Rig) -> None:
    """Without the shadow a one-member group never marks buckets busy, and adding a member moved
    half of them at once, resetting the flows in them (measured: 5-10 resets per scale-out)."""
    def buckets() -> dict[int, tuple[int, float]]:
        return {b["bucket"]["index"]: (b["bucket"]["nhid"], b["bucket"]["idle_time"])
                for b in lab.ipj("nexthop", "bucket", "show", "id", str(int(VIP)))}

    async with listeners(lab):
        await rig.router.apply({VIP: lab.hops(A)})
        await asyncio.sleep(0.5)        # so buckets used by the flows below stand out by idle time
        await connect_many(lab, 60)
        before = buckets()
        busy = {i for i, (_, idle) in before.items() if idle < 0.3}
        assert len(busy) >= 20, f"buckets carrying traffic must be marked busy: {before}"
        await rig.router.apply({VIP: lab.hops(A, A)})
        after = buckets()
        # idle_timer 30 s: every bucket a flow used stays with the first member; only unused ones move.
        assert {after[i][0] for i in busy} == {int(lab.addresses[0])}
        assert sum(1 for nh, _ in after.values() if nh == int(lab.addresses[1])) > 0


async def test_drain_with_zero_idle_timer_sends_no_new_flows(lab: Lab) -> None:
    rig = await _rig(lab, idle_timer_s=0)
    try:
        async with listeners(lab):
            await rig.router.apply({VIP: lab.hops(A, A, A)})
            assert len(await connect_many(lab, 30)) == 3
            await rig.router.apply({VIP: lab.hops(A, A, D)})
            assert lab.bucket_counts(VIP)[lab.addresses[2]] == 0
            assert set(await connect_many(lab, 60)) == set(lab.addresses[:2])
    finally:
        await rig.router.close()



# --- conntrack pinning (mode: conntrack) --------------------------------------------------------------

@pytest.fixture
async def pin_rig(lab: Lab) -> AsyncIterator[Rig]:
    r = await _rig(lab, mode="conntrack")
    yield r
    await r.router.close()


@contextlib.asynccontextmanager
async def echo_listeners(lab: Lab) -> AsyncIterator[None]:
    """Listeners on VIP:PORT in each member that answer every line with the member's index, on the
    same connection for as long as the client keeps it: established flows to watch."""
    def serve(index: int) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while await reader.readline():
                    writer.write(f"{index}\n".encode())
                    await writer.drain()
            writer.close()
        return handle

    async with serving(lab, serve):
        yield


class Conn:
    """One persistent client connection; `ask()` returns the member that answered (raises on a reset)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, lab: Lab) -> Conn:
        sock = socket_in(lab.client, socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (str(VIP), PORT)), 5)
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def ask(self, lab: Lab) -> IPv4Address:
        self.writer.write(b"?\n")
        await self.writer.drain()
        line = await asyncio.wait_for(self.reader.readline(), 5)
        if not line:
            raise ConnectionResetError("closed by the member")
        return lab.addresses[int(line)]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def pin_rules(lab: Lab) -> set[int]:
    return {int(r["fwmark"], 16) for r in lab.ipj("rule", "show") if r.get("fwmark") and r.get("protocol") == "99"}


async def test_conntrack_mode_pins_with_rules_member_tables_and_a_plain_group(lab: Lab, pin_rig: Rig) -> None:
    result = await pin_rig.router.apply({VIP: lab.hops(A, A, A)})
    assert set(result.added) == {(VIP, a) for a in lab.addresses}
    group = lab.nexthops()[int(VIP)]
    assert "type" not in group or group["type"] == "mpath"          # a plain hash-threshold group
    assert lab.group_weights(VIP) == dict.fromkeys(lab.addresses, 1)
    assert pin_rules(lab) == {int(a) for a in lab.addresses}
    for a in lab.addresses:
        [route] = lab.ipj("route", "show", "table", str(int(a)))
        assert route["dst"] == str(VIP) and route["nhid"] == int(a)
    nft = json.loads(sh("ip", "netns", "exec", lab.router, "nft", "-j", "list", "table", "ip", "scaler_pin"))
    elems = next(o["map"] for o in nft["nftables"] if "map" in o)["elem"]
    assert {e[0] for e in elems} == {str(a) for a in lab.addresses}
    status = await pin_rig.router.status(VIP)
    assert {(h.address, h.state) for h in status.hops} == {(a, A) for a in lab.addresses}
    again = await pin_rig.router.apply({VIP: lab.hops(A, A, A)})
    assert not again.changed and again.messages == 0


async def test_a_joining_member_gets_new_flows_at_once_and_established_ones_stay(lab: Lab, pin_rig: Rig) -> None:
    async with echo_listeners(lab):
        await pin_rig.router.apply({VIP: lab.hops(A, A)})
        conns = [await Conn.open(lab) for _ in range(20)]
        first = [await c.ask(lab) for c in conns]
        assert set(first) == set(lab.addresses[:2])
        await pin_rig.router.apply({VIP: lab.hops(A, A, A)})
        # Every established flow still reaches its member: the rehash of the group moved none.
        assert [await c.ask(lab) for c in conns] == first
        fresh = [await Conn.open(lab) for _ in range(60)]
        seen = Counter([await c.ask(lab) for c in fresh])
        assert seen[lab.addresses[2]] >= 10, seen       # its share of new flows at once (~20 of 60)
        for c in conns + fresh:
            await c.close()


async def test_a_draining_member_keeps_its_flows_gets_no_new_one_and_they_are_counted(lab: Lab,
                                                                                       pin_rig: Rig) -> None:
    async with echo_listeners(lab):
        await pin_rig.router.apply({VIP: lab.hops(A, A, A)})
        conns = [await Conn.open(lab) for _ in range(30)]
        owner = [await c.ask(lab) for c in conns]
        leaving = lab.addresses[2]
        mine = [c for c, o in zip(conns, owner, strict=True) if o == leaving]
        assert mine
        result = await pin_rig.router.apply({VIP: lab.hops(A, A, D)})
        assert result.reweighted == ((VIP, leaving),)
        hop = next(h for h in (await pin_rig.router.status(VIP)).hops if h.address == leaving)
        assert hop.state is D and hop.flows == len(mine)
        fresh = [await Conn.open(lab) for _ in range(30)]
        assert leaving not in {await c.ask(lab) for c in fresh}     # no new flow
        for c in fresh:
            await c.close()
        assert [await c.ask(lab) for c in mine] == [leaving] * len(mine)   # its own flows still reach it
        for c in mine:
            await c.close()
        await asyncio.sleep(0.2)
        hop = next(h for h in (await pin_rig.router.status(VIP)).hops if h.address == leaving)
        assert hop.flows == 0                                       # TIME_WAIT is not a live flow
        result = await pin_rig.router.apply({VIP: lab.hops(A, A)})
        assert result.removed == ((VIP, leaving),)
        assert pin_rules(lab) == {int(a) for a in lab.addresses[:2]}
        assert lab.ipj("route", "show", "table", str(int(leaving))) == []
        assert int(leaving) not in lab.nexthops()
        for c in conns:
            if c not in mine:
                await c.close()


async def test_replay_restores_the_pinning_after_it_was_flushed(lab: Lab, pin_rig: Rig) -> None:
    await pin_rig.router.apply({VIP: lab.hops(A, A)})
    sh("ip", "netns", "exec", lab.router, "nft", "delete", "table", "ip", "scaler_pin")
    for a in lab.addresses[:2]:
        lab.ip("rule", "del", "fwmark", hex(int(a)))
    await pin_rig.router.replay({VIP: lab.hops(A, A)})
    assert pin_rules(lab) == {int(a) for a in lab.addresses[:2]}
    sh("ip", "netns", "exec", lab.router, "nft", "list", "table", "ip", "scaler_pin")


async def test_a_group_of_the_other_mode_is_a_clear_error(lab: Lab) -> None:
    resilient = await _rig(lab)
    await resilient.router.apply({VIP: lab.hops(A, A)})
    await resilient.router.close()
    pinned = await _rig(lab, mode="conntrack")
    try:
        with pytest.raises(RouterError, match=r"is resilient but the driver's mode is conntrack"):
            await pinned.router.apply({VIP: lab.hops(A, A)})
    finally:
        await pinned.router.close()
