"""Benchmark the `kernel` router driver against the real kernel, in a namespace made for the run.

1. apply() → next hop visible in the router's FIB (RTM_GETROUTE lookups from a second socket),
   median of N runs, for a member swap on an existing VIP (and, as extra fields, a new VIP).
2. 1,000 next-hop changes (500 VIPs x 2 members: 1,000 nexthops, 500 groups, 500 routes = 2,000
   messages) as one apply() batch, against one apply() per hop change (`reference`); as extra
   fields, the same 2,000 messages on the wire alone: one batch vs one send()/ACK each.
   For both, and for the withdraw of all 1,000 as one batch, also the time until the last change
   is in the FIB, in the shape bench_bgp_router.py reports it: one route dump started the moment
   apply() returns (the driver returns after the kernel's ACK) must already show the whole desired
   state, and the time is taken when that dump has been read.

Writes one JSON file per benchmark to --out. Creates only the namespace `sclk<random>b`, uses only
addresses of 198.18.0.0/15 inside it, sends no traffic, and deletes the namespace when done.

    python bench/bench_kernel_router.py --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actuators.kernel import netlink as nl
from actuators.kernel.router import KernelRouter, KernelRouterConfig, Snapshot, gateways_to_resolve, plan
from actuators.router import DesiredRoutes, NextHop

GW_BASE = int(IPv4Address("198.18.1.0"))     # members: 198.18.0.0/16, connected on bm0
VIP_BASE = int(IPv4Address("198.19.1.0"))    # VIPs: 198.19.0.0/16


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def sh_quiet(*argv: str) -> None:
    subprocess.run(argv, capture_output=True, check=False, timeout=30)


def make_router_ns(name: str) -> None:
    sh("ip", "netns", "add", name)
    ip = ("ip", "-n", name)
    sh(*ip, "link", "set", "lo", "up")
    # A veth pair with both ends inside: a connected /16 for the gateways, no peer namespace needed.
    sh(*ip, "link", "add", "name", "bm0", "type", "veth", "peer", "name", "bm1")
    sh(*ip, "addr", "add", "198.18.0.1/16", "dev", "bm0")
    sh(*ip, "link", "set", "bm0", "up")
    sh(*ip, "link", "set", "bm1", "up")


RTA_MULTIPATH = 9
_RTNH = struct.Struct("=HBBi")     # struct rtnexthop: len, flags, hops, ifindex; its attributes follow
_RTMSG_LEN = 12                     # struct rtmsg

Path_ = tuple[IPv4Address, IPv4Address]     # (VIP, next hop)


def fib_paths(client: nl.NetlinkClient, protocol: int, *, table: int = nl.RT_TABLE_MAIN) -> set[Path_]:
    """Every (destination, gateway) pair of the FIB's /32 routes of `protocol`, from one route dump.

    Routes that point at nexthop objects (the kernel driver's resilient groups, FRR's groups) come
    with their members expanded into RTA_MULTIPATH as long as net.ipv4.nexthop_compat_mode is 1 (the
    default), so one dump shows what packets would use without reading the nexthop objects.
    """
    out: set[Path_] = set()
    for msg in client.dump(nl.dump_routes(table=table, protocol=protocol)):
        if msg.type != nl.RTM_NEWROUTE or msg.payload[1] != 32:
            continue
        attrs = nl.parse_nlas(msg.payload[_RTMSG_LEN:])
        if nl.RTA_DST not in attrs:
            continue
        dst = IPv4Address(attrs[nl.RTA_DST])
        if nl.RTA_GATEWAY in attrs:
            out.add((dst, IPv4Address(attrs[nl.RTA_GATEWAY])))
        mp = attrs.get(RTA_MULTIPATH, b"")
        pos = 0
        while pos + _RTNH.size <= len(mp):
            length = _RTNH.unpack_from(mp, pos)[0]
            if length < _RTNH.size:
                break
            inner = nl.parse_nlas(mp[pos + _RTNH.size:pos + length])
            if nl.RTA_GATEWAY in inner:
                out.add((dst, IPv4Address(inner[nl.RTA_GATEWAY])))
            pos += (length + 3) & ~3
    return out


def paths_of(desired: DesiredRoutes) -> set[Path_]:
    return {(vip, hop.address) for vip, hops in desired.items() for hop in hops}


def print_table(title: str, rows: Sequence[tuple[str, Sequence[float], str]]) -> None:
    """One line per measure: every run, the median and the spread (max - min)."""
    print(f"-- {title}")
    width = max(len(name) for name, _, _ in rows)
    for name, values, unit in rows:
        runs = "  ".join(f"{v:9.3f}" for v in values)
        spread = max(values) - min(values) if values else 0.0
        med = statistics.median(values) if values else float("nan")
        print(f"  {name:<{width}}  {runs}   median {med:9.3f}  spread {spread:8.3f} {unit}")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p90": percentile(values, 0.9),
            "min": min(values), "max": max(values)}


def write(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result |= {"kernel": platform.release(), "python": platform.python_version(),
               "cpus": os.cpu_count(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               # Other work on the box skews every time here: the 1-minute load average when written.
               "loadavg_1m": round(os.getloadavg()[0], 2)}
    path = out / f"{result['name']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{path}: {result['name']} = {result['value']:.3f} {result['unit']}")


def wait_visible(probe: nl.NetlinkClient, vip: IPv4Address, hop: IPv4Address, deadline_s: float = 2.0) -> int:
    """Poll the FIB until a packet to `vip` would go to `hop`; returns the number of lookups made."""
    end = time.perf_counter() + deadline_s
    polls = 0
    while True:
        polls += 1
        (found,) = probe.lookup([vip])
        if isinstance(found, nl.Route) and found.gateway == hop:
            return polls
        if time.perf_counter() > end:
            raise RuntimeError(f"{vip} never went to {hop}")


async def bench_fib(ns: str, out: Path, runs: int) -> None:
    router = KernelRouter(KernelRouterConfig(netns=ns))
    probe = nl.NetlinkClient(ns)
    new_vip: list[float] = []
    swap: list[float] = []
    polls: list[int] = []
    try:
        for i in range(runs):
            vip = IPv4Address(VIP_BASE + 4000 + i)
            a, b = IPv4Address(GW_BASE + 2 * i), IPv4Address(GW_BASE + 2 * i + 1)
            t0 = time.perf_counter()
            await router.apply({vip: frozenset({NextHop(a)})})
            wait_visible(probe, vip, a)
            new_vip.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            await router.apply({vip: frozenset({NextHop(b)})})
            polls.append(wait_visible(probe, vip, b))
            swap.append(time.perf_counter() - t0)
            await router.apply({vip: frozenset()})
    finally:
        probe.close()
        await router.close()
    ms = [x * 1000 for x in swap]
    write(out, {
        "name": "kernel_apply_to_fib",
        "value": statistics.median(ms), "unit": "ms", "runs": runs,
        "what": "apply() replacing the member of an existing VIP's resilient group, until RTM_GETROUTE "
                "for the VIP returns the new next hop (includes apply's two dumps and a gateway lookup)",
        **{f"{k}_ms": v for k, v in summary(ms).items()},
        "lookups_until_visible_max": max(polls),
        "new_vip_median_ms": statistics.median(new_vip) * 1000,
        "new_vip_p90_ms": percentile(new_vip, 0.9) * 1000,
    })


def desired_all(vips: int) -> dict[IPv4Address, frozenset[NextHop]]:
    return {IPv4Address(VIP_BASE + v): frozenset({NextHop(IPv4Address(GW_BASE + 2 * v)),
                                                  NextHop(IPv4Address(GW_BASE + 2 * v + 1))})
            for v in range(vips)}


def emptied(desired: DesiredRoutes) -> dict[IPv4Address, frozenset[NextHop]]:
    return dict.fromkeys(desired, frozenset())


async def bench_batch(ns: str, out: Path, vips: int, runs: int, reference_runs: int) -> None:
    cfg = KernelRouterConfig(netns=ns)
    router = KernelRouter(cfg)
    client = nl.NetlinkClient(ns)
    desired = desired_all(vips)
    batch: list[float] = []
    batch_fib: list[float] = []
    withdraw: list[float] = []
    withdraw_fib: list[float] = []
    complete_at_return: list[bool] = []
    want = paths_of(desired)
    messages = 0
    wire: dict[str, list[float]] = {"batch": [], "batch_ack_each": [], "one_by_one": []}
    references: list[float] = []
    reference_fib: list[float] = []
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            result = await router.apply(desired)
            batch.append(time.perf_counter() - t0)
            complete_at_return.append(fib_paths(client, cfg.protocol, table=cfg.table) == want)
            batch_fib.append(time.perf_counter() - t0)
            messages = result.messages
            assert len(result.added) == 2 * vips
            t0 = time.perf_counter()
            await router.apply(emptied(desired))
            withdraw.append(time.perf_counter() - t0)
            complete_at_return.append(not fib_paths(client, cfg.protocol, table=cfg.table))
            withdraw_fib.append(time.perf_counter() - t0)

        # Wire level: the very messages apply() sends, without its dumps, lookups and planning.
        # The plan is built from the empty router exactly as apply() builds it; that is not timed.
        snap = Snapshot({}, {})
        oifs = router.resolve_gateways(gateways_to_resolve(desired, snap, cfg.protocol))
        requests = plan(desired, snap, cfg, oifs).requests
        assert len(requests) == messages
        for _ in range(runs):
            for mode, send in (
                ("batch", lambda: client.check(requests)),
                ("batch_ack_each", lambda: client.check(requests, ack_each=True)),
                ("one_by_one", lambda: [client.check([req]) for req in requests]),
            ):
                t0 = time.perf_counter()
                send()
                wire[mode].append(time.perf_counter() - t0)
                await router.apply(emptied(desired))

        # Reference: one apply() per hop change (first member of every VIP, then the second), as a
        # caller that does not batch would do it; each apply() reads the router first.
        for _ in range(reference_runs):
            t0 = time.perf_counter()
            for member in (0, 1):
                for vip, hops in desired.items():
                    ordered = sorted(hops, key=lambda h: h.address)
                    await router.apply({vip: frozenset(ordered[:member + 1])})
            references.append(time.perf_counter() - t0)
            complete_at_return.append(fib_paths(client, cfg.protocol, table=cfg.table) == want)
            reference_fib.append(time.perf_counter() - t0)
            assert (await router.apply(desired)).messages == 0
            await router.apply(emptied(desired))
    finally:
        client.close()
        await router.close()
    if not all(complete_at_return):
        raise RuntimeError(f"the FIB was not complete when apply() returned in "
                           f"{complete_at_return.count(False)} of {len(complete_at_return)} checks")
    value = statistics.median(batch)
    reference = statistics.median(references)
    w = {mode: statistics.median(times) for mode, times in wire.items()}
    print_table(f"kernel: {2 * vips} next-hop changes ({vips} VIPs x 2), seconds", [
        ("(a) one apply(): returned", batch, "s"),
        ("(a) one apply(): last change in FIB", batch_fib, "s"),
        (f"(b) {2 * vips} apply(): returned", references, "s"),
        (f"(b) {2 * vips} apply(): last change in FIB", reference_fib, "s"),
        ("withdraw all, one apply(): returned", withdraw, "s"),
        ("withdraw all, one apply(): FIB empty", withdraw_fib, "s"),
    ])
    write(out, {
        "name": f"kernel_batch_{2 * vips}_hops",
        "value": value, "unit": "s", "runs": runs,
        "what": f"{vips} VIPs x 2 members from nothing in one apply(): {messages} messages in one batch, "
                "dumps, gateway lookups and planning included",
        "reference": reference,
        "reference_what": f"the same {2 * vips} hop changes as {2 * vips} apply() calls, one change each",
        "ratio": reference / value,
        "ratio_what": "reference / value",
        "messages": messages,
        **summary(batch),
        "reference_runs": references,
        "fib_s": statistics.median(batch_fib),
        "fib_runs": batch_fib,
        "reference_fib_s": statistics.median(reference_fib),
        "reference_fib_runs": reference_fib,
        "fib_ratio": statistics.median(reference_fib) / statistics.median(batch_fib),
        "withdraw_s": statistics.median(withdraw),
        "withdraw_fib_s": statistics.median(withdraw_fib),
        "complete_at_return": all(complete_at_return),
        "fib_what": "from the start of the first apply() until a route dump taken right after the last "
                    "apply() returned has been read and shows every (VIP, next hop) pair (withdraw: none); "
                    "complete_at_return: every such dump was already complete (the driver returns after "
                    "the kernel's ACK, so there is nothing to poll for); fib_ratio = reference_fib_s / fib_s",
        "wire_batch_s": w["batch"],
        "wire_batch_ack_each_s": w["batch_ack_each"],
        "wire_one_by_one_s": w["one_by_one"],
        "wire_ratio": w["one_by_one"] / w["batch"],
        "wire_what": f"only the {messages} messages: one batch with a barrier ACK (what apply() does), "
                     "one batch with an ACK per message, one send()+ACK per message; wire_ratio = "
                     "one_by_one / batch",
    })


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--runs", type=int, default=50, help="runs of the apply→FIB benchmark")
    parser.add_argument("--batch-runs", type=int, default=5, help="runs of the batched variants")
    parser.add_argument("--reference-runs", type=int, default=2,
                        help="runs of the 1,000 apply() calls (each ~20 s on 2 cores)")
    parser.add_argument("--vips", type=int, default=500)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (creates a network namespace)", file=sys.stderr)
        return 2
    ns = f"sclk{secrets.token_hex(3)}b"
    try:
        make_router_ns(ns)
        await bench_fib(ns, args.out, args.runs)
        await bench_batch(ns, args.out, args.vips, args.batch_runs, args.reference_runs)
    finally:
        sh_quiet("ip", "netns", "del", ns)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
