"""Benchmark the `bgp` router driver end to end: the driver's ExaBGP 5 → a real FRR 8.4 → the router's kernel FIB.

1. 1,000 next-hop changes (500 VIPs x 2 members) as one apply() with the whole desired state, against
   one apply() per change. "One change" is what bench_kernel_router.py's reference does: the first
   member of every VIP, then the second, each call carrying one VIP's new next-hop set (1,000 calls).
   For each: the time until apply() returned and until the last change is in the router's FIB, and
   the withdraw of all 1,000 paths as one apply() until the FIB is empty. The state is reset (all
   withdrawn, FIB empty) before each variant. As extra fields, the same 1,000 announce commands
   written to ExaBGP without the driver: one burst vs one command per acknowledgement.
2. Replays, with the 1,000 paths in the FIB: (a) kill -9 of ExaBGP: the time until the driver's session
   is synced again (restarted, replayed, End-of-RIB sent) and every FIB change meanwhile (expected 0);
   (b) FRR stopped (zebra removes every route) and started: the time until all 1,000 paths are back.

The FIB is read by polling one netlink route dump in the router namespace every --poll-ms (default
20 ms: the resolution of every "in FIB" time; the dump's own cost is reported too) and compared to the
exact set of (VIP, next hop) pairs wanted. FIB changes are counted from a netlink subscription to the
router namespace's IPv4 route and nexthop events (what `ip monitor route nexthop` shows).

Writes bgp_batch_1000_hops.json and bgp_replay.json to --out. Creates only the namespaces
`sclb<random>r` (FRR) and `sclb<random>c` (ExaBGP), uses only addresses of 198.18.0.0/15 inside them,
sends no traffic, stops every process it started by PID and deletes the namespaces, even on failure.
Each benchmark is bounded by --limit-s. Needs root, FRR (/usr/lib/frr) and exabgp 5 (PyPI).

    python bench/bench_bgp_router.py --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import secrets
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernel_router import Path_, fib_paths, paths_of, print_table, sh, sh_quiet, write

from actuators.bgp import BgpRouter, BgpRouterConfig
from actuators.bgp.router import SessionStatus, route_line
from actuators.errors import RouterError
from actuators.kernel import netlink as nl
from actuators.linux import netns
from actuators.router import DesiredRoutes, NextHop
from scaler.lab.frr import Frr, FrrConfig, FrrNeighbor, frr_available

RTPROT_BGP = 186                    # what zebra marks BGP routes with in the kernel
ROUTER_AS, SPEAKER_AS = 65000, 65001
ROUTER_ADDR, SPEAKER_ADDR = IPv4Address("198.18.250.1"), IPv4Address("198.18.250.2")
MEMBERS = (IPv4Address("198.18.1.2"), IPv4Address("198.18.2.2"))
VIP_BASE = int(IPv4Address("198.19.0.0"))
VIP_NET = IPv4Network("198.19.0.0/16")
RTMSG_LEN = 12                      # struct rtmsg, before a route message's attributes

# rtnetlink multicast groups (linux/rtnetlink.h)
RTMGRP_IPV4_ROUTE = 0x40
RTNLGRP_NEXTHOP = 32
NETLINK_ADD_MEMBERSHIP = 1


def make_namespaces(r: str, c: str) -> None:
    """R: FRR, the veth to C, and the members' subnets on a veth pair kept inside R (no `dummy`
    module on every kernel; FRR only needs the next hops to be on a connected network)."""
    sh("ip", "netns", "add", r)
    sh("ip", "netns", "add", c)
    for ns in (r, c):
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", r, "link", "add", "ctl0", "type", "veth", "peer", "name", "rtr0", "netns", c)
    sh("ip", "-n", r, "addr", "add", f"{ROUTER_ADDR}/24", "dev", "ctl0")
    sh("ip", "-n", c, "addr", "add", f"{SPEAKER_ADDR}/24", "dev", "rtr0")
    sh("ip", "-n", r, "link", "set", "ctl0", "up")
    sh("ip", "-n", c, "link", "set", "rtr0", "up")
    sh("ip", "-n", r, "link", "add", "hops0", "type", "veth", "peer", "name", "hops1")
    for member in MEMBERS:
        sh("ip", "-n", r, "addr", "add", f"{IPv4Address(int(member) - 1)}/24", "dev", "hops0")
    sh("ip", "-n", r, "link", "set", "hops0", "up")
    sh("ip", "-n", r, "link", "set", "hops1", "up")
    sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")


def desired_all(vips: int) -> dict[IPv4Address, frozenset[NextHop]]:
    return {IPv4Address(VIP_BASE + v): frozenset(NextHop(m) for m in MEMBERS) for v in range(vips)}


def one_change_at_a_time(desired: DesiredRoutes) -> list[dict[IPv4Address, frozenset[NextHop]]]:
    """bench_kernel_router's reference: the first member of every VIP, then the second; each call
    carries one VIP's new next-hop set."""
    calls = []
    for member in (0, 1):
        for vip, hops in desired.items():
            ordered = sorted(hops, key=lambda h: h.address)
            calls.append({vip: frozenset(ordered[:member + 1])})
    return calls


class RouteMonitor:
    """Counts the router's FIB changes for the VIPs (RTM_NEWROUTE/RTM_DELROUTE; the first and last are
    timed) and its nexthop object changes, from a netlink subscription the event loop reads: what
    `ip monitor route nexthop` shows. The subscription exists once the constructor returns, so no
    event is missed by a late start (a fresh `ip monitor` process needs a few ms to subscribe)."""

    def __init__(self, ns: str) -> None:
        self.route_events = 0
        self.nexthop_events = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.overflowed = False
        self._sock = netns.socket_in(ns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, nl.SO_RCVBUFFORCE, 16 << 20)
            self._sock.bind((0, RTMGRP_IPV4_ROUTE))
            self._sock.setsockopt(nl.SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_NEXTHOP)
            self._sock.setblocking(False)
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._read)
        except BaseException:
            self._sock.close()
            raise

    def reset(self) -> None:
        self._read()
        self.route_events = self.nexthop_events = 0
        self.first_at = self.last_at = None

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overflowed = True      # events were lost: the counts are a lower bound
                continue
            now = time.perf_counter()
            for msg in nl.decode_msgs(data):
                if msg.type in (nl.RTM_NEWROUTE, nl.RTM_DELROUTE):
                    attrs = nl.parse_nlas(msg.payload[RTMSG_LEN:])
                    dst = attrs.get(nl.RTA_DST)
                    if dst is None or len(dst) != 4 or IPv4Address(dst) not in VIP_NET:
                        continue
                    self.route_events += 1
                    self.first_at = self.first_at or now
                    self.last_at = now
                elif msg.type in (nl.RTM_NEWNEXTHOP, nl.RTM_DELNEXTHOP):
                    self.nexthop_events += 1

    def last_seen(self, default: float) -> float:
        """When the last FIB change read so far arrived (events already queued are read first)."""
        self._read()
        return self.last_at if self.last_at is not None else default

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()


@dataclass
class Fib:
    """Polls the router's FIB (one route dump per poll) until it holds exactly the wanted paths."""

    client: nl.NetlinkClient
    interval_s: float
    dump_s: list[float] = field(default_factory=list)

    def paths(self) -> set[Path_] | None:
        t0 = time.perf_counter()
        try:
            got = {p for p in fib_paths(self.client, RTPROT_BGP) if p[0] in VIP_NET}
        except RouterError:             # a dump interrupted by changes three times in a row: not yet
            return None
        self.dump_s.append(time.perf_counter() - t0)
        return got

    async def wait(self, want: set[Path_], timeout_s: float = 60.0) -> tuple[float, int]:
        """perf_counter() when a dump first showed exactly `want`, and the number of dumps taken."""
        end = time.perf_counter() + timeout_s
        polls = 0
        while True:
            started = time.perf_counter()
            polls += 1
            got = self.paths()
            if got == want:
                return time.perf_counter(), polls
            if started > end:
                have = len(got) if got is not None else "?"
                raise RuntimeError(f"FIB holds {have} paths, not the {len(want)} wanted, after {timeout_s:.0f}s")
            await asyncio.sleep(max(0.0, self.interval_s - (time.perf_counter() - started)))


async def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = 30.0, interval_s: float = 0.005) -> float:
    end = time.perf_counter() + timeout_s
    while not cond():
        if time.perf_counter() > end:
            raise RuntimeError(f"{what}: not after {timeout_s:.0f}s")
        await asyncio.sleep(interval_s)
    return time.perf_counter()


@dataclass
class Lab:
    r: str
    c: str
    dir: Path
    frr: Frr
    router: BgpRouter
    fib: Fib
    monitor: RouteMonitor

    @property
    def session(self) -> SessionStatus:
        return self.router.sessions[ROUTER_ADDR]


async def connect(router: BgpRouter, timeout_s: float = 30.0) -> None:
    """apply() raises RouterError until ExaBGP has connected its API: retry, then wait for the sync."""
    end = time.perf_counter() + timeout_s
    while True:
        try:
            await router.apply({})
            break
        except RouterError:
            if time.perf_counter() > end:
                raise
            await asyncio.sleep(0.05)
    await router.wait_synced(timeout_s)


# ---- 1. batch against one change per apply() ----------------------------------------------------

async def bench_changes(lab: Lab, out: Path, vips: int, runs: int, confirm_sample: int = 100) -> None:
    desired = desired_all(vips)
    want = paths_of(desired)
    emptied = dict.fromkeys(desired, frozenset[NextHop]())
    calls = one_change_at_a_time(desired)
    m: dict[str, list[float]] = {k: [] for k in (
        "batch_apply", "batch_fib", "batch_first_event", "batch_last_event",
        "one_apply", "one_fib", "one_first_event", "one_last_event",
        "withdraw_apply", "withdraw_fib", "withdraw_last_event", "confirmed_per_change")}
    events: dict[str, list[int]] = {"batch": [], "one": [], "withdraw": []}
    polls: list[int] = []
    wire: dict[str, list[float]] = {"burst": [], "one_by_one": []}
    messages = 0

    async def withdraw_all() -> None:
        lab.monitor.reset()
        t0 = time.perf_counter()
        await lab.router.apply(emptied)
        m["withdraw_apply"].append(time.perf_counter() - t0)
        seen, _ = await lab.fib.wait(set())
        m["withdraw_fib"].append(seen - t0)
        m["withdraw_last_event"].append(lab.monitor.last_seen(seen) - t0)
        events["withdraw"].append(lab.monitor.route_events)

    for _ in range(runs):
        # (a) the whole desired state in one apply()
        lab.monitor.reset()
        t0 = time.perf_counter()
        result = await lab.router.apply(desired)
        m["batch_apply"].append(time.perf_counter() - t0)
        seen, n = await lab.fib.wait(want)
        m["batch_fib"].append(seen - t0)
        m["batch_first_event"].append((lab.monitor.first_at or seen) - t0)
        m["batch_last_event"].append(lab.monitor.last_seen(seen) - t0)
        events["batch"].append(lab.monitor.route_events)
        polls.append(n)
        messages = result.messages
        assert len(result.added) == len(want), result
        await withdraw_all()

        # (b) one apply() per change
        lab.monitor.reset()
        t0 = time.perf_counter()
        for call in calls:
            await lab.router.apply(call)
        m["one_apply"].append(time.perf_counter() - t0)
        seen, n = await lab.fib.wait(want)
        m["one_fib"].append(seen - t0)
        m["one_first_event"].append((lab.monitor.first_at or seen) - t0)
        m["one_last_event"].append(lab.monitor.last_seen(seen) - t0)
        events["one"].append(lab.monitor.route_events)
        polls.append(n)
        await withdraw_all()

        # (c) one change at a time, each confirmed in the FIB before the next: what a driver without
        # batching must do to know a change landed (FRR holds every update ~50 ms before it installs
        # it). A sample of the calls, polled every 2 ms; the table extrapolates it to all changes.
        fine = Fib(lab.fib.client, 0.002)
        so_far: set[Path_] = set()
        t0 = time.perf_counter()
        for call in calls[:confirm_sample]:
            await lab.router.apply(call)
            for vip, hops in call.items():
                so_far = {p for p in so_far if p[0] != vip} | {(vip, h.address) for h in hops}
            await fine.wait(so_far)
        m["confirmed_per_change"].append((time.perf_counter() - t0) / min(confirm_sample, len(calls)))
        await withdraw_all()

        # Wire level: the same announces written straight to ExaBGP, without the driver's diff and
        # bookkeeping: one burst vs one command per acknowledgement. The driver holds nothing at this
        # point (all withdrawn) and the paths are withdrawn again before the next run.
        announce = [route_line("announce", v, h) for v, h in sorted(want)]
        withdraw = [route_line("withdraw", v, h) for v, h in sorted(want)]
        t0 = time.perf_counter()
        await lab.router._send(announce)
        wire["burst"].append(time.perf_counter() - t0)
        await lab.router._send(withdraw)
        await lab.fib.wait(set())
        t0 = time.perf_counter()
        for line in announce:
            await lab.router._send([line])
        wire["one_by_one"].append(time.perf_counter() - t0)
        await lab.router._send(withdraw)
        await lab.fib.wait(set())

    med = {k: statistics.median(v) for k, v in m.items()}
    n = len(want)
    print_table(f"bgp: {n} next-hop changes ({vips} VIPs x 2), ExaBGP → FRR → kernel FIB, seconds", [
        ("(a) one apply(): returned", m["batch_apply"], "s"),
        ("(a) one apply(): last change in FIB (poll)", m["batch_fib"], "s"),
        ("(a) one apply(): first FIB event (monitor)", m["batch_first_event"], "s"),
        ("(a) one apply(): last FIB event (monitor)", m["batch_last_event"], "s"),
        (f"(b) {n} apply(): returned", m["one_apply"], "s"),
        (f"(b) {n} apply(): last change in FIB (poll)", m["one_fib"], "s"),
        (f"(b) {n} apply(): last FIB event (monitor)", m["one_last_event"], "s"),
        ("withdraw all, one apply(): returned", m["withdraw_apply"], "s"),
        ("withdraw all, one apply(): FIB empty (poll)", m["withdraw_fib"], "s"),
        ("withdraw all, one apply(): last FIB event (monitor)", m["withdraw_last_event"], "s"),
        (f"(c) one change confirmed in FIB before the next, per change ({confirm_sample} sampled)",
         m["confirmed_per_change"], "s"),
        (f"wire: {n} commands to ExaBGP in one burst, acked", wire["burst"], "s"),
        (f"wire: {n} commands to ExaBGP one at a time, acked", wire["one_by_one"], "s"),
    ])
    print(f"   FIB route events per run: (a) {events['batch']}, (b) {events['one']}, withdraw {events['withdraw']}")
    print(f"   ratio (b)/(a): returned {med['one_apply'] / med['batch_apply']:.1f}x, "
          f"in FIB {med['one_fib'] / med['batch_fib']:.1f}x; FIB poll every {lab.fib.interval_s * 1000:.0f} ms, "
          f"one dump of {n} paths {statistics.median(lab.fib.dump_s) * 1000:.1f} ms; wire ratio "
          f"{statistics.median(wire['one_by_one']) / statistics.median(wire['burst']):.2f}x")
    confirmed_total = med["confirmed_per_change"] * n
    print(f"   (c) each change confirmed before the next: {n} changes ≈ {confirmed_total:.1f} s "
          f"(extrapolated from {confirm_sample}) = {confirmed_total / med['batch_fib']:.0f}x the batch's time to FIB")
    write(out, {
        "name": f"bgp_batch_{n}_hops",
        "value": med["batch_fib"], "unit": "s", "runs": runs,
        "what": f"{vips} VIPs x 2 members from nothing in one apply() ({messages} ExaBGP commands), until "
                "every (VIP, next hop) pair is in the FRR router's kernel FIB",
        "apply_s": med["batch_apply"], "apply_runs": m["batch_apply"], "fib_runs": m["batch_fib"],
        "first_fib_change_s": med["batch_first_event"],
        "last_fib_change_s": med["batch_last_event"], "last_fib_change_runs": m["batch_last_event"],
        "reference": med["one_fib"],
        "reference_what": f"the same {n} changes as {n} apply() calls (the first member of every VIP, then "
                          "the second; each call carries one VIP's new next-hop set), until the last is in the FIB",
        "reference_apply_s": med["one_apply"], "reference_apply_runs": m["one_apply"],
        "reference_fib_runs": m["one_fib"], "reference_first_fib_change_s": med["one_first_event"],
        "reference_last_fib_change_s": med["one_last_event"], "reference_last_fib_change_runs": m["one_last_event"],
        "ratio": med["one_fib"] / med["batch_fib"],
        "ratio_apply": med["one_apply"] / med["batch_apply"],
        "ratio_what": "reference / value (in FIB); ratio_apply: the same for the time until apply() returned",
        "withdraw_apply_s": med["withdraw_apply"], "withdraw_fib_s": med["withdraw_fib"],
        "withdraw_fib_runs": m["withdraw_fib"], "withdraw_last_fib_change_s": med["withdraw_last_event"],
        "fib_what": "times from the start of the first apply(): *_fib = the first FIB poll (taken only after "
                    "apply() returned) showing exactly the wanted paths; *_last_fib_change = arrival of the "
                    "last route event in the router namespace (netlink subscription), which can come before "
                    "apply() returned",
        "fib_route_events": events,
        "fib_route_events_what": "RTM_NEWROUTE/DELROUTE for the VIPs seen in the router namespace per run",
        "poll_interval_ms": lab.fib.interval_s * 1000,
        "poll_dump_ms_median": statistics.median(lab.fib.dump_s) * 1000,
        "polls_until_complete_max": max(polls),
        "messages": messages,
        "monitor_overflowed": lab.monitor.overflowed,
        "confirmed_per_change_s": med["confirmed_per_change"], "confirmed_runs": m["confirmed_per_change"],
        "confirmed_total_s_extrapolated": confirmed_total, "confirmed_ratio": confirmed_total / med["batch_fib"],
        "confirmed_what": f"one apply() per change, each waited into the FIB (2 ms polls) before the next, "
                          f"on the first {confirm_sample} changes; extrapolated to {n}",
        "wire_burst_s": statistics.median(wire["burst"]), "wire_burst_runs": wire["burst"],
        "wire_one_by_one_s": statistics.median(wire["one_by_one"]), "wire_one_by_one_runs": wire["one_by_one"],
        "wire_ratio": statistics.median(wire["one_by_one"]) / statistics.median(wire["burst"]),
        "wire_what": f"only the {n} announce commands written to ExaBGP's API, without the driver: one burst "
                     "then every acknowledgement, against one command per acknowledgement; wire_ratio = "
                     "one_by_one / burst",
    })


def up_after(session: SessionStatus, ups: int) -> Callable[[], bool]:
    """True once the session came up more than `ups` times (it is `synced` only after the replay)."""
    return lambda: session.ups > ups


def synced_after(session: SessionStatus, replays: int) -> Callable[[], bool]:
    """True once the session is synced by a replay later than the `replays`-th."""
    return lambda: session.replays > replays and session.state == "synced"


# ---- 2. replays ------------------------------------------------------------------------------------

async def bench_replay(lab: Lab, out: Path, vips: int, runs: int, quiet_s: float) -> None:
    desired = desired_all(vips)
    want = paths_of(desired)
    await lab.router.apply(desired)
    await lab.fib.wait(want)
    m: dict[str, list[float]] = {k: [] for k in (
        "kill_restarted", "kill_up", "kill_synced", "kill_backoff", "kill_replay_s",
        "frr_empty", "frr_start", "frr_up", "frr_first_event", "frr_fib", "frr_synced", "frr_replay_s")}
    counts: dict[str, list[int]] = {k: [] for k in (
        "kill_route_events", "kill_nexthop_events", "kill_replay_messages", "kill_replays",
        "frr_replay_messages", "frr_replay_paths", "frr_replays", "frr_route_events")}
    router, session = lab.router, lab.session

    for _ in range(runs):
        # (a) kill -9 ExaBGP: graceful restart keeps the paths, the driver replays them and sends EoR
        pid, starts, replays, ups = router.speaker.pid, router.speaker.starts, session.replays, session.ups
        assert pid is not None
        backoff: list[float] = []

        def restarted(starts: int = starts, backoff: list[float] = backoff) -> bool:
            if router.speaker.next_start_in_s is not None and not backoff:
                backoff.append(router.speaker.next_start_in_s)
            return router.speaker.starts > starts and router.speaker.connected

        lab.monitor.reset()
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        m["kill_restarted"].append(await wait_for(restarted, "ExaBGP restarted") - t0)
        m["kill_up"].append(await wait_for(up_after(session, ups), "session up after the restart") - t0)
        synced = await wait_for(synced_after(session, replays), "session synced after the restart")
        m["kill_synced"].append(synced - t0)
        m["kill_backoff"].append(backoff[0] if backoff else float("nan"))
        # FRR acts on End-of-RIB (and on the replayed UPDATEs) after its 50 ms batching hold: watch the
        # FIB for a while after the sync, that is where a wrongly dropped stale path would show.
        await asyncio.sleep(quiet_s)
        counts["kill_route_events"].append(lab.monitor.route_events)
        counts["kill_nexthop_events"].append(lab.monitor.nexthop_events)
        counts["kill_replays"].append(session.replays - replays)
        assert router.last_replay is not None
        counts["kill_replay_messages"].append(router.last_replay.messages)
        m["kill_replay_s"].append(session.last_replay_s)
        if lab.fib.paths() != want:
            raise RuntimeError("the FIB lost paths across the ExaBGP restart")

        # (b) FRR restarts: zebra removes every route it installed when it stops
        replays, ups = session.replays, session.ups
        t0 = time.perf_counter()
        await lab.frr.stop()
        seen, _ = await lab.fib.wait(set())
        m["frr_empty"].append(seen - t0)
        lab.monitor.reset()
        t0, t0_wall = time.perf_counter(), time.time()
        await lab.frr.start()
        m["frr_start"].append(time.perf_counter() - t0)
        (seen, _), up = await asyncio.gather(lab.fib.wait(want),
                                             wait_for(up_after(session, ups), "session up after the FRR restart"))
        m["frr_fib"].append(seen - t0)
        m["frr_up"].append(up - t0)
        await wait_for(synced_after(session, replays), "session synced after the FRR restart")
        m["frr_synced"].append(session.since - t0_wall)     # when the driver marked it synced
        m["frr_first_event"].append((lab.monitor.first_at or seen) - t0)
        counts["frr_route_events"].append(lab.monitor.route_events)
        counts["frr_replays"].append(session.replays - replays)
        assert router.last_replay is not None
        counts["frr_replay_messages"].append(router.last_replay.messages)
        counts["frr_replay_paths"].append(session.last_replay_paths)
        m["frr_replay_s"].append(session.last_replay_s)

    med = {k: statistics.median(v) for k, v in m.items()}
    n = len(want)
    print_table(f"bgp replays with {n} paths in the FIB, seconds", [
        ("(a) kill -9 ExaBGP → new ExaBGP connected", m["kill_restarted"], "s"),
        ("(a)   of which the driver's restart backoff", m["kill_backoff"], "s"),
        ("(a) kill -9 ExaBGP → session up", m["kill_up"], "s"),
        ("(a) kill -9 ExaBGP → session synced (replay + EoR)", m["kill_synced"], "s"),
        ("(a)   the same without the backoff", [a - b for a, b in zip(m["kill_synced"], m["kill_backoff"],
                                                                   strict=True)], "s"),
        ("(a) replay batch (driver: write + every ack)", m["kill_replay_s"], "s"),
        ("(b) FRR stop → FIB empty", m["frr_empty"], "s"),
        ("(b) FRR start() returned", m["frr_start"], "s"),
        ("(b) FRR start → session up", m["frr_up"], "s"),
        ("(b) FRR start → first FIB event (monitor)", m["frr_first_event"], "s"),
        (f"(b) FRR start → all {n} paths in FIB (poll)", m["frr_fib"], "s"),
        ("(b) FRR start → session synced", m["frr_synced"], "s"),
        ("(b) replay batch (driver: write + every ack)", m["frr_replay_s"], "s"),
    ])
    print(f"   kill -9: FIB route events {counts['kill_route_events']}, nexthop events "
          f"{counts['kill_nexthop_events']} (watched until {quiet_s:.1f} s after the sync), replays "
          f"{counts['kill_replays']} of {counts['kill_replay_messages']} commands; FRR restart: replays "
          f"{counts['frr_replays']} of {counts['frr_replay_messages']} commands, {counts['frr_replay_paths']} paths, "
          f"FIB route events {counts['frr_route_events']}")
    write(out, {
        "name": "bgp_replay",
        "value": med["kill_synced"], "unit": "s", "runs": runs,
        "what": f"kill -9 of ExaBGP with {n} paths in the router's FIB until the driver's session is synced "
                "again (ExaBGP restarted after the driver's backoff, session up, full replay and End-of-RIB)",
        "runs_s": m["kill_synced"],
        "kill_restarted_s": med["kill_restarted"], "kill_session_up_s": med["kill_up"],
        "kill_restart_backoff_runs": m["kill_backoff"],
        "kill_replay_batch_s": med["kill_replay_s"],
        "kill_fib_route_events": counts["kill_route_events"],
        "kill_fib_nexthop_events": counts["kill_nexthop_events"],
        "kill_replays": counts["kill_replays"], "kill_replay_messages": counts["kill_replay_messages"],
        "kill_watch_after_sync_s": quiet_s,
        "frr_stop_to_fib_empty_s": med["frr_empty"],
        "frr_start_s": med["frr_start"], "frr_start_to_session_up_s": med["frr_up"],
        "frr_start_to_fib_s": med["frr_fib"], "frr_start_to_fib_runs": m["frr_fib"],
        "frr_start_to_first_fib_change_s": med["frr_first_event"], "frr_fib_route_events": counts["frr_route_events"],
        "frr_start_to_synced_s": med["frr_synced"],
        "frr_replays": counts["frr_replays"], "frr_replay_messages": counts["frr_replay_messages"],
        "frr_replay_paths": counts["frr_replay_paths"], "frr_replay_batch_s": med["frr_replay_s"],
        "poll_interval_ms": lab.fib.interval_s * 1000,
        "monitor_overflowed": lab.monitor.overflowed,
    })


# ---- main ------------------------------------------------------------------------------------------

async def run(args: argparse.Namespace) -> None:
    tag = secrets.token_hex(3)
    r, c = f"sclb{tag}r", f"sclb{tag}c"
    tmp = Path(tempfile.mkdtemp(prefix="sclb"))
    os.chmod(tmp, 0o755)                # FRR runs as user `frr` and must reach its directory
    frr = router = client = monitor = None
    try:
        make_namespaces(r, c)
        frr = Frr(FrrConfig(dir=tmp / "frr", asn=ROUTER_AS, router_id=ROUTER_ADDR,
                            neighbors=(FrrNeighbor(SPEAKER_ADDR, SPEAKER_AS),), netns=r))
        await frr.start()
        router = BgpRouter(BgpRouterConfig.model_validate({
            "local_as": SPEAKER_AS, "router_id": str(SPEAKER_ADDR), "local_address": str(SPEAKER_ADDR),
            "peers": [{"address": str(ROUTER_ADDR), "asn": ROUTER_AS}], "netns": c, "dir": str(tmp / "bgp")}))
        async with asyncio.timeout(args.limit_s):
            await connect(router)
        client = nl.NetlinkClient(r)
        monitor = RouteMonitor(r)
        lab = Lab(r, c, tmp, frr, router, Fib(client, args.poll_ms / 1000), monitor)
        async with asyncio.timeout(args.limit_s):
            await bench_changes(lab, args.out, args.vips, args.runs)
        async with asyncio.timeout(args.limit_s):
            await bench_replay(lab, args.out, args.vips, args.runs, args.quiet_s)
    finally:
        if monitor is not None:
            monitor.close()
        if client is not None:
            client.close()
        if router is not None:
            with contextlib.suppress(Exception):
                await router.close()        # SIGKILLs its ExaBGP by PID
        if frr is not None:
            with contextlib.suppress(Exception):
                await frr.stop()            # by the PIDs of its pidfiles
        for ns in (c, r):
            if netns.exists(ns):
                sh_quiet("ip", "netns", "del", ns)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--runs", type=int, default=2, help="runs of every variant")
    parser.add_argument("--vips", type=int, default=500, help="VIPs (x 2 members each)")
    parser.add_argument("--poll-ms", type=float, default=20.0, help="FIB poll interval: the resolution of FIB times")
    parser.add_argument("--quiet-s", type=float, default=1.0,
                        help="how long FIB changes are still counted after the replay's End-of-RIB")
    parser.add_argument("--limit-s", type=float, default=120.0, help="upper bound of each benchmark")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (creates network namespaces)", file=sys.stderr)
        return 2
    if not frr_available():
        print("skipped: FRR is not installed (apt-get install frr)", file=sys.stderr)
        return 0
    try:
        BgpRouterConfig.model_validate({"local_as": 1, "router_id": "192.0.2.1", "local_address": "192.0.2.1",
                                        "peers": [{"address": "192.0.2.2", "asn": 2}]}).exabgp_program()
    except RouterError as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 0
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
