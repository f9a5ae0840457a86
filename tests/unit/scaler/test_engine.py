"""The engine feeds the pure policy code what the service knows: alarm states as alarm inputs,
warm-up (members left out of aggregates), the stabilization history, and the decision's context
(cause, bounds, signals) stored for `scaler why`. Real store, fake orchestrator/router, a collector
fake at the I/O boundary, an injected clock."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from actuators.drainer import NoDrainer
from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter
from collectors import Sample, Target
from policies import PolicyFile, PoolPolicy
from scaler.config import CollectorConfig, PoolConfig
from scaler.engine import Engine
from scaler.lifecycle import Lifecycle
from scaler.metrics import Metrics
from scaler.store import MemberState, Store


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class Sessions:
    """A collector that answers what the test sets, per member (None: no data)."""

    name = "fake"

    def __init__(self) -> None:
        self.value: float | None = 5.0
        self.reads = 0

    async def collect(self, target: Target) -> list[Sample]:
        self.reads += 1
        return [] if self.value is None else [Sample("sessions", self.value, 0.0)]

    def forget(self, key: str) -> None:
        pass

    async def close(self) -> None:
        pass


@dataclass(frozen=True)
class Alarm:
    firing: bool | None
    source: str = "alertmanager/am-test"

    @property
    def value(self) -> float | None:
        return None if self.firing is None else float(self.firing)


@dataclass
class World:
    store: Store
    engine: Engine
    lifecycle: Lifecycle
    clock: Clock
    collector: Sessions
    alarms: dict[str, Alarm]

    async def settle(self) -> None:
        for _ in range(4):
            await self.lifecycle.reconcile()

    def last(self) -> dict[str, object]:
        row = self.store.decisions("web", limit=1)[0]
        return {"outcome": row.outcome, "desired": row.desired, "reason": row.reason, "rule": row.rule,
                "context": json.loads(row.context)}


def policy(extra: Mapping[str, object]) -> PoolPolicy:
    doc = {"min": 1, "max": 4, "inputs": {"s": {"source": "fake", "metric": "sessions"}},
           "rules": [{"name": "idle", "input": "s", "below": 10, "adjust": -1}],
           "cooldown": {"scale_out": "0s", "scale_in": "0s"}, **extra}
    return PolicyFile.model_validate({"pools": {"web": doc}}).pools["web"]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[object]:
    stores: list[Store] = []

    def build(extra: Mapping[str, object]) -> World:
        store = Store(f"sqlite:///{tmp_path}/s{len(stores)}.db")
        stores.append(store)
        store.migrate()
        store.ensure_pool("web", "198.19.0.1", 0)
        clock, metrics, collector = Clock(), Metrics(), Sessions()
        alarms: dict[str, Alarm] = {}
        pools = {"web": PoolConfig.model_validate({"vip": "198.19.0.1"})}
        engine = Engine(store, {"fake": collector}, {"fake": CollectorConfig(driver="fake")}, pools,
                        {"web": policy(extra)}, metrics, clock, alarms=lambda pool, now: alarms)
        lc = Lifecycle(store, FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), FakeRouter(), NoDrainer(),
                       pools, metrics, clock)
        return World(store, engine, lc, clock, collector, alarms)

    yield build
    for s in stores:
        s.close()


async def grow_to_min(w: World) -> None:
    w.engine.evaluate()
    await w.settle()
    assert [m.state for m in w.store.members("web")] == [MemberState.IN_SERVICE]


async def test_a_firing_alarm_scales_out_through_its_rule_and_resolved_never_scales_in(make) -> None:  # type: ignore[no-untyped-def]
    w = make({"rules": [{"name": "alarm-out", "alarm": "LBHighLoad", "adjust": "+1"},
                        {"name": "idle", "input": "s", "below": 10, "adjust": -1}]})
    w.collector.value = 15.0                      # the pool's own measurements never ask to shrink
    await grow_to_min(w)

    w.clock.t += 5
    await w.engine.collect()
    w.engine.evaluate()
    assert w.last()["outcome"] == "hold"          # never received: not firing

    w.alarms["LBHighLoad"] = Alarm(True)
    w.clock.t += 5
    await w.engine.collect()
    w.engine.evaluate()
    d = w.last()
    assert (d["outcome"], d["desired"], d["rule"]) == ("scale_out", 2, "alarm-out")
    assert d["context"]["signals"] == ["LBHighLoad: LBHighLoad firing via alertmanager/am-test"]
    await w.settle()

    w.alarms["LBHighLoad"] = Alarm(False)
    for _ in range(3):
        w.clock.t += 5
        await w.engine.collect()
        w.engine.evaluate()
        assert w.last()["outcome"] == "hold", w.last()
    # …while a scale-in the measurements ask for still happens with the alarm resolved.
    w.collector.value = 5.0
    w.clock.t += 5
    await w.engine.collect()
    w.engine.evaluate()
    assert (w.last()["outcome"], w.last()["rule"]) == ("scale_in", "idle")


async def test_unknown_alarm_state_blocks_scale_in(make) -> None:  # type: ignore[no-untyped-def]
    w = make({"min": 1, "rules": [{"name": "alarm-out", "alarm": "LBHighLoad", "adjust": "+1"},
                                  {"name": "idle", "input": "s", "below": 10, "adjust": -1}]})
    await grow_to_min(w)
    w.engine.policies["web"] = policy({"min": 0, "rules": [
        {"name": "alarm-out", "alarm": "LBHighLoad", "adjust": "+1"},
        {"name": "idle", "input": "s", "below": 10, "adjust": -1}]})
    w.alarms["LBHighLoad"] = Alarm(None)          # the receiver knows it but cannot vouch for it
    w.clock.t += 5
    await w.engine.collect()
    w.engine.evaluate()
    d = w.last()
    assert d["outcome"] == "hold" and "LBHighLoad" in str(d["reason"]), d

    w.alarms["LBHighLoad"] = Alarm(False)
    w.clock.t += 5
    await w.engine.collect()
    w.engine.evaluate()
    assert w.last()["outcome"] == "scale_in"


async def test_warming_members_are_left_out_of_the_inputs(make) -> None:  # type: ignore[no-untyped-def]
    w = make({"warmup": "60s"})
    await grow_to_min(w)
    w.clock.t += 10
    await w.engine.collect()
    assert w.collector.reads == 0
    point = w.engine.series["web"]["s"][-1]
    assert point.value is None and point.why == "1 members warming up"
    w.engine.evaluate()
    assert w.last()["outcome"] == "hold"

    w.clock.t += 60
    await w.engine.collect()
    assert w.collector.reads == 1 and w.engine.series["web"]["s"][-1].value == 5.0


async def test_stabilization_history_is_kept_between_evaluations(make) -> None:  # type: ignore[no-untyped-def]
    w = make({"min": 1, "max": 4, "stabilization": {"scale_in": "60s"},
              "rules": [{"name": "idle", "input": "s", "below": 10, "adjust": -1},
                        {"name": "busy", "input": "s", "above": 20, "adjust": "+1"}]})
    await grow_to_min(w)
    w.collector.value = 30.0                       # busy → 2
    w.clock.t += 5
    await w.engine.collect()
    w.engine.evaluate()
    assert w.last()["desired"] == 2
    await w.settle()
    w.collector.value = 5.0                        # idle at once, but the window remembers "2"
    w.clock.t += 5
    await w.engine.collect()
    w.engine.evaluate()
    d = w.last()
    assert d["outcome"] == "hold" and d["context"]["cause"] == "stabilization", d
    assert w.engine.history["web"]
    w.clock.t += 61
    await w.engine.collect()
    w.engine.evaluate()
    assert w.last()["outcome"] == "scale_in"
