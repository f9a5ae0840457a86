"""Benchmark: a member becomes healthy → its next hop is in the router's kernel (the whole lifecycle path).

The lifecycle runs as in the service: a real SQLite store (every transition persisted before the
next side effect), the real `kernel` router driver programming a resilient group over netlink in a
namespace made for the run, and the fake orchestrator (the instance is not what is measured). Each
run adds one member; the time is from the persisted `healthy` step to the moment a second netlink
socket sees the member's nexthop in the VIP's group. Groups grow from 1 to --runs members.

    python bench/bench_announce.py --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernel_router import make_router_ns, sh_quiet, summary, write

from actuators.drainer import NoDrainer
from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig
from actuators.kernel import netlink as nl
from actuators.kernel.router import KernelRouter, KernelRouterConfig
from scaler.config import PoolConfig
from scaler.lifecycle import Lifecycle
from scaler.metrics import Metrics
from scaler.store import MemberState, Store

VIP = IPv4Address("198.19.0.1")


async def bench(ns: str, out: Path, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/bench.db")
        store.migrate()
        store.ensure_pool("web", str(VIP), time.time())
        router = KernelRouter(KernelRouterConfig(netns=ns))
        orch = FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0, subnet="198.18.1."))
        pools = {"web": PoolConfig.model_validate({"vip": str(VIP)})}
        lc = Lifecycle(store, orch, router, NoDrainer(), pools, Metrics())
        probe = nl.NetlinkClient(ns)
        samples: list[float] = []
        try:
            for _ in range(runs):
                store.start_scale_out("web", 1, len(samples), "bench", time.time())
                await lc.reconcile()                          # creating → booting
                await lc.reconcile()                          # healthy → announcing → routed → in_service
                member = store.members("web")[-1]
                assert member.state == MemberState.IN_SERVICE, member.state
                while True:
                    group = probe.nexthop(int(VIP))
                    if group is not None and any(m.id == int(IPv4Address(member.address or "0.0.0.0"))
                                                 for m in group.group):
                        seen = time.time()
                        break
                healthy = next(s.at for s in store.steps(member.op_id) if s.name == MemberState.HEALTHY)
                samples.append((seen - healthy) * 1000)
        finally:
            probe.close()
            await router.close()
            store.close()
    s = summary(samples)
    write(out, {"name": "healthy_to_fib", "value": s["median"], "unit": "ms", "runs": runs, **s,
                "what": "persisted healthy step → nexthop in the VIP's kernel group (SQLite store, netlink)"})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args()
    ns = f"sclk{secrets.token_hex(2)}a"
    make_router_ns(ns)
    try:
        asyncio.run(bench(ns, args.out, args.runs))
    finally:
        sh_quiet("ip", "netns", "del", ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
