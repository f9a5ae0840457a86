"""Rolling replacement (#18) with the real store and lifecycle, the fake orchestrator and router: members
on an outdated instance template are replaced one (or `surge`) at a time, new member in service
first; never fewer members in service than before; resumed by a new Lifecycle on the same store;
stopped by failed launches or the breaker with the old members serving; paused with the pool."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx
import pytest

from actuators.errors import LaunchFailed
from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter
from actuators.orchestrator import Instance, InstanceSpec
from scaler.api import create_app
from scaler.config import PoolConfig
from scaler.lifecycle import Lifecycle
from scaler.metrics import Metrics
from scaler.rollout import progress
from scaler.store import Member, MemberState, Operation, OpKind, OpState, Store, StoreError
from tests.support import rows
from tests.support.api import OPS_TOKEN, View, api_config, bearer
from tests.support.clock import ManualClock
from tests.unit.scaler.test_lifecycle import CountingDrainer

STORE_ENGINES = ("sqlite", "postgresql")          # tests/conftest.py


def operation(store: Store, op_id: str) -> Operation:
    found = store.operation(op_id)
    assert found is not None, f"operation {op_id} is not in the store"
    return found

VIP = IPv4Address("198.19.0.1")


class Images(FakeOrchestrator):
    """The fake cloud, where an instance of image "broken" never serves (its launch fails)."""

    async def create(self, spec: InstanceSpec, name: str) -> Instance:
        if spec.params.get("image") == "broken":
            self.calls.append(("create", name))
            raise LaunchFailed(f"{name}: image broken: instance in ERROR (fake)")
        return await super().create(spec, name)


def pool(image: str, **extra: Any) -> PoolConfig:
    return PoolConfig.model_validate({"vip": str(VIP), "instance": {"image": image}, "boot_timeout": "60s",
                                      "drain_timeout": "30s", **extra})


class Bed:
    def __init__(self, store: Store, clock: ManualClock) -> None:
        self.store, self.clock = store, clock
        self.orch = Images(FakeOrchestratorConfig(boot_probes=1))
        self.router = FakeRouter()
        self.drainer = CountingDrainer(conns=0)
        self.lc = self.lifecycle(pool("v1"))

    def lifecycle(self, cfg: PoolConfig) -> Lifecycle:
        """A scaler (re)started with `cfg`: nothing in memory but what the store says."""
        self.lc = Lifecycle(self.store, self.orch, self.router, self.drainer, {"web": cfg}, Metrics(), self.clock,
                            breakers={"web": cfg.launch_breaker})
        return self.lc

    def serving(self) -> list[Member]:
        return [m for m in self.store.members("web") if m.state == MemberState.IN_SERVICE]

    async def serve(self, n: int) -> list[Member]:
        self.store.start_scale_out("web", n, 0, "below min", self.clock())
        for _ in range(4):
            await self.lc.reconcile()
        assert len(self.serving()) == n
        return self.serving()

    def rollout(self, surge: int = 1) -> str:
        members = self.store.members("web")
        template = self.lc.pools["web"].instance_template()
        return self.store.start_rollout("web", surge, template, sum(m.template != template for m in members),
                                        len(members), "test", self.clock()).id

    async def run(self, op_id: str, passes: int, floor: int) -> list[int]:
        """Passes until the operation ends (or `passes`), checking after each that at least `floor`
        members are in service; the in-service counts seen."""
        seen = []
        for _ in range(passes):
            self.clock.advance(1)
            await self.lc.reconcile()
            seen.append(len(self.serving()))
            assert seen[-1] >= floor, f"only {seen[-1]} in service during the rollout"
            op = self.store.operation(op_id)
            if op is not None and op.state != OpState.RUNNING:
                break
        return seen


@pytest.fixture
def bed(store: Store, clock: ManualClock) -> Bed:
    store.ensure_pool("web", str(VIP), 0)
    return Bed(store, clock)


async def test_a_rollout_replaces_every_member_new_first_never_fewer_in_service(bed: Bed) -> None:
    old = await bed.serve(3)
    v1 = bed.lc.pools["web"].instance_template()
    assert {m.template for m in old} == {v1}
    bed.lifecycle(pool("v2"))                      # the operator edited the image and restarted
    v2 = bed.lc.pools["web"].instance_template()
    op_id = bed.rollout()
    with pytest.raises(StoreError, match="still running"):      # a decision is held while it runs
        bed.store.start_scale_out("web", 1, 3, "busy", bed.clock())
    seen = await bed.run(op_id, 60, floor=3)
    op = bed.store.operation(op_id)
    assert op is not None and op.state == OpState.DONE, op
    assert max(seen) == 4                          # surge 1: one extra member at a time, never more
    now = bed.serving()
    assert len(now) == 3 and {m.template for m in now} == {v2}
    assert not {m.instance for m in old} & set(bed.orch.instances)        # the old instances are deleted
    # Order, from the steps: each old member was drained after a new one came into service.
    steps = bed.store.steps(op_id)
    order = [s.name for s in steps if s.name in ("in_service", "draining")]
    assert order == ["in_service", "draining"] * 3
    p = progress(bed.store, op, v2)
    assert (p.served, p.replaced, p.failed, p.outdated) == (3, 3, 0, [])
    pool_row = bed.store.pool("web")
    assert pool_row is not None and pool_row.last_scale_out_at is not None    # from serve(); not moved
    assert bed.store.running_operation("web") is None


async def test_surge_launches_several_at_once(bed: Bed) -> None:
    await bed.serve(3)
    bed.lifecycle(pool("v2"))
    op_id = bed.rollout(surge=2)
    await bed.lc.reconcile()
    assert len([m for m in bed.store.members_of(op_id) if m.state != MemberState.IN_SERVICE]) == 2
    seen = await bed.run(op_id, 60, floor=3)
    assert operation(bed.store, op_id).state == OpState.DONE
    assert max(seen) == 5


async def test_a_rollout_takes_current_standby_members_and_drops_outdated_ones(bed: Bed) -> None:
    await bed.serve(2)
    bed.store.start_standby("web", 1, 0, "standby", bed.clock())         # booted on v1
    for _ in range(3):
        await bed.lc.reconcile()
    bed.lifecycle(pool("v2"))
    bed.store.start_standby("web", 1, 1, "standby", bed.clock())          # booted on v2
    for _ in range(3):
        await bed.lc.reconcile()
    v2 = bed.lc.pools["web"].instance_template()
    spare = next(m for m in bed.store.members("web") if m.state == MemberState.STANDBY and m.template == v2)
    stale = next(m for m in bed.store.members("web") if m.state == MemberState.STANDBY and m.template != v2)
    op_id = bed.rollout()
    await bed.lc.reconcile()                      # the v2 standby is taken, announced and in service at once
    assert rows.member(bed.store, spare.id).op_id == op_id
    assert rows.member(bed.store, spare.id).state == MemberState.IN_SERVICE
    assert rows.member(bed.store, stale.id).state in (MemberState.DELETING, MemberState.DELETED)
    await bed.run(op_id, 60, floor=2)
    assert operation(bed.store, op_id).state == OpState.DONE
    assert {m.template for m in bed.serving()} == {v2}


async def test_a_scaler_killed_mid_rollout_resumes_it_from_the_store(bed: Bed) -> None:
    old = await bed.serve(3)
    bed.lifecycle(pool("v2"))
    op_id = bed.rollout()
    await bed.run(op_id, 4, floor=3)              # one member replaced or so, then the scaler dies
    assert operation(bed.store, op_id).state == OpState.RUNNING
    left = progress(bed.store, operation(bed.store, op_id), bed.lc.pools["web"].instance_template())
    assert 0 < len(left.outdated) < 3
    bed.lifecycle(pool("v2"))                     # a new process: same store, nothing in memory
    await bed.run(op_id, 60, floor=3)
    assert operation(bed.store, op_id).state == OpState.DONE
    assert len(bed.serving()) == 3 and not {m.id for m in old} & {m.id for m in bed.serving()}


async def test_failed_launches_stop_the_rollout_and_the_old_members_keep_serving(bed: Bed) -> None:
    old = await bed.serve(3)
    bed.lifecycle(pool("broken", launch_breaker={"failures": 10}))
    op_id = bed.rollout()
    await bed.run(op_id, 30, floor=3)
    op = bed.store.operation(op_id)
    assert op is not None and op.state == OpState.FAILED
    assert op.error is not None and "stopped after 3 failed launches (surge 1 + 2)" in op.error
    assert "3 outdated members keep serving" in op.error
    assert {m.id for m in bed.serving()} == {m.id for m in old}
    assert len(bed.router.hops(VIP)) == 3
    assert len([c for c in bed.orch.calls if c[0] == "create"]) == 3 + 3   # serve(3), then 3 tries


async def test_an_open_breaker_stops_the_rollout(bed: Bed) -> None:
    old = await bed.serve(2)
    bed.lifecycle(pool("broken", launch_breaker={"failures": 2}))
    op_id = bed.rollout(surge=2)                  # surge + 2 = 4 failures: the breaker (2) opens first
    await bed.run(op_id, 30, floor=2)
    op = bed.store.operation(op_id)
    assert op is not None and op.state == OpState.FAILED and "stopped: " in (op.error or "")
    assert "breaker" in (op.error or "")
    assert {m.id for m in bed.serving()} == {m.id for m in old}


async def test_a_paused_pool_pauses_the_rollout(bed: Bed) -> None:
    await bed.serve(2)
    bed.lifecycle(pool("v2"))
    bed.store.pause("web", "test", "change freeze", bed.clock())
    op_id = bed.rollout()
    await bed.run(op_id, 5, floor=2)
    assert bed.store.members_of(op_id) == []      # nothing launched, nothing drained
    bed.store.resume("web", "test", bed.clock())
    await bed.run(op_id, 40, floor=2)
    assert operation(bed.store, op_id).state == OpState.DONE


async def test_the_api_starts_a_rollout_and_shows_its_progress(store: Store, tmp_path: Path) -> None:
    store.ensure_pool("web", str(VIP), 0)
    view = View(store)
    app = create_app(view, lambda: 1000.0, access=api_config(tmp_path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        r = await c.post("/v1/pools/web/rollout", json={"surge": 1}, headers=bearer(OPS_TOKEN))
        assert r.status_code == 409 and "nothing to roll out" in r.json()["detail"]
        assert (await c.get("/v1/pools/web/rollout", headers=bearer(OPS_TOKEN))).json() is None
        lc = Lifecycle(store, FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), FakeRouter(),
                       CountingDrainer(), {"web": pool("v1")}, Metrics())
        store.start_scale_out("web", 2, 0, "below min", 1000.0)
        for _ in range(3):
            await lc.reconcile()
        r = await c.post("/v1/pools/web/rollout", json={"surge": 2}, headers=bearer(OPS_TOKEN))
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["state"] == "running" and body["surge"] == 2 and len(body["outdated"]) == 2
        assert body["template"] == view.pools["web"].instance_template()
        r = await c.post("/v1/pools/web/rollout", json={"surge": 1}, headers=bearer(OPS_TOKEN))
        assert r.status_code == 409 and "still running" in r.json()["detail"]
        assert (await c.post("/v1/pools/web/rollout", json={"surge": 0},
                             headers=bearer(OPS_TOKEN))).status_code == 422
        got = (await c.get("/v1/pools/web/rollout", headers=bearer(OPS_TOKEN))).json()
        assert got["operation"] == body["operation"] and got["replaced"] == 0 and got["paused"] is False
        pool_view = (await c.get("/v1/pools/web", headers=bearer(OPS_TOKEN))).json()
        assert pool_view["outdated"] == 2 and pool_view["operation"]["kind"] == OpKind.ROLLOUT
        assert all(m["template"] == pool("v1").instance_template() for m in pool_view["members"])
        why = (await c.get("/v1/pools/web/why", headers=bearer(OPS_TOKEN))).text
        assert f"rollout {body['operation']} to template" in why and "2 outdated left" in why
        ev = [e.message for e in store.events("web") if e.kind == "operation"]
        assert any("rollout to template" in m and "api (ops)" in m for m in ev)


async def test_a_new_member_found_down_earns_no_drain_and_is_failed_after_replace_after(bed: Bed) -> None:
    await bed.serve(2)
    bed.lifecycle(pool("v2"))
    op_id = bed.rollout()
    new: list[Member] = []
    for _ in range(6):                            # until the first new member is in service
        await bed.lc.reconcile()
        new = [m for m in bed.store.members_of(op_id) if m.state == MemberState.IN_SERVICE]
        if new:
            break
    assert len(new) == 1 and not [m for m in bed.store.members_of(op_id) if m.state == MemberState.DRAINING]
    # Its health checks find it down before the pass that would drain an old member.
    bed.store.set_health(new[0].id, "down", bed.clock(), "connection refused")
    for _ in range(3):
        bed.clock.advance(1)
        await bed.lc.reconcile()
    assert [m.state for m in bed.store.members_of(op_id)] == ["in_service"]    # no drain, no launch
    assert len(bed.serving()) == 3
    bed.clock.advance(10)                         # health.replace_after (10 s): the rollout fails it
    await bed.lc.reconcile()
    failed = rows.member(bed.store, new[0].id)
    assert failed.state in (MemberState.FAILED, MemberState.DELETING) and "new member down" in (failed.error or "")
    assert len(bed.serving()) == 2                # the two old members still serve
    await bed.run(op_id, 40, floor=2)
    op = operation(bed.store, op_id)
    assert op.state == OpState.DONE
    assert progress(bed.store, op, bed.lc.pools["web"].instance_template()).failed == 1
