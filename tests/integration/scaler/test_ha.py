"""Two and three `scaler run` processes on one real PostgreSQL, driving the same lab (kernel router):
one leads; after a SIGKILL or a SIGSTOP of the leader another takes over; the router's FIB does not
change during a takeover; a resumed frozen leader does not act; every decision is carried out once.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actuators.lab.orchestrator import LabOrchestrator
from scaler.lab.demo import ServiceProcess, fib_next_hops
from scaler.lab.network import LabConfig, lab_down, lab_namespaces, lab_up
from tests.support.ha import own_scaler_config, role, settled
from tests.support.wait import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

POLICY = """\
pools:
  web:
    min: {n}
    max: 5
    inputs:
      sessions: {{source: haproxy, metric: current_sessions, aggregate: avg}}
    rules:
      - {{name: busy, input: sessions, above: 100000, for: 1m, adjust: +1}}
"""


@pytest.fixture
async def lab() -> AsyncIterator[LabConfig]:
    cfg = LabConfig(name=f"sclz{secrets.token_hex(1)}")
    await lab_down(cfg)
    try:
        await lab_up(cfg)
        yield cfg
    finally:
        await lab_down(cfg)
        assert lab_namespaces(cfg) == []


def scaler_config(lab: LabConfig, db_url: str, name: str, policy: Path) -> tuple[Path, int]:
    """The lab's example config on PostgreSQL with a 1 s lease, in its own directory with its own port."""
    return own_scaler_config(lab, name, policy, {"intervals.reconcile": "300ms", "store.url": db_url,
                                                 "ha": {"lease": "1s"}})


class FibWatch:
    """Polls the router's FIB every 20 ms and records every set of next hops it sees."""

    def __init__(self, lab: LabConfig) -> None:
        self.lab = lab
        self.seen: list[set[str]] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            hops = await fib_next_hops(self.lab.router_ns, str(self.lab.vip))
            if not self.seen or self.seen[-1] != hops:
                self.seen.append(hops)
            await asyncio.sleep(0.02)

    async def stop(self) -> list[set[str]]:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        return self.seen


async def test_takeover_after_sigkill_and_sigstop_without_double_action_or_route_flap(
        lab: LabConfig, postgres_url: str) -> None:
    policy = lab.lab_dir / "ha-policies" / "web.yaml"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(POLICY.format(n=2))
    procs: list[ServiceProcess] = []
    try:
        a = ServiceProcess(*scaler_config(lab, postgres_url, "a", policy))
        b = ServiceProcess(*scaler_config(lab, postgres_url, "b", policy))
        procs += [a, b]
        await asyncio.gather(a.start(), b.start())
        await eventually(lambda: _one_leader(procs), timeout_s=20, interval_s=0.1, what="one leader")
        lead, follower = await _split(procs)
        members = await settled(lead, 2)
        orch = LabOrchestrator(lab.orchestrator_config())
        assert len(await orch.list("web")) == 2
        watch = FibWatch(lab)

        # 1. SIGKILL the leader: the follower takes over; nothing is created or routed twice.
        assert lead.proc is not None
        t0 = time.monotonic()
        lead.proc.send_signal(signal.SIGKILL)
        await lead.proc.wait()
        await eventually(lambda: _is_leader(follower), timeout_s=20, interval_s=0.05, what="takeover",
                         detail=follower.tail)
        print(f"takeover after SIGKILL: {time.monotonic() - t0:.2f} s")
        await asyncio.sleep(2)
        assert {m["instance"] for m in await settled(follower, 2)} == {m["instance"] for m in members}
        assert len(await orch.list("web")) == 2

        # 2. A third scaler joins; SIGSTOP the leader; the policy asks for 3 while it is frozen.
        c = ServiceProcess(*scaler_config(lab, postgres_url, "c", policy))
        procs.append(c)
        await c.start()
        assert follower.proc is not None
        t0 = time.monotonic()
        follower.proc.send_signal(signal.SIGSTOP)
        await eventually(lambda: _is_leader(c), timeout_s=20, interval_s=0.05, what="takeover", detail=c.tail)
        print(f"takeover after SIGSTOP: {time.monotonic() - t0:.2f} s")
        policy.write_text(POLICY.format(n=3))
        await settled(c, 3)
        follower.proc.send_signal(signal.SIGCONT)      # the frozen leader resumes with its old state
        await eventually(lambda: _role_is(follower, "follower"), timeout_s=20, interval_s=0.1,
                         what="the resumed leader knows it is not one", detail=follower.tail)
        await asyncio.sleep(2)
        assert len(await orch.list("web")) == 3, "an instance was created twice"
        assert len(await settled(c, 3)) == 3
        seen = await watch.stop()
        # The FIB changed only for the scale-out: 2 hops, then 3, never fewer.
        assert [len(s) for s in seen] == [2, 3], seen
    finally:
        for p in procs:
            if p.proc is not None and p.proc.returncode is None:
                p.proc.send_signal(signal.SIGCONT)
            await p.stop()


async def _one_leader(procs: list[ServiceProcess]) -> bool:
    roles = [await role(p) for p in procs]
    return roles.count("leader") == 1 and roles.count("follower") == len(procs) - 1


async def _split(procs: list[ServiceProcess]) -> tuple[ServiceProcess, ServiceProcess]:
    roles = [await role(p) for p in procs]
    return procs[roles.index("leader")], procs[roles.index("follower")]


async def _is_leader(p: ServiceProcess) -> bool:
    return await role(p) == "leader"


async def _role_is(p: ServiceProcess, want: str) -> bool:
    return await role(p) == want
