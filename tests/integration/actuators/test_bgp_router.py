"""The `bgp` router driver against real FRR 8.4 routers and a real ExaBGP 5, in network namespaces.

Every wait polls the router's kernel FIB; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from actuators.bgp import BgpRouter
from actuators.errors import RouterError
from actuators.fake import desired_of
from actuators.router import HopState
from scaler.lab.frr import frr_available
from tests.support.bgp_net import BgpNet, RouteMonitor, apply_when_up, fib, fib_all, hop
from tests.support.wait import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not frr_available(), reason="FRR is not installed (apt-get install frr)"),
]

VIP = IPv4Address("198.19.0.1")
VIP2 = IPv4Address("198.19.0.2")
A, D = HopState.ACTIVE, HopState.DRAINING


def want(*pairs: tuple[IPv4Address, int]) -> dict[IPv4Address, frozenset]:
    """Desired routes from (vip, next-hop number) pairs; a VIP with no pair is not mentioned."""
    return desired_of((vip, hop(k), A) for vip, k in pairs)


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[BgpNet]:
    n = BgpNet(tmp_path)
    try:
        yield await n.up()
    finally:
        await n.close()


@pytest.fixture
async def net2(tmp_path: Path) -> AsyncIterator[BgpNet]:
    n = BgpNet(tmp_path, routers=2)
    try:
        yield await n.up()
    finally:
        await n.close()


async def test_announce_puts_one_next_hop_per_member_in_the_fib_and_withdraw_removes_it(net: BgpNet) -> None:
    r = net.driver()
    await apply_when_up(r, want((VIP, 1), (VIP, 2), (VIP, 3)))
    await r.wait_synced()
    await eventually(lambda: fib(net.router_ns(), VIP) == {hop(1), hop(2), hop(3)},
                     timeout_s=20, what="three next hops in the FIB")
    status = await _status_when_settled(r, VIP, 3)
    assert status == {hop(1), hop(2), hop(3)}

    result = await r.apply(want((VIP, 1), (VIP, 3)))
    assert result.removed == ((VIP, hop(2)),) and result.added == () and result.messages == 1
    await eventually(lambda: fib(net.router_ns(), VIP) == {hop(1), hop(3)},
                     timeout_s=20, what="hop 2 withdrawn from the FIB")

    again = await r.apply(want((VIP, 1), (VIP, 3)))
    assert not again.changed and again.messages == 0, "applying the same state twice sends nothing"
    replayed = await r.replay(want((VIP, 1), (VIP, 3)))
    assert replayed.added == ((VIP, hop(1)), (VIP, hop(3))) and replayed.messages == 3, "2 paths + End-of-RIB"
    assert fib(net.router_ns(), VIP) == {hop(1), hop(3)}

    await r.apply({VIP: frozenset()})
    await eventually(lambda: fib(net.router_ns(), VIP) == set(), timeout_s=20, what="the VIP's route removed")
    assert await _status_when_settled(r, VIP, 0) == set()


async def _status_when_settled(r: BgpRouter, vip: IPv4Address, n: int) -> frozenset[IPv4Address]:
    got: frozenset[IPv4Address] = frozenset()

    async def read() -> None:
        nonlocal got
        got = (await r.status(vip)).addresses()

    for _ in range(400):
        await read()
        if len(got) == n:
            return got
        await asyncio.sleep(0.01)
    return got


async def test_two_pools_with_different_vips_at_once(net: BgpNet) -> None:
    r = net.driver()
    await apply_when_up(r, want((VIP, 1), (VIP, 2), (VIP2, 3), (VIP2, 4)))
    await eventually(lambda: fib_all(net.router_ns()) == {VIP: {hop(1), hop(2)}, VIP2: {hop(3), hop(4)}},
                     timeout_s=20, what="both VIPs with their own next hops")
    # Draining one pool's member changes nothing on the wire (plain ECMP has no weights) ...
    d = desired_of([(VIP, hop(1), A), (VIP, hop(2), D)])
    assert (await r.apply(d)).messages == 0
    # ... and a change to one VIP leaves the other alone.
    res = await r.apply(want((VIP, 1)))
    assert res.removed == ((VIP, hop(2)),)
    await eventually(lambda: fib_all(net.router_ns()) == {VIP: {hop(1)}, VIP2: {hop(3), hop(4)}},
                     timeout_s=20, what="only VIP's hop 2 withdrawn")


async def test_kill_9_of_exabgp_never_removes_the_vip_from_the_fib_and_the_paths_are_replayed(net: BgpNet) -> None:
    r = net.driver()
    await apply_when_up(r, want((VIP, 1), (VIP, 2), (VIP, 3)))
    await r.wait_synced()
    await eventually(lambda: fib(net.router_ns(), VIP) == {hop(1), hop(2), hop(3)},
                     timeout_s=20, what="three next hops")
    before = r.speaker.pid
    assert before is not None
    with RouteMonitor(net.router_ns()) as mon:
        os.kill(before, signal.SIGKILL)
        await eventually(lambda: r.speaker.pid not in (None, before)
                         and r.sessions[net.router_address(0)].state == "synced",
                         timeout_s=30, what="ExaBGP restarted and the session synced again")
        # FRR needs ~50 ms to act on End-of-RIB; give any FIB change the time to show.
        await eventually(lambda: r.sessions[net.router_address(0)].replays >= 2,
                         timeout_s=5, what="second replay counted")
        await _frr_saw_eor(net)
    assert mon.about(VIP) == [], f"the VIP route changed during the restart: {mon.about(VIP)}"
    assert fib(net.router_ns(), VIP) == {hop(1), hop(2), hop(3)}
    assert r.speaker.restarts == 1
    assert r.last_replay is not None and len(r.last_replay.added) == 3
    assert r.last_replay.messages == 4, "3 paths + End-of-RIB in one batch"


async def _frr_saw_eor(net: BgpNet, i: int = 0) -> None:
    """Until FRR has no stale path from us any more (it got our End-of-RIB and processed it)."""
    async def stale() -> int:
        data = await net.frr[i].vtysh_json("show bgp ipv4 unicast json")
        return sum(1 for paths in (data.get("routes") or {}).values() for p in paths if p.get("stale"))

    for _ in range(500):
        if await stale() == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("FRR still holds stale paths")


async def test_a_member_that_died_while_the_speaker_was_down_is_not_reannounced(net: BgpNet) -> None:
    # A long first backoff keeps the speaker down while the member dies.
    r = net.driver(restart_backoff_s=3.0)
    await apply_when_up(r, want((VIP, 1), (VIP, 2), (VIP, 3)))
    await r.wait_synced()
    await eventually(lambda: fib(net.router_ns(), VIP) == {hop(1), hop(2), hop(3)},
                     timeout_s=20, what="three next hops")
    pid = r.speaker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: not r.speaker.connected, timeout_s=5, what="the driver noticed the speaker died")
    with pytest.raises(RouterError, match="not running"):
        await r.apply(want((VIP, 1), (VIP, 3)))       # hop 2 died meanwhile
    # The router still routes to all three (graceful restart keeps our paths as stale) ...
    assert fib(net.router_ns(), VIP) == {hop(1), hop(2), hop(3)}
    # ... and after the restart the replay leaves hop 2 out and withdraws it explicitly.
    await eventually(lambda: r.sessions[net.router_address(0)].state == "synced", timeout_s=30, what="resynced")
    await eventually(lambda: fib(net.router_ns(), VIP) == {hop(1), hop(3)},
                     timeout_s=10, what="hop 2 gone after the replay")
    assert r.last_replay is not None and r.last_replay.removed == ((VIP, hop(2)),)


async def test_a_router_restart_gets_every_path_in_one_batch(net: BgpNet) -> None:
    r = net.driver()
    pairs = [(IPv4Address(f"198.19.1.{i}"), k) for i in range(1, 51) for k in (1, 2)]
    await apply_when_up(r, want(*pairs))
    await r.wait_synced()
    await eventually(lambda: len(fib_all(net.router_ns())) == 50, timeout_s=20, what="50 VIPs in the FIB")
    frr = net.frr[0]
    await frr.stop()
    assert fib_all(net.router_ns()) == {}, "zebra stopped: its routes left the kernel"
    replays = r.sessions[net.router_address(0)].replays
    await frr.start()
    await eventually(lambda: r.sessions[net.router_address(0)].replays == replays + 1,
                     timeout_s=60, what="replayed after restart")
    await eventually(lambda: {v: len(h) for v, h in fib_all(net.router_ns()).items()} == {
        IPv4Address(f"198.19.1.{i}"): 2 for i in range(1, 51)}, timeout_s=20, what="all 100 paths back in the FIB")
    assert r.last_replay is not None
    # One batch: the 100 paths as one grouped command per next hop, then End-of-RIB.
    assert len(r.last_replay.added) == 100 and r.last_replay.messages == 3


async def test_two_routers_each_get_every_path_and_one_router_down_does_not_stop_the_other(net2: BgpNet) -> None:
    r = net2.driver()
    await apply_when_up(r, want((VIP, 1), (VIP, 2)))
    await r.wait_synced()
    def has_both(router: int) -> bool:
        return fib(net2.router_ns(router), VIP) == {hop(1), hop(2)}

    for i in (0, 1):
        await eventually(functools.partial(has_both, i), timeout_s=20, what=f"router {i} FIB")
    await net2.frr[1].kill_bgpd()
    await eventually(lambda: r.sessions[net2.router_address(1)].state == "down", timeout_s=15, what="tor1 session down")
    # One synchronised router is enough to know where the routes are.
    await r.apply(want((VIP, 1), (VIP, 2), (VIP, 3)))
    await eventually(lambda: fib(net2.router_ns(0), VIP) == {hop(1), hop(2), hop(3)},
                     timeout_s=20, what="router 0 has hop 3")
    assert hop(3) in await _status_when_settled(r, VIP, 3)
    # tor1 comes back (its zebra kept running; its bgpd restarts) and is replayed.
    await net2.frr[1].start()
    await eventually(lambda: r.sessions[net2.router_address(1)].state == "synced",
                     timeout_s=60, what="tor1 synced again")
    await eventually(lambda: fib(net2.router_ns(1), VIP) == {hop(1), hop(2), hop(3)},
                     timeout_s=20, what="router 1 has hop 3")
    assert r.health()["sessions"][1]["ups"] == 2


async def test_status_is_refused_while_no_session_is_synchronised_and_works_once_the_router_is_up(
        net: BgpNet) -> None:
    r = net.driver(start_wait_s=0.5)
    await net.frr[0].stop()
    await r.start()
    assert r.speaker.connected, "start() waits for ExaBGP's API"
    with pytest.raises(RouterError, match="no BGP session is established"):
        await r.status(VIP)
    res = await r.apply(want((VIP, 1)))          # accepted: ExaBGP queues it for the peer
    assert res.added == ((VIP, hop(1)),)
    with pytest.raises(RouterError, match=r"tor0 (down|connected)"):
        await r.status(VIP)
    await net.frr[0].start()
    await eventually(lambda: r.sessions[net.router_address(0)].state == "synced",
                     timeout_s=30, what="synced once the router is up")
    await eventually(lambda: fib(net.router_ns(), VIP) == {hop(1)}, timeout_s=10, what="the queued path in the FIB")
    assert await _status_when_settled(r, VIP, 1) == {hop(1)}


async def test_a_scaler_restart_keeps_the_routes_and_withdraws_what_is_no_longer_wanted(net: BgpNet) -> None:
    first = net.driver()
    await apply_when_up(first, want((VIP, 1), (VIP, 2)))
    await first.wait_synced()
    await eventually(lambda: fib(net.router_ns(), VIP) == {hop(1), hop(2)}, timeout_s=20, what="two hops")
    with RouteMonitor(net.router_ns()) as mon:
        await first.close()                     # SIGKILL: graceful restart keeps the paths
        second = net.driver()
        await second.start()
        # Before the first apply nothing is replayed: the router keeps the stale paths.
        await eventually(lambda: second.sessions[net.router_address(0)].state == "up", timeout_s=20, what="session up")
        assert fib(net.router_ns(), VIP) == {hop(1), hop(2)}
        assert mon.about(VIP) == []
        await second.apply(want((VIP, 1)))
        await second.wait_synced()
    await eventually(lambda: fib(net.router_ns(), VIP) == {hop(1)},
                     timeout_s=10, what="hop 2 withdrawn by the new scaler")
    assert second.last_replay is not None and second.last_replay.removed == ((VIP, hop(2)),)


async def test_a_sigkilled_scaler_leaves_no_exabgp_behind(net: BgpNet, tmp_path: Path) -> None:
    cfg = net.driver_config()
    script = tmp_path / "scaler_like.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, json, sys
        from actuators.bgp import BgpRouter, BgpRouterConfig
        async def main():
            r = BgpRouter(BgpRouterConfig.model_validate_json({cfg.model_dump_json()!r}))
            await r.start()
            while r.speaker.pid is None:
                await asyncio.sleep(0.01)
            print(r.speaker.pid, flush=True)
            await asyncio.sleep(300)
        asyncio.run(main())
    """))
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), stdout=asyncio.subprocess.PIPE,
                                                cwd=Path(__file__).parents[3])
    try:
        assert proc.stdout is not None
        pid = int(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert _alive(pid)
        proc.kill()
        await proc.wait()
        await eventually(lambda: not _alive(pid), timeout_s=5, what="ExaBGP gone with its parent")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
