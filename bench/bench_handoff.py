"""Benchmark stray-packet handoff (issue 19): broken flows across a scale-out and a scale-in over BGP.

For each rate of new connections (--rates, default 100,1000) and each variant — `reference` (today's
bgp behaviour: no handoff; scale-in = HAProxy drain, `drain_grace` 5 s, withdraw) and `handoff`
(actuators/handoff.py on every member; scale-in = HAProxy drain, withdraw at once, wait until the
member's HAProxy has no connection left and its kernel no connection with data in flight (or 60 s),
then out of the peer lists and deleted) — in a
fresh `bgp` lab (FRR in the router, the scaler's bgp driver with ExaBGP, real HAProxy members):

1. the VIP announced for two members a, b; load: short requests at the rate (one new connection
   each), 16 keep-alive clients, 8 slow requests (silent 20-28 s, then 4 MiB through a 64 KiB
   receive buffer), 4 downloads of 50 MiB at 4 MiB/s, 8 idle keep-alive connections (silent 25 s;
   HAProxy's keep-alive timeout 28 s);
2. at +8 s member c is made (handoff: every peer list updated first) and announced: FRR's plain ECMP
   group rehashes, about a third of the established flows now reach a member that does not own them;
3. 30 s later, the scale-in of c (as above), then 5 s more load;
4. broken flows by kind (the load generator's failures, by cause) in each phase, the achieved rate,
   the handoff counters of every member (strays each copied to every peer; copies accepted by their
   owner; copies dropped by the others) and the machine's kernel CPU (sys + softirq) and the members'
   HAProxy CPU, both per 1,000 new connections/s.

Value: broken flows (all kinds) with handoff; reference: the same without, same rate, same run.
Aim: 0 in every kind at every rate. Writes handoff_{rate}.json.

`--cost` also prices one stray (handoff_cost.json): in a kernel lab with a static route to member a,
the client sends 3 x 200,000 TCP ACKs of connections nobody has; a copies each to b and c (which drop
them), against a dropping each itself; kernel CPU of the whole machine per packet, both ways.

    python bench/bench_handoff.py --out bench/results [--rates 100,1000] [--cost] [--transport vxlan]

`--transport vxlan`: the copies travel over VXLAN between the members' own addresses (through the
router) instead of the lab's peer bridge; results then end in `_vxlan`.

Creates only namespaces of its own lab (`hof<random>-…`), uses only 198.18.0.0/15 inside them, stops
every process it started and removes the lab, even on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import struct
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import machine

from actuators import handoff
from actuators.bgp import BgpRouter, BgpRouterConfig
from actuators.errors import RouterError
from actuators.haproxy_runtime import HAProxyRuntime
from actuators.lab.orchestrator import LabOrchestrator
from actuators.linux import netns
from actuators.linux.procs import read_pidfile
from actuators.orchestrator import Instance, InstanceSpec
from actuators.router import NextHop
from scaler.lab.network import LabConfig, LoadRun, lab_down, lab_up

KINDS = ("short", "keepalive", "slow", "download", "idle")
DRAIN_GRACE_S = 5.0          # PoolConfig.drain_grace's default: today's bgp scale-in
DRAIN_DEADLINE_S = 60.0


def kernel_cpu_s() -> float:
    """System + softirq CPU seconds of the whole machine (forwarding, conntrack, nftables, dup)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return (int(fields[3]) + int(fields[7])) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fib(lab: LabConfig) -> set[IPv4Address]:
    """The VIP's next hops in the router's kernel FIB."""
    _, out, _ = await netns.run(["ip", "-j", "route", "show", f"{lab.vip}/32"], ns=lab.router_ns, check=False)
    hops: set[IPv4Address] = set()
    for route in json.loads(out or "[]"):
        if route.get("gateway"):
            hops.add(IPv4Address(route["gateway"]))
        for nh in route.get("nexthops", []):
            hops.add(IPv4Address(nh["gateway"]))
    return hops


async def route(router: BgpRouter, lab: LabConfig, members: list[Instance]) -> float:
    """Announce exactly `members`; the seconds until the FIB holds exactly them."""
    want = {m.address for m in members if m.address}
    t0 = time.monotonic()
    while True:
        try:
            await router.apply({lab.vip: frozenset(NextHop(a) for a in want)})
            break
        except RouterError:
            if time.monotonic() - t0 > 20:
                raise
            await asyncio.sleep(0.2)
    while await fib(lab) != want:
        if time.monotonic() - t0 > 20:
            raise RuntimeError(f"FIB {await fib(lab)} != {want} after 20 s")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


def phase(ticks: list[dict[str, Any]], lo: int, hi: int) -> dict[str, int]:
    return {k: sum(t.get("kinds", {}).get(k, {}).get("failed", 0) for t in ticks[lo:hi]) for k in KINDS}


async def one_run(rate: int, use_handoff: bool, transport: str = "bridge") -> dict[str, Any]:
    lab = LabConfig(name=f"hof{secrets.token_hex(1)}", keepalive_timeout_s=28, router="bgp")
    await lab_down(lab)
    await lab_up(lab)
    router: BgpRouter | None = None
    try:
        orch = LabOrchestrator(lab.orchestrator_config(handoff=use_handoff, handoff_transport=transport))
        spec = InstanceSpec("web", lab.vip)
        a, b = [await orch.create(spec, n) for n in ("a", "b")]
        if use_handoff:
            await orch.set_peers("web", ["a", "b"])
        router = BgpRouter(BgpRouterConfig.model_validate(lab.bgp_router_options()))
        await route(router, lab, [a, b])
        haproxy_pids = {n: read_pidfile(orch.paths(n).haproxy_pid) for n in ("a", "b")}
        load = LoadRun(lab, short_rps=rate, short_concurrency=2048, keepalive_clients=16, slow_clients=8,
                       slow_delay_s=(20, 28), slow_bytes=4 << 20, downloads=4, download_bytes=50 << 20,
                       download_rate_bps=4 << 20, idle_clients=8, idle_pause_s=25, interval_s=1.0,
                       max_seconds=150, timeout_s=5.0, retry=False)
        await load.start()
        cpu0, wall0 = kernel_cpu_s(), time.monotonic()
        hap0 = {n: process_cpu_s(p) for n, p in haproxy_pids.items()}
        counters: dict[str, dict[str, int]] = {}
        try:
            while len(load.ticks) < 8:
                await load.next_tick(10)
            # Scale-out: c made (its peer list first), every peer list updated, c announced.
            c = await orch.create(spec, "c")
            haproxy_pids["c"] = read_pidfile(orch.paths("c").haproxy_pid)
            hap0["c"] = process_cpu_s(haproxy_pids["c"])
            if use_handoff:
                await orch.set_peers("web", ["a", "b", "c"])
            out_at = len(load.ticks)
            announce_s = await route(router, lab, [a, b, c])
            while len(load.ticks) < out_at + 30:
                await load.next_tick(10)
            # Scale-in of c.
            in_at = len(load.ticks)
            c_api = HAProxyRuntime(c.endpoints["runtime_api"])
            await c_api.drain()
            t_drain = time.monotonic()
            left: int | None = None
            if use_handoff:
                await route(router, lab, [a, b])            # withdraw at once: strays still reach c
                while time.monotonic() - t_drain < DRAIN_DEADLINE_S:
                    # HAProxy's count, then the kernel's: a closed response may still be in flight.
                    left = await c_api.current_connections() or await orch.open_flows("c")
                    if left == 0:
                        break
                    await asyncio.sleep(0.25)
            else:
                while time.monotonic() - t_drain < DRAIN_GRACE_S:
                    left = await c_api.current_connections()
                    if left == 0:
                        break
                    await asyncio.sleep(0.25)
                await route(router, lab, [a, b])
            drain_s = time.monotonic() - t_drain
            if use_handoff:
                counters = {n: await orch.handoff_counters(n) for n in ("a", "b", "c")}
                await orch.set_peers("web", ["a", "b"])
            hap = {n: process_cpu_s(p) - hap0[n] for n, p in haproxy_pids.items()}
            await orch.delete("c")
            deleted_at = len(load.ticks)
            for _ in range(5):
                await load.next_tick(10)
        finally:
            summary = await load.stop()
        wall = time.monotonic() - wall0
        kernel_cores = (kernel_cpu_s() - cpu0) / wall
        if use_handoff:
            late = {n: await orch.handoff_counters(n) for n in ("a", "b")}
            for n in late:
                counters[n] = late[n]
        kinds = summary.get("kinds", {})
        achieved = (kinds.get("short", {}).get("ok", 0) + kinds.get("short", {}).get("failed", 0)) / summary.get(
            "elapsed_s", wall)
        ticks = load.ticks
        strays = sum(c.get("strays", 0) for c in counters.values())
        copies = sum(c.get("peer_accepted", 0) + c.get("peer_dropped", 0) for c in counters.values())
        return {
            "variant": "handoff" if use_handoff else "reference", "rate": rate,
            "transport": transport if use_handoff else None,
            "achieved_new_connections_per_s": round(achieved, 1),
            "broken_total": sum(kinds.get(k, {}).get("failed", 0) for k in KINDS),
            "broken": {k: {"failed": kinds.get(k, {}).get("failed", 0), "ok": kinds.get(k, {}).get("ok", 0),
                           "failures": kinds.get(k, {}).get("failures", {})} for k in KINDS},
            "broken_by_phase": {"before": phase(ticks, 0, out_at), "scale_out": phase(ticks, out_at, in_at),
                                "scale_in": phase(ticks, in_at, deleted_at),
                                "after": phase(ticks, deleted_at, len(ticks))},
            "failed_after_last_tick": {k: kinds.get(k, {}).get("failed", 0) - phase(ticks, 0, len(ticks))[k]
                                       for k in KINDS},
            "aborted_at_stop": summary.get("aborted"),
            "failure_ticks": [{"tick": i, **{k: t["kinds"][k]["failures"] for k in KINDS
                                             if t.get("kinds", {}).get(k, {}).get("failed")}}
                              for i, t in enumerate(ticks) if t.get("failed")],
            "event_ticks": {"scale_out": out_at, "scale_in": in_at, "deleted": deleted_at, "last": len(ticks)},
            "announce_s": round(announce_s, 3),
            "drain": {"seconds": round(drain_s, 2), "connections_left_at_withdraw_or_delete": left},
            "handoff_counters": counters,
            "strays": strays, "copies_delivered": copies,
            "cpu": {"kernel_cores": round(kernel_cores, 3),
                    "kernel_cores_per_1000_conn_s": round(kernel_cores / achieved * 1000, 3) if achieved else None,
                    "haproxy_cpu_s": {n: round(v, 2) for n, v in hap.items()}, "wall_s": round(wall, 1)},
        }
    finally:
        if router is not None:
            await router.close()
        await lab_down(lab)


def stray_packets(src: IPv4Address, dst: IPv4Address, n: int) -> list[bytes]:
    """`n` TCP ACKs (IP header included, valid checksums) of connections nobody has: pure strays."""
    out = []
    for i in range(n):
        sport, seq, ack = 20000 + i, 1_000_000 + i, 2_000_000 + i
        tcp = struct.pack("!HHIIBBHHH", sport, 80, seq, ack, 5 << 4, 0x10, 65535, 0, 0)
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xFFFF, 0, 64, socket.IPPROTO_TCP, 0,
                         src.packed, dst.packed)
        out.append(ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:] + tcp)
    return out


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


async def cost_run(packets: int = 200_000, rounds: int = 3, transport: str = "bridge") -> dict[str, Any]:
    """The price of one stray on the member it lands on and its peers: the client sends `packets` TCP
    ACKs of unknown connections to the VIP (routed to member a). `copied`: a's handoff copies each to
    b and c, which drop them (the handoff's path); `dropped`: a drops each where handoff would copy it
    (same rules, no peers to copy to). The difference of the machine's kernel CPU per packet is what
    copying costs; alternated `rounds` times."""
    lab = LabConfig(name=f"hoc{secrets.token_hex(1)}")
    await lab_down(lab)
    await lab_up(lab)
    try:
        orch = LabOrchestrator(lab.orchestrator_config(handoff=True, handoff_transport=transport))
        spec = InstanceSpec("web", lab.vip)
        a = (await asyncio.gather(*(orch.create(spec, n) for n in ("a", "b", "c"))))[0]
        await netns.run(["ip", "-n", lab.router_ns, "route", "replace", f"{lab.vip}/32", "via", str(a.address)])
        ns_a = orch.netns_of("a")
        batch = stray_packets(IPv4Address("198.18.0.2"), lab.vip, 4096)
        sock = netns.socket_in(lab.client_ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

        def blast() -> float:
            t0 = time.monotonic()
            for i in range(packets):
                sock.sendto(batch[i % len(batch)], (str(lab.vip), 0))
            return time.monotonic() - t0

        totals = {v: {"cpu_s": 0.0, "s": 0.0, "strays": 0} for v in ("copied", "dropped")}
        try:
            for _ in range(rounds):
                for variant in ("copied", "dropped"):
                    await orch.set_peers("web", ["a", "b", "c"])
                    if variant == "dropped":
                        await netns.run(["nft", "-f", "-"], ns=ns_a, stdin=(
                            f"flush chain ip {handoff.TABLE} to_peers\n"
                            f"add rule ip {handoff.TABLE} to_peers counter name strays drop\n").encode())
                    before = (await orch.handoff_counters("a"))["strays"]
                    cpu0 = kernel_cpu_s()
                    elapsed = await asyncio.to_thread(blast)
                    await asyncio.sleep(0.2)
                    totals[variant]["cpu_s"] += kernel_cpu_s() - cpu0
                    totals[variant]["s"] += elapsed
                    totals[variant]["strays"] += (await orch.handoff_counters("a"))["strays"] - before
        finally:
            sock.close()
        out: dict[str, Any] = {"packets_per_variant": packets * rounds, "transport": transport}
        for v, t in totals.items():
            out[v] = {"kernel_us_per_packet": round(t["cpu_s"] / (packets * rounds) * 1e6, 2),
                      "packets_per_s": round(packets * rounds / t["s"]), "strays_counted": t["strays"]}
        out["copy_us_per_stray"] = round(out["copied"]["kernel_us_per_packet"]
                                         - out["dropped"]["kernel_us_per_packet"], 2)
        return out
    finally:
        await lab_down(lab)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--rates", default="100,1000")
    ap.add_argument("--variants", default="reference,handoff")
    ap.add_argument("--cost", action="store_true", help="also measure the CPU price of one stray packet")
    ap.add_argument("--transport", choices=("bridge", "vxlan"), default="bridge",
                    help="how copies reach the peers (the lab orchestrator's handoff_transport)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.transport == "bridge" else f"_{args.transport}"
    if args.cost:
        cost = await cost_run(transport=args.transport)
        value, ref = cost["copied"]["kernel_us_per_packet"], cost["dropped"]["kernel_us_per_packet"]
        doc = {"name": "handoff_stray_cost", "value": value,
               "unit": "µs of kernel CPU per stray packet copied to 2 peers (sender and router included)",
               "reference": ref, "reference_is": "the same packet dropped where it lands, not copied",
               "ratio": round(value / ref, 2) if ref else None, "cost": cost, "machine": machine()}
        (args.out / f"handoff_cost{suffix}.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc), flush=True)
    for rate in (int(r) for r in args.rates.split(",") if r):
        runs = {v: await one_run(rate, v == "handoff", args.transport) for v in args.variants.split(",")}
        for run in runs.values():
            print(json.dumps(run), flush=True)
        new, ref = runs.get("handoff"), runs.get("reference")
        if new is None or ref is None:
            continue
        doc = {"name": f"handoff_broken_flows_{rate}{suffix}", "value": new["broken_total"], "unit": "broken flows",
               "reference": ref["broken_total"],
               "ratio": round(new["broken_total"] / ref["broken_total"], 3) if ref["broken_total"] else None,
               "aim": "0 broken flows of every kind across a scale-out and a scale-in over BGP",
               "handoff": new, "without_handoff": ref, "machine": machine()}
        (args.out / f"handoff_{rate}{suffix}.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps({k: doc[k] for k in ("name", "value", "unit", "reference", "ratio")}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
