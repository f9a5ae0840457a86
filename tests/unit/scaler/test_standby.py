"""Warm standby members (#18) with the real store and lifecycle, the fake orchestrator and router: they
boot into `standby` (checked, never routed, not capacity, not toward max), a scale-out or a health
replacement takes them in the transaction that starts it (in the FIB after one pass), the engine
keeps the policy's count without ever blocking a decision, and the database keeps one busy operation
per pool whatever the standby replenishments do."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from actuators.drainer import NoDrainer
from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter
from collectors import Sample, Target
from policies import PolicyFile, PoolPolicy
from policies.health import Result
from scaler.config import CollectorConfig, PoolConfig
from scaler.engine import Engine
from scaler.lifecycle import Lifecycle
from scaler.metrics import Metrics
from scaler.store import MemberState, Operation, OpKind, OpState, Store, StoreError
from tests.support import rows
from tests.support.clock import ManualClock
from tests.unit.scaler.test_health import Bed


def operation(store: Store, op_id: str) -> Operation:
    found = store.operation(op_id)
    assert found is not None, f"operation {op_id} is not in the store"
    return found

VIP = IPv4Address("198.19.0.1")
STORE_ENGINES = ("sqlite", "postgresql")


class Load:
    """A collector answering `value` sessions for every member."""

    name = "fake"

    def __init__(self) -> None:
        self.value = 5.0

    async def collect(self, target: Target) -> list[Sample]:
        return [Sample("sessions", self.value, 0.0)]

    def forget(self, key: str) -> None:
        pass

    async def close(self) -> None:
        pass


def policy(**extra: object) -> PoolPolicy:
    doc = {"min": 1, "max": 3, "standby": 2, "inputs": {"s": {"source": "fake", "metric": "sessions"}},
           "rules": [{"name": "busy", "input": "s", "above": 10, "adjust": "+1"}],
           "cooldown": {"scale_out": "0s", "scale_in": "0s"}, **extra}
    return PolicyFile.model_validate({"pools": {"web": doc}}).pools["web"]


@dataclass
class World:
    store: Store
    engine: Engine
    lc: Lifecycle
    router: FakeRouter
    clock: ManualClock
    load: Load

    async def settle(self, passes: int = 4) -> None:
        for _ in range(passes):
            await self.lc.reconcile()

    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.store.members("web"):
            out[m.state] = out.get(m.state, 0) + 1
        return out

    async def tick(self) -> None:
        self.clock.advance(5)
        await self.engine.collect()
        self.engine.evaluate()


@pytest.fixture
def world(store: Store) -> Iterator[World]:
    store.ensure_pool("web", str(VIP), 0)
    clock, metrics, load = ManualClock(1_000_000.0), Metrics(), Load()
    pools = {"web": PoolConfig.model_validate({"vip": str(VIP), "instance": {"image": "v1"}})}
    engine = Engine(store, {"fake": load}, {"fake": CollectorConfig(driver="fake")}, pools, {"web": policy()},
                    metrics, clock)
    router = FakeRouter()
    lc = Lifecycle(store, FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), router, NoDrainer(), pools,
                   metrics, clock)
    yield World(store, engine, lc, router, clock, load)


async def test_standby_members_boot_unrouted_and_count_neither_as_size_nor_toward_max(world: World) -> None:
    world.engine.evaluate()                        # below min: scale-out of 1; and 2 standby booting
    assert world.store.running_operation("web") is not None
    standby_op = world.store.running_standby()["web"]
    assert (standby_op.kind, standby_op.from_size, standby_op.to_size) == (OpKind.STANDBY, 0, 2)
    await world.settle()
    assert world.states() == {"in_service": 1, "standby": 2}
    assert len(world.router.hops(VIP)) == 1        # standby members are never routed
    standby = [m for m in world.store.members("web") if m.state == MemberState.STANDBY]
    assert all(m.standby and m.template == world.lc.pools["web"].instance_template() for m in standby)
    state = world.engine.pool_state("web", world.store.members("web"))
    assert (state.current, state.toward_max) == (1, 1)
    assert operation(world.store, standby_op.id).state == OpState.DONE
    assert world.lc.metrics.registry.get_sample_value("scaler_pool_members", {"pool": "web", "state": "standby"}) == 2


async def test_a_scale_out_takes_standby_members_in_its_transaction_and_is_in_the_fib_after_one_pass(
        world: World) -> None:
    world.engine.evaluate()
    await world.settle()
    ready = {m.instance for m in world.store.members("web") if m.state == MemberState.STANDBY}
    world.load.value = 50.0                        # busy: +1
    await world.tick()
    decision = world.store.decisions("web", limit=1)[0]
    assert decision.outcome == "scale_out" and "1 of 1 from standby" in decision.reason
    op = world.store.running_operation("web")
    assert op is not None and op.kind == OpKind.SCALE_OUT
    # Before any pass: the standby member is the operation's, announcing; nothing new was created.
    mine = world.store.members_of(op.id)
    assert [(m.instance in ready, m.state, m.standby) for m in mine] == [(True, "announcing", False)]
    await world.lc.reconcile()                     # one pass: routed, in service, operation done
    assert [m.state for m in world.store.members_of(op.id)] == ["in_service"]
    assert len(world.router.hops(VIP)) == 2
    assert operation(world.store, op.id).state == OpState.DONE
    # The same evaluation that took it started the replenishment, which makes the pool not busy.
    assert world.store.running_standby()["web"].to_size == 2
    assert world.engine.pool_state("web", world.store.members("web")).busy is None
    await world.settle()
    assert world.states() == {"in_service": 2, "standby": 2}


async def test_replenishment_never_blocks_a_decision(world: World) -> None:
    world.engine.evaluate()
    await world.settle()
    world.load.value = 50.0
    await world.tick()                             # takes one standby, starts a standby op
    await world.lc.reconcile()
    assert "web" in world.store.running_standby()
    await world.tick()                             # busy again: a scale-out while the standby op runs
    op = world.store.running_operation("web")
    assert op is not None and op.kind == OpKind.SCALE_OUT
    assert world.store.decisions("web", limit=1)[0].outcome == "scale_out"


async def test_more_than_ready_standby_creates_the_rest(world: World) -> None:
    world.engine.policies["web"] = policy(standby=1, rules=[{"name": "busy", "input": "s", "above": 10,
                                                              "adjust": "+2"}])
    world.engine.evaluate()
    await world.settle()
    assert world.states() == {"in_service": 1, "standby": 1}
    world.load.value = 50.0
    await world.tick()
    op = world.store.running_operation("web")
    assert op is not None
    assert sorted(m.state for m in world.store.members_of(op.id)) == ["announcing", "creating"]


async def test_lowering_standby_deletes_the_newest_extra_and_scale_in_never_touches_them(world: World) -> None:
    world.engine.evaluate()
    await world.settle()
    standby = [m for m in world.store.members("web") if m.state == MemberState.STANDBY]
    world.engine.policies["web"] = policy(standby=1)
    world.engine.evaluate()
    newest = max(standby, key=lambda m: (m.created_at, m.id))
    assert rows.member(world.store, newest.id).state == MemberState.DELETING
    await world.settle()
    assert world.states() == {"in_service": 1, "standby": 1}
    victims = world.engine.victims(world.store.members("web"), 5)
    assert [m.state for m in victims] == ["in_service"]


async def test_no_replenishment_while_paused_or_breaker_open(world: World) -> None:
    world.store.pause("web", "test", "freeze", world.clock())
    world.engine.evaluate()
    assert "web" not in world.store.running_standby()
    world.store.resume("web", "test", world.clock())
    from scaler.breaker import LaunchBreakerConfig, record_launch_failure
    for i in range(3):
        record_launch_failure(world.store, "web", LaunchBreakerConfig(), f"x{i}", "boom", world.clock())
    world.engine.evaluate()
    assert "web" not in world.store.running_standby()


def test_the_database_keeps_one_busy_operation_per_pool_standby_apart(store: Store) -> None:
    store.ensure_pool("web", str(VIP), 0)
    store.start_scale_out("web", 1, 0, "first", 0.0)
    store.start_standby("web", 2, 0, "standby", 0.0)      # a standby op beside a running scale-out
    with pytest.raises(StoreError, match="still running"):
        store.start_standby("web", 1, 0, "again", 0.0)
    # What the leader's check prevents, the database refuses too: a second busy operation…
    for kind in (OpKind.SCALE_IN, OpKind.ROLLOUT):
        with store.session() as s:
            s.add(Operation(id=f"op-{kind}", pool="web", kind=kind, state=OpState.RUNNING, from_size=1,
                            to_size=1, reason="racing", created_at=1.0))
            with pytest.raises(StoreError, match="already running"):
                s.commit()
    # …and a second standby replenishment.
    with store.session() as s:
        s.add(Operation(id="op-standby2", pool="web", kind=OpKind.STANDBY, state=OpState.RUNNING, from_size=0,
                        to_size=1, reason="racing", created_at=1.0))
        with pytest.raises(StoreError, match="already running"):
            s.commit()


async def test_a_health_replacement_takes_a_standby_member(store: Store, clock: ManualClock) -> None:
    store.ensure_pool("web", str(VIP), 0)
    bed = Bed(store, clock)
    a, b = await bed.serve(2)
    store.start_standby("web", 1, 0, "standby", clock())
    for _ in range(3):
        await bed.lc.reconcile()
    spare = next(m for m in store.members("web") if m.state == MemberState.STANDBY)
    await bed.rounds(3)                            # the standby member is checked too: up
    assert rows.member(store, spare.id).health == "up"
    bed.prober.results[a.address or ""] = Result.FAIL
    await bed.rounds(3)
    clock.advance(11)                              # replace_after 10 s
    await bed.rounds(1)
    op = store.running_operation("web")
    assert op is not None and [m.id for m in store.members_of(op.id)] == [spare.id]
    assert rows.member(store, spare.id).state == MemberState.ANNOUNCING
    await bed.lc.reconcile()
    assert bed.hops() == {b.address, spare.address}


async def test_a_standby_member_found_down_is_failed_and_deleted(store: Store, clock: ManualClock) -> None:
    store.ensure_pool("web", str(VIP), 0)
    bed = Bed(store, clock)
    await bed.serve(2)
    store.start_standby("web", 1, 0, "standby", clock())
    for _ in range(3):
        await bed.lc.reconcile()
    spare = next(m for m in store.members("web") if m.state == MemberState.STANDBY)
    bed.prober.results[spare.address or ""] = Result.FAIL
    await bed.rounds(4)
    m = store.member(spare.id)
    assert m is not None and m.state == MemberState.FAILED and "standby member found down" in (m.error or "")
    assert store.running_operation("web") is None        # no replacement: the engine boots another
    assert len(bed.serving()) == 2 and bed.checker.panic.get("web") is None
    for _ in range(2):
        await bed.lc.reconcile()
    assert rows.member(store, spare.id).state == MemberState.DELETED


def test_policy_standby_is_validated() -> None:
    with pytest.raises(Exception, match="standby"):
        policy(standby=-1)
    assert policy().standby == 2 and policy(standby=0).standby == 0
