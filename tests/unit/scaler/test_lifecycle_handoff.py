"""The lifecycle with stray handoff (actuators/handoff.py): peer lists before routes, and a drain that
withdraws at once and waits for the member's connections (HAProxy's and the kernel's)."""

from __future__ import annotations

from collections.abc import Collection
from ipaddress import IPv4Address

from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter, FakeRouterConfig
from actuators.router import DrainMode
from scaler.config import PoolConfig
from scaler.lifecycle import Lifecycle
from scaler.metrics import Metrics
from scaler.store import MemberState, Store
from tests.support import rows
from tests.support.clock import ManualClock
from tests.unit.scaler.test_lifecycle import VIP, CountingDrainer, states, withdrawn_detail


class FakePeers:
    """A `Peers` that records each push with the VIP's next hops at that moment."""

    def __init__(self, router: FakeRouter) -> None:
        self.router = router
        self.calls: list[tuple[list[str], set[IPv4Address]]] = []
        self.flows: dict[str, int | None] = {}

    async def set_peers(self, pool: str, members: Collection[str]) -> None:
        self.calls.append((sorted(members), self.router.hops(VIP)))

    async def open_flows(self, member: str) -> int | None:
        return self.flows.get(member, 0)


def make(store: Store, clock: ManualClock, drainer: CountingDrainer) -> tuple[Lifecycle, FakeRouter, FakePeers]:
    store.ensure_pool("web", str(VIP), 0)
    router = FakeRouter(FakeRouterConfig(drain_mode=DrainMode.WITHDRAW))
    peers = FakePeers(router)
    cfg = PoolConfig.model_validate({"vip": str(VIP), "boot_timeout": "60s", "drain_timeout": "30s"})
    lc = Lifecycle(store, FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), router, drainer, {"web": cfg},
                   Metrics(), clock, peers=peers)
    return lc, router, peers


async def test_every_member_lists_a_joining_member_before_it_is_routed(store: Store) -> None:
    clock = ManualClock()
    lc, router, peers = make(store, clock, CountingDrainer())
    store.start_scale_out("web", 2, 0, "below min", clock())
    for _ in range(3):
        await lc.reconcile()
    assert states(store) == ["in_service", "in_service"]
    names = sorted(m.instance for m in store.members("web"))
    _, routed_then = next(c for c in peers.calls if c[0] == names)
    assert routed_then == set(), "both were in the peer lists before either was announced"
    assert len(router.hops(VIP)) == 2
    n = len(peers.calls)
    await lc.reconcile()
    assert len(peers.calls) == n, "nothing changed: nothing pushed"


async def test_a_draining_member_is_withdrawn_at_once_and_waits_for_its_connections(store: Store) -> None:
    clock, drainer = ManualClock(), CountingDrainer(conns=3)
    lc, router, peers = make(store, clock, drainer)
    store.start_scale_out("web", 2, 0, "below min", clock())
    for _ in range(3):
        await lc.reconcile()
    victim = store.members("web")[-1]
    addr = IPv4Address(victim.address or "")
    store.start_scale_in("web", [victim], 2, "idle", clock())
    await lc.reconcile()
    assert addr not in router.hops(VIP), "withdrawn at once: its strays reach it through its peers"
    assert rows.member(store, victim.id).state == MemberState.DRAINING and len(drainer.drained) == 1
    assert victim.instance in peers.calls[-1][0], "still a peer while it drains"
    clock.advance(20)                       # far past drain_grace: no grace with handoff
    await lc.reconcile()
    assert rows.member(store, victim.id).state == MemberState.DRAINING
    drainer.conns = 0
    peers.flows[victim.instance] = 2        # HAProxy closed them, the kernel still sends them
    await lc.reconcile()
    assert rows.member(store, victim.id).state == MemberState.DRAINING
    peers.flows[victim.instance] = 0
    await lc.reconcile()
    assert withdrawn_detail(store, victim.id) == "drained in 20s"
    await lc.reconcile()
    assert victim.instance not in peers.calls[-1][0], "out of the peer lists once drained"
    for _ in range(2):
        await lc.reconcile()
    assert rows.member(store, victim.id).state == MemberState.DELETED


async def test_the_drain_deadline_ends_a_handoff_drain(store: Store) -> None:
    clock, drainer = ManualClock(), CountingDrainer(conns=5)
    lc, _, _ = make(store, clock, drainer)
    store.start_scale_out("web", 2, 0, "below min", clock())
    for _ in range(3):
        await lc.reconcile()
    victim = store.members("web")[-1]
    store.start_scale_in("web", [victim], 2, "idle", clock())
    await lc.reconcile()
    clock.advance(30)
    await lc.reconcile()
    assert withdrawn_detail(store, victim.id) == (
        "drain deadline 30s reached with 5 connections and 0 open flows left")
