"""The launch circuit breaker: its state machine in the store, and the lifecycle that feeds it and obeys it."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest
from prometheus_client import generate_latest

from actuators.drainer import NoDrainer
from actuators.errors import InstanceErrored, OrchestratorTimeout
from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter
from actuators.orchestrator import Instance
from policies import Decision, Outcome
from scaler.breaker import (
    LaunchBreakerConfig,
    breaker_state,
    hold_for_breaker,
    record_launch_failure,
    record_launch_success,
    reset_breaker,
)
from scaler.config import PoolConfig
from scaler.lifecycle import Lifecycle
from scaler.metrics import Metrics
from scaler.store import OpState, Store
from tests.support.clock import ManualClock

VIP = IPv4Address("198.19.0.1")
T0 = 1_700_000_000.0
STORE_ENGINES = ("sqlite", "postgresql")          # tests/conftest.py


@pytest.fixture
def store(store: Store) -> Store:
    """The shared store (tests/conftest.py) with the pool."""
    store.ensure_pool("web", str(VIP), 0)
    return store


# ---- the state machine ------------------------------------------------------------------------

CFG = LaunchBreakerConfig(failures=3, cool_off=600)

# Steps: ("fail", member, dt) / ("ok", member, dt) / ("reset", "", dt); dt: seconds after the previous step.
@pytest.mark.parametrize(("cfg", "steps", "status", "failures"), [
    pytest.param(CFG, [("fail", "a", 0), ("fail", "b", 1)], "closed", 2, id="two failures stay closed"),
    pytest.param(CFG, [("fail", "a", 0), ("fail", "b", 1), ("fail", "c", 1)], "open", 3, id="the third opens it"),
    pytest.param(CFG, [("fail", "a", 0), ("fail", "b", 1), ("ok", "x", 1), ("fail", "c", 1)], "closed", 1,
                 id="a healthy launch in between resets the count"),
    pytest.param(CFG, [("fail", "a", 0), ("fail", "a", 1), ("fail", "a", 1)], "closed", 1,
                 id="one member is counted once"),
    pytest.param(LaunchBreakerConfig(enabled=False, failures=1), [("fail", "a", 0), ("fail", "b", 1)], "closed", 2,
                 id="disabled: counted, never opens"),
    pytest.param(CFG, [("fail", "a", 0), ("fail", "b", 0), ("fail", "c", 0), ("none", "", 599)], "open", 3,
                 id="open until the cool-off ends"),
    pytest.param(CFG, [("fail", "a", 0), ("fail", "b", 0), ("fail", "c", 0), ("none", "", 600)], "half_open", 3,
                 id="half-open once the cool-off ended"),
    pytest.param(CFG, [("fail", "a", 0), ("fail", "b", 0), ("fail", "c", 0), ("fail", "d", 601)], "open", 4,
                 id="a failure while half-open re-opens at once"),
    pytest.param(CFG, [("fail", "a", 0), ("fail", "b", 0), ("fail", "c", 0), ("ok", "d", 601)], "closed", 0,
                 id="a success while half-open closes it"),
    pytest.param(CFG, [("fail", "a", 0), ("fail", "b", 0), ("fail", "c", 0), ("ok", "d", 1)], "closed", 0,
                 id="a member launched before it opened becoming healthy closes it"),
    pytest.param(LaunchBreakerConfig(failures=1, cool_off=0), [("fail", "a", 0), ("none", "", 86400 * 30)], "open",
                 1, id="cool_off 0: open until reset"),
    pytest.param(CFG, [("fail", "a", 0), ("fail", "b", 0), ("fail", "c", 0), ("reset", "", 1)], "closed", 0,
                 id="an operator reset closes it"),
])
def test_breaker_state_machine(store: Store, cfg: LaunchBreakerConfig, steps: list[tuple[str, str, float]],
                               status: str, failures: int) -> None:
    now = T0
    for what, member, dt in steps:
        now += dt
        if what == "fail":
            record_launch_failure(store, "web", cfg, member, "server went ERROR", now)
        elif what == "ok":
            record_launch_success(store, "web", member, now)
        elif what == "reset":
            reset_breaker(store, "web", now)
    st = breaker_state(store, "web", now)
    assert (st.status, st.failures) == (status, failures)
    assert st.open is (status == "open")


def test_opening_is_reported_once_with_the_reason(store: Store) -> None:
    opened = [record_launch_failure(store, "web", CFG, f"web-op-{i}", "server is in ERROR: No valid host", T0 + i)[1]
              for i in range(4)]
    assert opened == [False, False, True, False]
    st = breaker_state(store, "web", T0 + 10)
    assert (st.opened_at, st.resets_at, st.trips) == (T0 + 2, T0 + 602, 1)
    assert st.reason == "web-op-3: server is in ERROR: No valid host"      # the latest failure
    text = st.summary(T0 + 10)
    assert text.startswith("launch circuit breaker open since 2023-11-14 22:13:22Z (8s ago): 4 launches failed "
                           "(last: web-op-3: server is in ERROR: No valid host); resets at 2023-11-14 22:23:22Z")
    assert text.endswith("or `scaler breaker reset web`")
    events = [e.message for e in store.events("web") if e.kind == "launch_breaker"]
    assert len(events) == 1 and events[0].startswith("launch circuit breaker opened: launches of pool web stop")


def test_the_state_survives_a_restart(store_url: str, store: Store) -> None:
    for i in range(3):
        record_launch_failure(store, "web", CFG, f"m{i}", "BuildTimeout", T0)
    store.close()
    again = Store(store_url)
    try:
        again.migrate()
        st = breaker_state(again, "web", T0 + 60)
        assert st.open and st.failures == 3
        assert breaker_state(again, "api", T0).status == "closed"        # pools are independent
        reset_breaker(again, "web", T0 + 61, by="api")
        assert breaker_state(again, "web", T0 + 62).status == "closed"
        assert any("reset by api (was open, 3 launches failed in a row)" in e.message for e in again.events("web"))
    finally:
        again.close()


def decision(outcome: Outcome, current: int, desired: int) -> Decision:
    return Decision(outcome, current, desired, "busy: sessions 20.0 > 12 for 6s")


@pytest.mark.parametrize(("outcome", "desired", "held"), [
    pytest.param(Outcome.SCALE_OUT, 3, True, id="a scale-out is held"),
    pytest.param(Outcome.SCALE_IN, 1, False, id="a scale-in goes on"),
    pytest.param(Outcome.HOLD, 2, False, id="a hold stays what it was"),
])
def test_hold_for_breaker(store: Store, outcome: Outcome, desired: int, held: bool) -> None:
    for i in range(3):
        record_launch_failure(store, "web", CFG, f"web-x-{i}", "not healthy after 5m", T0)
    d = decision(outcome, 2, desired)
    out = hold_for_breaker(d, breaker_state(store, "web", T0 + 1))
    if held:
        assert (out.outcome, out.desired, out.acts) == (Outcome.HOLD, 2, False)
        assert out.reason.startswith("launch circuit breaker open since ")
        assert "3 launches failed (last: web-x-2: not healthy after 5m)" in out.reason
        assert out.reason.endswith("wanted 2 → 3: busy: sessions 20.0 > 12 for 6s")
    else:
        assert out is d
    assert hold_for_breaker(decision(Outcome.SCALE_OUT, 2, 3), breaker_state(store, "web", T0 + 601)).acts


def test_migration_0004_matches_the_model_and_downgrades(store: Store) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect
    from sqlmodel import SQLModel

    from scaler.migrations import alembic_config

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert [d for d in diff if "launch_breakers" in repr(d)] == []
    command.downgrade(alembic_config(store.engine), "0003")
    assert "launch_breakers" not in inspect(store.engine).get_table_names()
    store.migrate()
    assert "launch_breakers" in inspect(store.engine).get_table_names()


# ---- the lifecycle feeds it and obeys it -------------------------------------------------------

@dataclass
class BrokenCloud(FakeOrchestrator):
    """The fake orchestrator, with servers that go ERROR and a probe API that can time out."""

    errored: set[str] = field(default_factory=set)
    probe_timeouts: bool = False

    async def probe(self, instance: Instance) -> bool:
        if self.probe_timeouts:
            raise OrchestratorTimeout(f"probe instance {instance.name}: no answer from the cloud within 90s")
        if instance.name in self.errored:
            raise InstanceErrored(f"instance {instance.name}: server s-1 is in ERROR: No valid host was found")
        return await super().probe(instance)


def lifecycle(store: Store, orch: FakeOrchestrator, clock: ManualClock, metrics: Metrics | None = None,
              **breaker: object) -> Lifecycle:
    pool = PoolConfig.model_validate({"vip": str(VIP), "boot_timeout": "60s"})
    return Lifecycle(store, orch, FakeRouter(), NoDrainer(), {"web": pool}, metrics or Metrics(), clock,
                     breakers={"web": LaunchBreakerConfig.model_validate({"cool_off": "10m", **breaker})})


async def settle(lc: Lifecycle, clock: ManualClock, passes: int = 4, step_s: float = 1.0) -> None:
    for _ in range(passes):
        await lc.reconcile()
        clock.advance(step_s)


def creates(orch: FakeOrchestrator) -> int:
    return sum(1 for kind, _ in orch.calls if kind == "create")


async def test_error_launches_open_the_breaker_and_the_pool_stops_creating(store: Store) -> None:
    clock, orch, metrics = ManualClock(T0), BrokenCloud(FakeOrchestratorConfig(boot_probes=0)), Metrics()
    lc = lifecycle(store, orch, clock, metrics)
    for _ in range(3):                                  # three scale-outs whose server goes ERROR
        store.start_scale_out("web", 1, 0, "below min", clock())
        orch.errored.add(store.members("web")[-1].instance)
        await settle(lc, clock)
        assert store.running_operation("web") is None
    assert states(store) == ["deleted"] * 3
    assert orch.instances == {}                         # every failed member was deleted
    st = breaker_state(store, "web", clock())
    assert st.open and st.failures == 3 and "No valid host" in (st.reason or "")
    assert 'scaler_launch_breaker_open{pool="web"} 1.0' in generate_latest(metrics.registry).decode()
    assert 'scaler_failed_launches_total{kind="error",pool="web"} 3.0' in generate_latest(metrics.registry).decode()

    # A scale-out started anyway (an engine that did not look) launches nothing.
    made = creates(orch)
    store.start_scale_out("web", 2, 0, "below min", clock())
    await settle(lc, clock)
    assert creates(orch) == made
    op = store.operations("web")[0]
    assert op.state == OpState.FAILED and "not launched: launch circuit breaker open since" in (op.error or "")
    assert breaker_state(store, "web", clock()).failures == 3      # not launched is not a failed launch

    # After the cool-off the next launch is allowed; it becomes healthy and closes the breaker.
    clock.advance(600)
    await lc.reconcile()
    assert any("cool-off over" in e.message for e in store.events("web"))
    store.start_scale_out("web", 1, 0, "below min", clock())
    await settle(lc, clock)
    assert states(store)[-1] == "in_service"
    assert breaker_state(store, "web", clock()).status == "closed"
    assert any("launch circuit breaker closed: web-" in e.message for e in store.events("web"))


async def test_launches_that_never_become_healthy_count(store: Store) -> None:
    clock, orch = ManualClock(T0), FakeOrchestrator()
    lc = lifecycle(store, orch, clock, failures=2)
    store.start_scale_out("web", 2, 0, "below min", clock())
    orch.never_healthy.update(m.instance for m in store.members("web"))
    await lc.reconcile()
    clock.advance(61)
    await settle(lc, clock)
    assert states(store) == ["deleted", "deleted"]
    st = breaker_state(store, "web", clock())
    assert st.open and (st.reason or "").endswith("not healthy after 1m")


async def test_refused_creates_fail_the_step_but_are_not_failed_launches(store: Store) -> None:
    clock, orch = ManualClock(T0), FakeOrchestrator()
    lc = lifecycle(store, orch, clock, failures=1)
    store.start_scale_out("web", 3, 0, "below min", clock())
    orch.fail_create.update(m.instance for m in store.members("web"))
    await settle(lc, clock)
    assert states(store) == ["deleted"] * 3
    assert "quota exceeded" in (store.operations("web")[0].error or "")
    assert breaker_state(store, "web", clock()).status == "closed"
    assert breaker_state(store, "web", clock()).failures == 0


async def test_a_probe_that_cannot_ask_keeps_booting_until_boot_timeout(store: Store) -> None:
    clock, orch = ManualClock(T0), BrokenCloud(probe_timeouts=True)
    lc = lifecycle(store, orch, clock)
    store.start_scale_out("web", 1, 0, "below min", clock())
    await settle(lc, clock, passes=5)
    assert states(store) == ["booting"]                 # an API timeout is no answer about the server
    orch.probe_timeouts = False
    await settle(lc, clock, passes=2)
    assert states(store) == ["in_service"]
    # The same again, but the API stays down past boot_timeout: failed and counted.
    store.start_scale_out("web", 1, 1, "busy", clock())
    orch.probe_timeouts = True
    await settle(lc, clock, passes=2)
    clock.advance(61)
    await settle(lc, clock, passes=3)
    assert states(store) == ["in_service", "deleted"]
    assert breaker_state(store, "web", clock()).failures == 1


def states(store: Store) -> list[str]:
    return [m.state for m in store.members("web", include_deleted=True)]


def test_default_config_values() -> None:
    cfg = LaunchBreakerConfig()
    assert (cfg.enabled, cfg.failures, cfg.cool_off) == (True, 3, 600.0)
    assert LaunchBreakerConfig.model_validate({"cool_off": "90s"}).cool_off == 90.0
    with pytest.raises(ValueError, match="extra"):
        LaunchBreakerConfig.model_validate({"threshold": 3})
