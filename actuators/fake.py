"""In-memory orchestrator and router: real implementations of the interfaces, configured to behave.

For unit tests of the lifecycle and for dry runs. They keep the contracts of the real drivers
(idempotent create/delete by name, desired-state apply with diff) and can be told to fail or to be
slow, so tests exercise the caller's error paths without patching anything. The router can also
be told to drain like a BGP router (`FakeRouterConfig.drain_mode`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from pydantic import BaseModel, ConfigDict

from actuators.errors import OrchestratorError, RouterError
from actuators.orchestrator import Instance, InstanceSpec
from actuators.router import ApplyResult, DesiredRoutes, DrainMode, HopState, HopStatus, NextHop, Router, RouteStatus


class FakeOrchestratorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    boot_probes: int = 1          # probes answering False before an instance answers True
    subnet: str = "10.250.0."


@dataclass
class FakeOrchestrator:
    config: FakeOrchestratorConfig = field(default_factory=FakeOrchestratorConfig)
    instances: dict[str, Instance] = field(default_factory=dict)
    probes: dict[str, int] = field(default_factory=dict)
    fail_create: set[str] = field(default_factory=set)      # names whose create raises
    never_healthy: set[str] = field(default_factory=set)    # names whose probe stays False
    calls: list[tuple[str, str]] = field(default_factory=list)
    _next: int = 1

    async def create(self, spec: InstanceSpec, name: str) -> Instance:
        self.calls.append(("create", name))
        if name in self.fail_create:
            raise OrchestratorError(f"create {name}: quota exceeded (fake)")
        if name not in self.instances:
            addr = IPv4Address(self.config.subnet + str(self._next))
            self._next += 1
            self.instances[name] = Instance(name, spec.pool, addr, "active",
                                            {"metrics_url": f"http://{addr}:8404/metrics"})
        return self.instances[name]

    async def probe(self, instance: Instance) -> bool:
        if instance.name in self.never_healthy or instance.name not in self.instances:
            return False
        self.probes[instance.name] = self.probes.get(instance.name, 0) + 1
        return self.probes[instance.name] > self.config.boot_probes

    async def delete(self, name: str) -> None:
        self.calls.append(("delete", name))
        self.instances.pop(name, None)

    async def list(self, pool: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.pool == pool]

    async def close(self) -> None:
        return None


class FakeRouterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drain_buckets: int = 0        # buckets a draining hop keeps (0: drained at once)
    # Set: report a draining hop's pinned flows instead of buckets (the kernel driver's conntrack mode).
    drain_flows: int | None = None
    # WITHDRAW behaves like a BGP router: no weights, so DRAINING is held and reported as ACTIVE
    # and no hop has a bucket count.
    drain_mode: DrainMode = DrainMode.WEIGHT


@dataclass
class FakeRouter(Router):
    config: FakeRouterConfig = field(default_factory=FakeRouterConfig)
    routes: dict[IPv4Address, dict[IPv4Address, HopState]] = field(default_factory=dict)
    batches: list[ApplyResult] = field(default_factory=list)
    fail: bool = False
    drain_mode: DrainMode = field(init=False)

    def __post_init__(self) -> None:
        self.drain_mode = self.config.drain_mode

    async def apply(self, desired: DesiredRoutes) -> ApplyResult:
        if self.fail:
            raise RouterError("apply: router unreachable (fake)")
        added, removed, reweighted = [], [], []
        for vip, hops in desired.items():
            have = self.routes.get(vip, {})
            want = {h.address: self._held(h.state) for h in hops}
            added += [(vip, a) for a in want if a not in have]
            removed += [(vip, a) for a in have if a not in want]
            reweighted += [(vip, a) for a in want if a in have and have[a] != want[a]]
            if want:
                self.routes[vip] = want
            else:
                self.routes.pop(vip, None)
        result = ApplyResult(tuple(added), tuple(removed), tuple(reweighted),
                             messages=len(added) + len(removed) + len(reweighted))
        if result.changed:
            self.batches.append(result)
        return result

    async def status(self, vip: IPv4Address) -> RouteStatus:
        if self.fail:
            raise RouterError(f"status {vip}: router unreachable (fake)")
        hops = self.routes.get(vip, {})
        if self.drain_mode is DrainMode.WITHDRAW:
            return RouteStatus(vip, tuple(HopStatus(a, s, None) for a, s in sorted(hops.items())))
        if self.config.drain_flows is not None:
            return RouteStatus(vip, tuple(
                HopStatus(a, s, None, self.config.drain_flows if s is HopState.DRAINING else None)
                for a, s in sorted(hops.items())))
        return RouteStatus(vip, tuple(
            HopStatus(a, s, self.config.drain_buckets if s is HopState.DRAINING else 64)
            for a, s in sorted(hops.items())))

    def _held(self, state: HopState) -> HopState:
        # A router without weights cannot tell a draining hop from an active one.
        return HopState.ACTIVE if self.drain_mode is DrainMode.WITHDRAW else state

    async def replay(self, desired: DesiredRoutes) -> ApplyResult:
        return await self.apply(desired)

    async def close(self) -> None:
        return None

    def hops(self, vip: IPv4Address) -> set[IPv4Address]:
        return set(self.routes.get(vip, {}))


def desired_of(pairs: Iterable[tuple[IPv4Address, IPv4Address, HopState]]) -> dict[IPv4Address, frozenset[NextHop]]:
    out: dict[IPv4Address, set[NextHop]] = {}
    for vip, addr, state in pairs:
        out.setdefault(vip, set()).add(NextHop(addr, state))
    return {k: frozenset(v) for k, v in out.items()}
