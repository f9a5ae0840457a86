"""Scale-out and scale-in under every flow kind, kernel router in conntrack mode, real HAProxy members:
the new member gets its share of new connections at once, and no flow of any kind breaks — short
requests, keep-alive clients, slow responses after a client silence (large body through a small
receive buffer), large downloads, idle keep-alive connections. Small rates and short silences so it
runs in `make test`; bench/bench_rebalance.py runs the full rates against the resilient reference."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from actuators.haproxy_runtime import HAProxyRuntime
from actuators.kernel.router import KernelRouter, KernelRouterConfig
from actuators.lab.orchestrator import LabOrchestrator
from actuators.orchestrator import Instance, InstanceSpec
from actuators.router import HopState, NextHop
from scaler.lab.network import LabConfig, LoadRun, lab_down, lab_namespaces, lab_up
from tests.support.wait import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed"),
]

KINDS = ("short", "keepalive", "slow", "download", "idle")


@pytest.fixture
async def lab() -> AsyncIterator[LabConfig]:
    cfg = LabConfig(name=f"sclb{secrets.token_hex(1)}", keepalive_timeout_s=10)
    await lab_down(cfg)
    try:
        await lab_up(cfg)
        yield cfg
    finally:
        await lab_down(cfg)
        assert lab_namespaces(cfg) == []


async def test_scale_out_and_in_break_no_flow_of_any_kind(lab: LabConfig) -> None:
    orch = LabOrchestrator(lab.orchestrator_config())
    a, b, c = [await orch.create(InstanceSpec("web", lab.vip), n) for n in ("a", "b", "c")]

    async def serving() -> bool:
        return all([await orch.probe(m) for m in (a, b, c)])
    await eventually(serving, timeout_s=20, what="three lab members serve")
    router = KernelRouter(KernelRouterConfig(netns=lab.router_ns, mode="conntrack"))

    def hops(*states: tuple[Instance, HopState]) -> dict[Any, frozenset[NextHop]]:
        return {lab.vip: frozenset(NextHop(m.address, s) for m, s in states if m.address)}

    load = LoadRun(lab, short_rps=40, keepalive_clients=4, slow_clients=3, slow_delay_s=(6, 8),
                   slow_bytes=4 << 20, downloads=2, download_bytes=60 << 20, download_rate_bps=4 << 20,
                   idle_clients=3, idle_pause_s=6, interval_s=1.0, max_seconds=40, timeout_s=5, retry=False)
    try:
        await router.apply(hops((a, HopState.ACTIVE), (b, HopState.ACTIVE)))
        await load.start()
        while len(load.ticks) < 3:            # slow and idle flows are now silent, downloads running
            await load.next_tick(10)
        await router.apply(hops((a, HopState.ACTIVE), (b, HopState.ACTIVE), (c, HopState.ACTIVE)))
        joined = len(load.ticks)
        while len(load.ticks) < joined + 3:
            await load.next_tick(10)
        first = load.ticks[joined + 1]["kinds"]["short"]["by_lb"]
        assert first.get("c", 0) >= 0.2 * sum(first.values()), first     # its share of new flows at once
        await asyncio.sleep(6)               # silences end on whichever member each flow started
        await HAProxyRuntime(c.endpoints["runtime_api"]).drain()
        await router.apply(hops((a, HopState.ACTIVE), (b, HopState.ACTIVE), (c, HopState.DRAINING)))
        t0 = time.monotonic()

        async def drained() -> bool:
            hop = next(h for h in (await router.status(lab.vip)).hops if h.address == c.address)
            return hop.flows == 0
        await eventually(drained, timeout_s=30, interval_s=0.25, what="member c drained (pinned flows 0)")
        print(f"drained in {time.monotonic() - t0:.1f} s")
        await router.apply(hops((a, HopState.ACTIVE), (b, HopState.ACTIVE)))
        for _ in range(3):
            await load.next_tick(10)
    finally:
        summary = await load.stop()
        await router.close()
    kinds = summary["kinds"]
    print({k: (kinds[k]["ok"], kinds[k]["failed"]) for k in KINDS})
    for kind in KINDS:
        assert kinds[kind]["ok"] > 0, (kind, kinds[kind])
        assert kinds[kind]["failed"] == 0, (kind, kinds[kind]["failures"])
