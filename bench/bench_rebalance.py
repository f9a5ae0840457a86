"""Benchmark rebalancing and broken flows across a 2 → 3 scale-out and a 3 → 2 scale-in, kernel router.

For each router configuration — `resilient` with today's 128 buckets / 5 s idle timer (the reference)
and `conntrack` (the default) — and each rate of new connections (--rates, default 100,1000,3000),
in a fresh lab with three real HAProxy members:

1. the VIP routed to two members; load starts: short requests at the rate (one new connection each),
   16 keep-alive clients, 8 slow requests (the client silent 20-28 s, then a 4 MiB body through a
   64 KiB receive buffer), 4 downloads of 50 MiB at 4 MiB/s, 8 idle keep-alive connections (silent
   25 s between requests; HAProxy's keep-alive timeout is 28 s);
2. at +8 s the third member joins (`KernelRouter.apply`), with keep-alive recycling on every member
   for 30 s (10 % of responses close their connection, as the scaler's lifecycle does; the 100/s
   conntrack run is repeated without it, for the request share);
3. the new member's share of new connections (short requests) and of all requests at +1, +2, +5 and
   +30 s (the 1 s load tick ending then), as a fraction of its fair share (1/3); the headline value
   averages the new-connection share over +1 and +2 s (a 1 s tick at 100/s holds ~100 connections:
   one tick alone is ±5 % of noise);
4. then a scale-in: the new member drained (router: weight 1 or out of the group; HAProxy: close
   keep-alive) until the router has nothing left for it (buckets or pinned flows) or 20 s, removed;
5. broken flows by kind over the whole run (the load generator's failures, by cause), the achieved
   rate, and router cost: conntrack entries and the kernel's softirq + system CPU during the run.

Value: the new member's share of new connections within 2 s as a fraction of its fair share, for the
conntrack mode; reference: the same for the resilient 128/5 s configuration at the same rate, in the
same run. Aim: ≥ 0.9 at every rate, 0 broken flows of every kind.

    python bench/bench_rebalance.py --out bench/results [--rates 100,1000,3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import machine

from actuators.haproxy_runtime import HAProxyRuntime
from actuators.kernel import pinning
from actuators.kernel.router import KernelRouter, KernelRouterConfig
from actuators.lab.orchestrator import LabOrchestrator
from actuators.orchestrator import Instance, InstanceSpec
from actuators.router import HopState, NextHop
from scaler.lab.network import LabConfig, LoadRun, lab_down, lab_up

KINDS = ("short", "keepalive", "slow", "download", "idle")
AT = (1, 2, 5, 30)


def kernel_cpu_s() -> float:
    """System + softirq CPU seconds of the whole machine (the router's forwarding and conntrack)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    hz = os.sysconf("SC_CLK_TCK")
    return (int(fields[3]) + int(fields[7])) / hz


def at2(run: dict[str, Any]) -> float:
    """The new member's share of new connections over +1 and +2 s, as a fraction of its fair share (1/3)."""
    v = [run["shares"][f"+{s}s"]["new_connections"] or 0.0 for s in (1, 2)]
    return round(sum(v) / len(v) * 3, 3)


def share(tick: dict[str, Any], member: str, kind: str | None) -> float | None:
    by_lb = (tick.get("kinds", {}).get(kind, {}) if kind else tick).get("by_lb") or {}
    total = sum(by_lb.values())
    return by_lb.get(member, 0) / total if total else None


async def one_run(mode: str, rate: int, recycle: bool) -> dict[str, Any]:
    lab = LabConfig(name=f"sclr{secrets.token_hex(1)}", keepalive_timeout_s=28)
    await lab_down(lab)
    await lab_up(lab)
    router = None
    try:
        orch = LabOrchestrator(lab.orchestrator_config())
        spec = InstanceSpec("web", lab.vip)
        members: list[Instance] = [await orch.create(spec, n) for n in ("a", "b", "c")]
        for _ in range(100):
            if all([await orch.probe(m) for m in members]):
                break
            await asyncio.sleep(0.1)
        a, b, c = members
        cfg = KernelRouterConfig(netns=lab.router_ns, mode=mode, buckets=128, idle_timer_s=5)  # type: ignore[arg-type]
        router = KernelRouter(cfg)

        def hops(*states: tuple[Instance, HopState]) -> dict[Any, frozenset[NextHop]]:
            return {lab.vip: frozenset(NextHop(m.address, s) for m, s in states if m.address)}

        await router.apply(hops((a, HopState.ACTIVE), (b, HopState.ACTIVE)))
        load = LoadRun(lab, short_rps=rate, short_concurrency=2048, keepalive_clients=16, slow_clients=8,
                       slow_delay_s=(20, 28), slow_bytes=4 << 20, downloads=4, download_bytes=50 << 20,
                       download_rate_bps=4 << 20, idle_clients=8, idle_pause_s=25, interval_s=1.0,
                       max_seconds=95, timeout_s=5.0, retry=False)
        await load.start()
        cpu0, wall0 = kernel_cpu_s(), time.monotonic()
        try:
            while len(load.ticks) < 8:
                await load.next_tick(10)
            runtimes = [HAProxyRuntime(m.endpoints["runtime_api"]) for m in (a, b, c)]
            if recycle:
                await asyncio.gather(*(r.recycle(10) for r in runtimes))
            await router.apply(hops((a, HopState.ACTIVE), (b, HopState.ACTIVE), (c, HopState.ACTIVE)))
            joined = len(load.ticks)           # ticks after this index end after the scale-out
            while len(load.ticks) < joined + 31:
                await load.next_tick(10)
            await asyncio.gather(*(r.recycle(0) for r in runtimes))
            after = load.ticks[joined:]
            shares = {f"+{s}s": {"new_connections": share(after[s - 1], "c", "short"),
                                 "requests": share(after[s - 1], "c", None)} for s in AT}
            counts = pinning.counts(lab.router_ns) if mode == "conntrack" else (0, 0)
            # Scale-in: drain c, wait until the router has nothing left for it, remove it.
            await HAProxyRuntime(c.endpoints["runtime_api"]).drain()
            await router.apply(hops((a, HopState.ACTIVE), (b, HopState.ACTIVE), (c, HopState.DRAINING)))
            t_drain = time.monotonic()
            left: int | None = None
            while time.monotonic() - t_drain < 20:
                hop = next((h for h in (await router.status(lab.vip)).hops if h.address == c.address), None)
                left = (hop.flows if hop and hop.flows is not None else hop.buckets if hop else 0)
                if not left:
                    break
                await asyncio.sleep(0.25)
            drain_s = time.monotonic() - t_drain
            await router.apply(hops((a, HopState.ACTIVE), (b, HopState.ACTIVE)))
            for _ in range(5):
                await load.next_tick(10)
        finally:
            summary = await load.stop()
        wall = time.monotonic() - wall0
        cpu = (kernel_cpu_s() - cpu0) / wall
        kinds = summary.get("kinds", {})
        achieved = kinds.get("short", {}).get("ok", 0) + kinds.get("short", {}).get("failed", 0)
        return {
            "mode": mode, "rate": rate, "recycle": recycle, "shares": shares,
            "achieved_new_connections_per_s": round(achieved / summary.get("elapsed_s", wall), 1),
            "broken": {k: {"failed": kinds.get(k, {}).get("failed", 0), "ok": kinds.get(k, {}).get("ok", 0),
                           "failures": kinds.get(k, {}).get("failures", {})} for k in KINDS},
            "drain": {"seconds": round(drain_s, 2), "left_at_removal": left},
            "router": {"conntrack_entries": counts[0], "conntrack_max": counts[1],
                       "kernel_cpu_cores": round(cpu, 3)},
        }
    finally:
        if router is not None:
            await router.close()
        await lab_down(lab)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--rates", default="100,1000,3000")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rates = [int(r) for r in args.rates.split(",")]
    runs: list[dict[str, Any]] = []
    for rate in rates:
        ref = await one_run("resilient", rate, recycle=False)
        new = await one_run("conntrack", rate, recycle=True)
        runs += [ref, new]
        extra = None
        if rate == rates[0]:
            extra = await one_run("conntrack", rate, recycle=False)
            runs.append(extra)

        doc = {"name": f"rebalance_{rate}", "value": at2(new), "unit": "fraction of fair share at +2 s",
               "reference": at2(ref), "ratio": round(at2(new) / at2(ref), 2) if at2(ref) else None,
               "aim": ">= 0.9 of the fair share within 2 s; 0 broken flows of every kind",
               "conntrack": new, "resilient_128_5s": ref, "machine": machine()}
        if extra is not None:
            doc["conntrack_without_recycle"] = extra
        (args.out / f"rebalance_{rate}.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc, indent=2), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
