"""The lifecycle against the fake orchestrator and router: steps, persistence, resume after a crash."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address

import pytest
from pydantic import ValidationError

from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter, FakeRouterConfig
from actuators.orchestrator import InstanceSpec
from actuators.router import ApplyResult, DesiredRoutes, DrainMode, HopState, Router, RouteStatus
from scaler.config import PoolConfig
from scaler.lifecycle import Lifecycle
from scaler.metrics import Metrics
from scaler.store import MemberState, OpState, Store
from tests.support import rows
from tests.support.clock import ManualClock

STORE_ENGINES = ("sqlite", "postgresql")          # tests/conftest.py

VIP = IPv4Address("198.19.0.1")


class CountingDrainer:
    def __init__(self, conns: int | None = 0) -> None:
        self.drained: list[str] = []
        self.conns = conns
        self.recycled: dict[str, int] = {}

    async def drain(self, endpoints: Mapping[str, str]) -> None:
        self.drained.append(endpoints.get("metrics_url", "?"))

    async def connections(self, endpoints: Mapping[str, str]) -> int | None:
        return self.conns

    async def recycle(self, endpoints: Mapping[str, str], percent: int) -> None:
        self.recycled[endpoints.get("metrics_url", "?")] = percent


@pytest.fixture
def store(store: Store) -> Store:
    """The shared store (tests/conftest.py) with the pool."""
    store.ensure_pool("web", str(VIP), 0)
    return store


def make(store: Store, orch: FakeOrchestrator, router: Router, clock: ManualClock,
         drainer: CountingDrainer | None = None, **pool: object) -> Lifecycle:
    cfg = PoolConfig.model_validate({"vip": str(VIP), "boot_timeout": "60s", "drain_timeout": "30s", **pool})
    return Lifecycle(store, orch, router, drainer or CountingDrainer(), {"web": cfg}, Metrics(), clock)


def states(store: Store) -> list[str]:
    return [m.state for m in store.members("web", include_deleted=True)]


async def test_scale_out_goes_through_every_state_and_routes_only_when_healthy(store: Store) -> None:
    clock, orch, router = ManualClock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=1)), FakeRouter()
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
    assert rows.pool(store, "web").last_scale_out_at == clock()
    steps = [s.name for s in store.steps(op.id)]
    assert steps.count("in_service") == 2
    order = ["creating", "booting", "healthy", "announcing", "in_service"]
    assert [steps.index(n) for n in order] == sorted(steps.index(n) for n in order)


async def test_scale_in_drains_then_withdraws_then_deletes(store: Store) -> None:
    clock, orch = ManualClock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0))
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
    clock.advance(5)
    await lc.reconcile()                                   # buckets and connections left: keep waiting
    assert rows.member(store, victim.id).state == MemberState.DRAINING
    router.config.drain_buckets, drainer.conns = 0, 0
    await lc.reconcile()                                   # drained → withdrawn → route removed → deleting
    assert rows.member(store, victim.id).state == MemberState.DELETING
    assert IPv4Address(victim.address) not in router.hops(VIP)
    assert len(drainer.drained) == 1                       # asked once, not every pass
    steps = [s.name for s in store.steps(rows.member(store, victim.id).op_id)]
    assert steps == ["draining", "drain_haproxy", "withdrawn", "deleting"]
    await lc.reconcile()
    assert rows.member(store, victim.id).state == MemberState.DELETED
    assert IPv4Address(victim.address) not in router.hops(VIP)
    assert victim.instance not in orch.instances
    assert store.running_operation("web") is None


async def test_drain_deadline_withdraws_anyway(store: Store) -> None:
    clock, orch = ManualClock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0))
    router, drainer = FakeRouter(FakeRouterConfig(drain_buckets=5)), CountingDrainer(conns=4)
    lc = make(store, orch, router, clock, drainer)
    store.start_scale_out("web", 1, 0, "below min", clock())
    for _ in range(3):
        await lc.reconcile()
    store.start_scale_in("web", store.members("web"), 1, "test", clock())
    await lc.reconcile()
    clock.advance(31)
    await lc.reconcile()
    m = store.members("web")[0]
    assert m.state == MemberState.DELETING
    assert "deadline" in next(s.detail for s in store.steps(m.op_id) if s.name == "withdrawn")


async def test_never_healthy_fails_and_is_cleaned_up(store: Store) -> None:
    clock, orch, router = ManualClock(), FakeOrchestrator(), FakeRouter()
    lc = make(store, orch, router, clock)
    op = store.start_scale_out("web", 1, 0, "below min", clock())
    orch.never_healthy.add(store.members("web")[0].instance)
    await lc.reconcile()
    clock.advance(61)
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
    clock, orch, router = ManualClock(), FakeOrchestrator(), FakeRouter()
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
    clock, orch, router = ManualClock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), FakeRouter()
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
    clock, orch, router = ManualClock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), FakeRouter()
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


# --- drain by withdrawing: routers without weights (BGP) ------------------------------------------


class RouteWatchingDrainer(CountingDrainer):
    """Records, at each drain request, whether the member's route was still in the router."""

    def __init__(self, router: FakeRouter, conns: int | None = 0) -> None:
        super().__init__(conns)
        self.router = router
        self.routed_at_request: list[bool] = []

    async def drain(self, endpoints: Mapping[str, str]) -> None:
        await super().drain(endpoints)
        addr = IPv4Address(endpoints["metrics_url"].split("//")[1].split(":")[0])
        self.routed_at_request.append(addr in self.router.hops(VIP))


class RouterWithoutDrainMode(Router):
    """A router driver that does not set `drain_mode`: the protocol's default drains it by weight."""

    def __init__(self, inner: FakeRouter) -> None:
        self.inner = inner

    async def apply(self, desired: DesiredRoutes) -> ApplyResult:
        return await self.inner.apply(desired)

    async def status(self, vip: IPv4Address) -> RouteStatus:
        return await self.inner.status(vip)

    async def replay(self, desired: DesiredRoutes) -> ApplyResult:
        return await self.inner.replay(desired)

    async def close(self) -> None:
        await self.inner.close()


async def serve_two_and_drain_one(store: Store, lc: Lifecycle, clock: ManualClock) -> str:
    """Two members in service, then a scale-in of the newest; returns its id. No pass run after."""
    store.start_scale_out("web", 2, 0, "below min", clock())
    for _ in range(3):
        await lc.reconcile()
    assert states(store) == ["in_service", "in_service"]
    victim = store.members("web")[-1]
    store.start_scale_in("web", [victim], 2, "idle", clock())
    return victim.id


def withdrawn_detail(store: Store, member_id: str) -> str:
    m = rows.member(store, member_id)
    return next(s.detail for s in store.steps(m.op_id) if s.member_id == member_id and s.name == "withdrawn")


def drain_observations(lc: Lifecycle) -> tuple[float | None, float | None]:
    r = lc.metrics.registry
    return (r.get_sample_value("scaler_drain_seconds_count", {"pool": "web"}),
            r.get_sample_value("scaler_drain_seconds_sum", {"pool": "web"}))


@pytest.mark.parametrize(("pool", "conns", "withdraw_at", "detail"), [
    pytest.param({"drain_grace": "10s"}, 3, 10.0,
                 "grace 10s over: withdrawn with 3 connections still open (the withdraw resets them)",
                 id="grace over with connections open: withdrawn, the detail says how many are reset"),
    pytest.param({}, 1, 5.0, "grace 5s over: withdrawn with 1 connection still open (the withdraw resets them)",
                 id="default grace is 5s"),
    pytest.param({}, None, 5.0, "grace 5s over: withdrawn; HAProxy's open connections unknown",
                 id="connection count unknown: withdrawn at the grace"),
    pytest.param({"drain_timeout": "2s"}, 3, 2.0,
                 "drain deadline 2s reached: withdrawn with 3 connections still open (the withdraw resets them)",
                 id="drain_timeout shorter than the default grace wins"),
])
async def test_withdraw_mode_withdraws_after_the_grace_not_before(store: Store, pool: dict[str, str],
                                                                  conns: int | None, withdraw_at: float,
                                                                  detail: str) -> None:
    clock, orch = ManualClock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0))
    router = FakeRouter(FakeRouterConfig(drain_mode=DrainMode.WITHDRAW))
    drainer = CountingDrainer(conns=conns)
    lc = make(store, orch, router, clock, drainer, **pool)
    victim = await serve_two_and_drain_one(store, lc, clock)
    addr = IPv4Address(rows.member(store, victim).address)
    start = clock()
    await lc.reconcile()                                   # HAProxy asked; still routed, full share
    assert rows.member(store, victim).state == MemberState.DRAINING and addr in router.hops(VIP)
    assert len(drainer.drained) == 1
    clock.now = start + withdraw_at - 0.5
    await lc.reconcile()                                   # connections open, grace not over: keep it
    assert rows.member(store, victim).state == MemberState.DRAINING and addr in router.hops(VIP)
    assert drain_observations(lc) == (None, None)
    clock.now = start + withdraw_at
    await lc.reconcile()                                   # withdrawn → route removed → deleting
    assert rows.member(store, victim).state == MemberState.DELETING
    assert addr not in router.hops(VIP)
    assert detail in withdrawn_detail(store, victim)
    assert drain_observations(lc) == (1.0, withdraw_at)
    assert len(drainer.drained) == 1                       # asked once, not every pass


async def test_withdraw_mode_withdraws_at_once_when_no_connection_is_left(store: Store) -> None:
    clock, orch = ManualClock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0))
    router, drainer = FakeRouter(FakeRouterConfig(drain_mode=DrainMode.WITHDRAW)), CountingDrainer(conns=4)
    lc = make(store, orch, router, clock, drainer, drain_grace="20s")
    victim = await serve_two_and_drain_one(store, lc, clock)
    await lc.reconcile()
    assert rows.member(store, victim).state == MemberState.DRAINING
    clock.advance(2)
    drainer.conns = 0                                      # the keep-alive clients went elsewhere
    await lc.reconcile()
    assert rows.member(store, victim).state == MemberState.DELETING
    assert IPv4Address(rows.member(store, victim).address) not in router.hops(VIP)
    assert withdrawn_detail(store, victim) == "no connections left after 2s: withdrawn"


async def test_withdraw_mode_asks_haproxy_first_and_gives_the_grace_from_then(store: Store) -> None:
    """The request comes before the withdraw, while the member is still routed. A scaler that
    comes back 7s after the scale-in (grace 5s) asks HAProxy then, and withdraws 5s later."""
    clock, orch = ManualClock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0))
    router = FakeRouter(FakeRouterConfig(drain_mode=DrainMode.WITHDRAW))
    drainer = RouteWatchingDrainer(router, conns=2)
    lc = make(store, orch, router, clock, drainer)
    victim = await serve_two_and_drain_one(store, lc, clock)
    start = clock()
    clock.now = start + 7
    await lc.reconcile()
    assert drainer.routed_at_request == [True]
    assert rows.member(store, victim).state == MemberState.DRAINING
    clock.now = start + 11
    await lc.reconcile()
    assert rows.member(store, victim).state == MemberState.DRAINING
    clock.now = start + 12
    await lc.reconcile()
    assert rows.member(store, victim).state == MemberState.DELETING
    assert "grace 5s over: withdrawn with 2 connections" in withdrawn_detail(store, victim)
    steps = [s.name for s in store.steps(rows.member(store, victim).op_id)]
    assert steps == ["draining", "drain_haproxy", "withdrawn", "deleting"]
    assert drainer.routed_at_request == [True]


async def test_withdraw_mode_waits_while_the_router_cannot_be_read(store: Store) -> None:
    clock, orch = ManualClock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0))
    router, drainer = FakeRouter(FakeRouterConfig(drain_mode=DrainMode.WITHDRAW)), CountingDrainer(conns=0)
    lc = make(store, orch, router, clock, drainer)
    victim = await serve_two_and_drain_one(store, lc, clock)
    router.fail = True
    await lc.reconcile()                                   # asked, but the withdraw could not be sent
    clock.advance(6)
    await lc.reconcile()
    assert len(drainer.drained) == 1
    assert rows.member(store, victim).state == MemberState.DRAINING
    router.fail = False
    await lc.reconcile()
    assert rows.member(store, victim).state == MemberState.DELETING


@pytest.mark.parametrize("wrap", [
    pytest.param(False, id="FakeRouter in weight mode"),
    pytest.param(True, id="a router that does not set drain_mode drains by weight"),
])
async def test_weight_mode_ignores_the_grace_and_waits_for_buckets(store: Store, wrap: bool) -> None:
    clock, orch = ManualClock(), FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0))
    router, drainer = FakeRouter(FakeRouterConfig(drain_buckets=3)), CountingDrainer(conns=0)
    lc = make(store, orch, RouterWithoutDrainMode(router) if wrap else router, clock, drainer)
    victim = await serve_two_and_drain_one(store, lc, clock)
    await lc.reconcile()
    assert router.routes[VIP][IPv4Address(rows.member(store, victim).address)] is HopState.DRAINING
    clock.advance(6)                                       # past the default grace, buckets left
    await lc.reconcile()
    assert rows.member(store, victim).state == MemberState.DRAINING
    router.config.drain_buckets = 0
    await lc.reconcile()
    assert rows.member(store, victim).state == MemberState.DELETING
    assert withdrawn_detail(store, victim) == "drained in 6s"


@pytest.mark.parametrize(("pool", "problem"), [
    pytest.param({"drain_grace": "1m", "drain_timeout": "30s"},
                 "drain_grace (1m) is longer than drain_timeout (30s)", id="grace longer than the deadline"),
    pytest.param({"drain_grace": "5.4s", "drain_timeout": "5s"},
                 "drain_grace (5.4s) is longer than drain_timeout (5s)", id="exact seconds when both round alike"),
    pytest.param({"drain_grace": "30s", "drain_timeout": "30s"}, None, id="grace equal to the deadline is valid"),
    pytest.param({"drain_grace": "3m"}, "drain_grace (3m) is longer than drain_timeout (2m)",
                 id="checked against the default drain_timeout too"),
    pytest.param({"drain_timeout": "1s"}, None, id="a short drain_timeout alone keeps the default grace"),
])
def test_drain_grace_must_fit_in_drain_timeout(pool: dict[str, str], problem: str | None) -> None:
    doc = {"vip": str(VIP), **pool}
    if problem is None:
        PoolConfig.model_validate(doc)
        return
    with pytest.raises(ValidationError, match=r"drain_grace .* drain_timeout") as exc:
        PoolConfig.model_validate(doc)
    assert problem in str(exc.value)
    assert [e["loc"] for e in exc.value.errors()] == [("drain_grace",)]    # the line an operator fixes


async def test_members_recycle_keep_alive_connections_for_a_window_after_a_scale_out(
        store: Store, clock: ManualClock) -> None:
    orch, router, drainer = FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), FakeRouter(), CountingDrainer()
    lc = make(store, orch, router, clock, drainer, rebalance={"recycle_percent": 20, "window": "30s"})
    store.start_scale_out("web", 2, 0, "below min", clock())
    for _ in range(3):
        await lc.reconcile()
    first = {m.endpoint_map()["metrics_url"] for m in store.members("web")}
    assert drainer.recycled == dict.fromkeys(first, 0)          # set once at start: clears a stale share
    clock.advance(60)
    store.start_scale_out("web", 1, 2, "busy", clock())
    for _ in range(3):
        await lc.reconcile()
    [new] = [m.endpoint_map()["metrics_url"] for m in store.members("web")
             if m.endpoint_map()["metrics_url"] not in first]
    assert drainer.recycled == {**dict.fromkeys(first, 20), new: 20}     # all of them: an even spread
    assert len([e for e in store.events("web") if e.kind == "rebalance"]) == 3
    clock.advance(31)
    await lc.reconcile()
    assert set(drainer.recycled.values()) == {0}                # the window is over


async def test_recycle_zero_turns_it_off(store: Store, clock: ManualClock) -> None:
    orch, drainer = FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), CountingDrainer()
    lc = make(store, orch, FakeRouter(), clock, drainer, rebalance={"recycle_percent": 0})
    store.start_scale_out("web", 1, 0, "below min", clock())
    for _ in range(3):
        await lc.reconcile()
    clock.advance(60)
    store.start_scale_out("web", 1, 1, "busy", clock())
    for _ in range(3):
        await lc.reconcile()
    assert set(drainer.recycled.values()) == {0}


async def test_a_drain_by_pinned_flows_ends_at_zero_or_says_what_was_left(store: Store, clock: ManualClock) -> None:
    orch, drainer = FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), CountingDrainer(conns=0)
    router = FakeRouter(FakeRouterConfig(drain_flows=3))
    lc = make(store, orch, router, clock, drainer)
    victim = await serve_two_and_drain_one(store, lc, clock)
    await lc.reconcile()
    assert rows.member(store, victim).state == MemberState.DRAINING       # 3 flows still pinned to it
    clock.advance(31)                                                     # past drain_timeout (30 s)
    await lc.reconcile()
    assert withdrawn_detail(store, victim) == "drain deadline 30s reached with 0 connections and 3 pinned flows left"
