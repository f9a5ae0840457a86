"""The lifecycle against the fake orchestrator and router: steps, persistence, resume after a crash."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter, FakeRouterConfig
from actuators.orchestrator import InstanceSpec
from actuators.router import HopState
from scaler.config import PoolConfig
from scaler.lifecycle import Lifecycle
from scaler.metrics import Metrics
from scaler.store import MemberState, OpState, Store

VIP = IPv4Address("198.19.0.1")


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class CountingDrainer:
    def __init__(self, conns: int | None = 0) -> None:
        self.drained: list[str] = []
        self.conns = conns

    async def drain(self, endpoints: Mapping[str, str]) -> None:
        self.drained.append(endpoints.get("metrics_url", "?"))

    async def connections(self, endpoints: Mapping[str, str]) -> int | None:
        return self.conns


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path}/s.db")
    s.migrate()
    s.ensure_pool("web", str(VIP), 0)
    yield s
    s.close()


def make(store: Store, orch: FakeOrchestrator, router: FakeRouter, clock: Clock,
         drainer: CountingDrainer | None = None, **pool: object) -> Lifecycle:
    cfg = PoolConfig.model_validate({"vip": str(VIP), "boot_timeout": "60s", "drain_timeout": "30s", **pool})
    return Lifecycle(store, orch, router, drainer or CountingDrainer(), {"web": cfg}, Metrics(), clock)


def states(store: Store) -> list[str]:
    return [m.state for m in store.members("web", include_deleted=True)]


async def test_scale_out_goes_through_every_state_and_routes_only_when_healthy(store: Store) -> None:
    clock, orch, router = Clock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=1)), FakeRouter()
    lc = make(store, orch, router, clock)
    op = store.start_scale_out("web", 2, 0, "below min", clock())
    await lc.reconcile()
    assert states(store) == ["booting", "booting"]
    assert router.hops(VIP) == set()                       # booting members are never routed
    await lc.reconcile()                                   # first probe: not yet
    assert states(store) == ["booting", "booting"]
    await lc.reconcile()                                   # healthy → announcing → routed in the same pass
    assert states(store) == ["in_service", "in_service"]
    assert len(router.hops(VIP)) == 2 and len(router.batches) == 1
    assert store.running_operation("web") is None
    assert store.operations("web")[0].id == op.id and store.operations("web")[0].state == OpState.DONE
    assert store.pool("web").last_scale_out_at == clock()
    steps = [s.name for s in store.steps(op.id)]
    assert steps.count("in_service") == 2
    order = ["creating", "booting", "healthy", "announcing", "in_service"]
    assert [steps.index(n) for n in order] == sorted(steps.index(n) for n in order)


async def test_scale_in_drains_then_withdraws_then_deletes(store: Store) -> None:
    clock, orch = Clock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0))
    router, drainer = FakeRouter(FakeRouterConfig(drain_buckets=3)), CountingDrainer(conns=2)
    lc = make(store, orch, router, clock, drainer)
    store.start_scale_out("web", 2, 0, "below min", clock())
    for _ in range(3):
        await lc.reconcile()
    victim = store.members("web")[-1]
    store.start_scale_in("web", [victim], 2, "idle", clock())
    await lc.reconcile()
    assert router.routes[VIP][IPv4Address(victim.address)] is HopState.DRAINING
    assert len(drainer.drained) == 1
    clock.t += 5
    await lc.reconcile()                                   # buckets and connections left: keep waiting
    assert store.member(victim.id).state == MemberState.DRAINING
    router.config.drain_buckets, drainer.conns = 0, 0
    await lc.reconcile()                                   # drained → withdrawn → route removed → deleting
    assert store.member(victim.id).state == MemberState.DELETING
    assert IPv4Address(victim.address) not in router.hops(VIP)
    assert len(drainer.drained) == 1                       # asked once, not every pass
    steps = [s.name for s in store.steps(store.member(victim.id).op_id)]
    assert steps == ["draining", "drain_haproxy", "withdrawn", "deleting"]
    await lc.reconcile()
    assert store.member(victim.id).state == MemberState.DELETED
    assert IPv4Address(victim.address) not in router.hops(VIP)
    assert victim.instance not in orch.instances
    assert store.running_operation("web") is None


async def test_drain_deadline_withdraws_anyway(store: Store) -> None:
    clock, orch = Clock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0))
    router, drainer = FakeRouter(FakeRouterConfig(drain_buckets=5)), CountingDrainer(conns=4)
    lc = make(store, orch, router, clock, drainer)
    store.start_scale_out("web", 1, 0, "below min", clock())
    for _ in range(3):
        await lc.reconcile()
    store.start_scale_in("web", store.members("web"), 1, "test", clock())
    await lc.reconcile()
    clock.t += 31
    await lc.reconcile()
    m = store.members("web")[0]
    assert m.state == MemberState.DELETING
    assert "deadline" in next(s.detail for s in store.steps(m.op_id) if s.name == "withdrawn")


async def test_never_healthy_fails_and_is_cleaned_up(store: Store) -> None:
    clock, orch, router = Clock(), FakeOrchestrator(), FakeRouter()
    lc = make(store, orch, router, clock)
    op = store.start_scale_out("web", 1, 0, "below min", clock())
    orch.never_healthy.add(store.members("web")[0].instance)
    await lc.reconcile()
    clock.t += 61
    await lc.reconcile()
    assert states(store) == ["failed"]
    await lc.reconcile()
    await lc.reconcile()
    assert states(store) == ["deleted"]
    assert orch.instances == {}
    assert store.operations("web")[0].state == OpState.FAILED
    assert "not healthy after 1m" in (store.operations("web")[0].error or "")
    assert router.batches == []                            # it was never routed
    assert op.id


async def test_create_error_fails_the_member_and_leaves_nothing(store: Store) -> None:
    clock, orch, router = Clock(), FakeOrchestrator(), FakeRouter()
    lc = make(store, orch, router, clock)
    store.start_scale_out("web", 1, 0, "below min", clock())
    orch.fail_create.add(store.members("web")[0].instance)
    for _ in range(3):
        await lc.reconcile()
    assert states(store) == ["deleted"]
    assert "quota exceeded" in (store.operations("web")[0].error or "")
    assert orch.instances == {}


async def test_a_new_lifecycle_resumes_where_a_crashed_one_stopped(store: Store) -> None:
    """The fakes stand for the world; a new Lifecycle is a restarted scaler on the same store."""
    clock, orch, router = Clock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), FakeRouter()
    store.start_scale_out("web", 1, 0, "below min", clock())
    await make(store, orch, router, clock).reconcile()     # created, then "killed"
    assert states(store) == ["booting"]
    name = store.members("web")[0].instance
    # A crash between create() and persisting booting would re-run create: it must find the instance.
    await orch.create(InstanceSpec("web", VIP), name)
    lc2 = make(store, orch, router, clock)
    for _ in range(3):
        await lc2.reconcile()
    assert states(store) == ["in_service"]
    assert list(orch.instances) == [name]


async def test_router_down_blocks_route_dependent_steps_but_loses_nothing(store: Store) -> None:
    clock, orch, router = Clock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), FakeRouter()
    lc = make(store, orch, router, clock)
    store.start_scale_out("web", 1, 0, "below min", clock())
    await lc.reconcile()
    router.fail = True
    await lc.reconcile()
    assert states(store) == ["announcing"]                 # healthy, but the route could not be applied
    await lc.reconcile()
    assert states(store) == ["announcing"]
    assert any("router unreachable" in e.message for e in store.events("web"))
    router.fail = False
    await lc.reconcile()
    assert states(store) == ["in_service"]
