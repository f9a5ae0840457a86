"""The engine feeds the pure policy code what the service knows: alarm states as alarm inputs,
warm-up (members left out of aggregates), the stabilization history, and the decision's context
(cause, bounds, signals) stored for `scaler why`. Real store, fake orchestrator/router, a collector
fake at the I/O boundary, an injected clock."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from actuators.drainer import NoDrainer
from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter
from collectors import Sample, Target
from collectors.haproxy import HAProxyCollector, HAProxyCollectorConfig
from policies import PolicyFile, PoolPolicy
from scaler.config import CollectorConfig, PoolConfig
from scaler.engine import Engine, Read
from scaler.lifecycle import Lifecycle
from scaler.metrics import Metrics
from scaler.store import MemberState, Store
from tests.support.clock import ManualClock


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
    clock: ManualClock
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
        clock, metrics, collector = ManualClock(1_000_000.0), Metrics(), Sessions()
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

    w.clock.advance(5)
    await w.engine.collect()
    w.engine.evaluate()
    assert w.last()["outcome"] == "hold"          # never received: not firing

    w.alarms["LBHighLoad"] = Alarm(True)
    w.clock.advance(5)
    await w.engine.collect()
    w.engine.evaluate()
    d = w.last()
    assert (d["outcome"], d["desired"], d["rule"]) == ("scale_out", 2, "alarm-out")
    assert d["context"]["signals"] == ["LBHighLoad: LBHighLoad firing via alertmanager/am-test"]
    await w.settle()

    w.alarms["LBHighLoad"] = Alarm(False)
    for _ in range(3):
        w.clock.advance(5)
        await w.engine.collect()
        w.engine.evaluate()
        assert w.last()["outcome"] == "hold", w.last()
    # …while a scale-in the measurements ask for still happens with the alarm resolved.
    w.collector.value = 5.0
    w.clock.advance(5)
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
    w.clock.advance(5)
    await w.engine.collect()
    w.engine.evaluate()
    d = w.last()
    assert d["outcome"] == "hold" and "LBHighLoad" in str(d["reason"]), d

    w.alarms["LBHighLoad"] = Alarm(False)
    w.clock.advance(5)
    await w.engine.collect()
    w.engine.evaluate()
    assert w.last()["outcome"] == "scale_in"


async def test_warming_members_are_left_out_of_the_inputs(make) -> None:  # type: ignore[no-untyped-def]
    w = make({"warmup": "60s"})
    await grow_to_min(w)
    w.clock.advance(10)
    await w.engine.collect()
    assert w.collector.reads == 0
    point = w.engine.series["web"]["s"][-1]
    assert point.value is None and point.why == "1 members warming up"
    w.engine.evaluate()
    assert w.last()["outcome"] == "hold"

    w.clock.advance(60)
    await w.engine.collect()
    assert w.collector.reads == 1 and w.engine.series["web"]["s"][-1].value == 5.0


async def test_stabilization_history_is_kept_between_evaluations(make) -> None:  # type: ignore[no-untyped-def]
    w = make({"min": 1, "max": 4, "stabilization": {"scale_in": "60s"},
              "rules": [{"name": "idle", "input": "s", "below": 10, "adjust": -1},
                        {"name": "busy", "input": "s", "above": 20, "adjust": "+1"}]})
    await grow_to_min(w)
    w.collector.value = 30.0                       # busy → 2
    w.clock.advance(5)
    await w.engine.collect()
    w.engine.evaluate()
    assert w.last()["desired"] == 2
    await w.settle()
    w.collector.value = 5.0                        # idle at once, but the window remembers "2"
    w.clock.advance(5)
    await w.engine.collect()
    w.engine.evaluate()
    d = w.last()
    assert d["outcome"] == "hold" and d["context"]["cause"] == "stabilization", d
    assert w.engine.history["web"]
    w.clock.advance(61)
    await w.engine.collect()
    w.engine.evaluate()
    assert w.last()["outcome"] == "scale_in"


class Interfaces:
    """Answers like the snmp collector's `interfaces` preset: one rx_bytes_per_s / tx_bytes_per_s per
    interface (label `interface`), plus their unlabelled sum only when every interface has a rate."""

    name = "snmp"

    def __init__(self) -> None:
        self.rx: dict[str, float | None] = {"eth0": 1000.0, "eth1": 100.0}   # None: counter reset this poll
        self.stamp = 999_990.0
        self.extra: list[Sample] = []                                       # appended as they are

    async def collect(self, target: Target) -> list[Sample]:
        out: list[Sample] = []
        for name, rate in self.rx.items():
            if rate is not None:
                out.append(Sample("rx_bytes_per_s", rate, self.stamp, {"interface": name}))
        if all(rate is not None for rate in self.rx.values()):
            out.append(Sample("rx_bytes_per_s", sum(r for r in self.rx.values() if r is not None), self.stamp))
        return out + self.extra

    def forget(self, key: str) -> None:
        pass

    async def close(self) -> None:
        pass


def with_interfaces(w: World) -> Interfaces:
    snmp = Interfaces()
    w.engine.collectors = {**w.engine.collectors, "snmp": snmp}
    w.engine.collector_configs = {**w.engine.collector_configs, "snmp": CollectorConfig(driver="snmp")}
    return snmp


async def test_an_interface_counter_reset_is_no_data_for_the_total_never_another_interfaces_rate(make) -> None:  # type: ignore[no-untyped-def]
    w = make({"inputs": {"s": {"source": "fake", "metric": "sessions"},
                         "rx": {"source": "snmp", "metric": "rx_bytes_per_s", "aggregate": "max"}}})
    snmp = with_interfaces(w)
    await grow_to_min(w)
    w.clock.advance(5)
    await w.engine.collect()
    assert w.engine.series["web"]["rx"][-1].value == 1100.0      # the unlabelled total

    snmp.rx["eth0"] = None                                       # eth0's counter went back: no total
    w.clock.advance(5)
    await w.engine.collect()
    point = w.engine.series["web"]["rx"][-1]
    assert point.value is None, point                            # not eth1's 100
    assert "no rx_bytes_per_s{} from snmp" in point.why, point.why


async def test_an_interface_is_read_only_when_its_labels_are_named(make) -> None:  # type: ignore[no-untyped-def]
    w = make({"inputs": {"s": {"source": "fake", "metric": "sessions"},
                         "eth0": {"source": "snmp", "metric": "rx_bytes_per_s", "labels": {"interface": "eth0"}},
                         "eth9": {"source": "snmp", "metric": "rx_bytes_per_s", "labels": {"interface": "eth9"}},
                         "both": {"source": "snmp", "metric": "rx_bytes_per_s",
                                  "labels": {"interface": "eth0", "vrf": "red"}}}})
    snmp = with_interfaces(w)
    await grow_to_min(w)
    w.clock.advance(5)
    await w.engine.collect()
    series = w.engine.series["web"]
    assert series["eth0"][-1].value == 1000.0
    assert series["eth9"][-1].value is None
    assert 'no rx_bytes_per_s{interface="eth9"} from snmp (it sent rx_bytes_per_s{}, ' \
           'rx_bytes_per_s{interface="eth0"}, rx_bytes_per_s{interface="eth1"})' in series["eth9"][-1].why
    assert series["both"][-1].value is None       # a superset of a sample's labels matches nothing

    snmp.rx["eth1"] = None                        # another interface's reset leaves eth0's own rate alone
    w.clock.advance(5)
    await w.engine.collect()
    assert series["eth0"][-1].value == 1000.0 and series["eth0"][-1].complete


async def test_two_samples_of_one_series_are_no_data_with_the_reason(make) -> None:  # type: ignore[no-untyped-def]
    w = make({"inputs": {"s": {"source": "fake", "metric": "sessions"},
                         "rx": {"source": "snmp", "metric": "rx_bytes_per_s"}}})
    snmp = with_interfaces(w)
    snmp.extra = [Sample("rx_bytes_per_s", 7.0, snmp.stamp)]   # a second unlabelled total: neither is used
    await grow_to_min(w)
    w.clock.advance(5)
    await w.engine.collect()
    point = w.engine.series["web"]["rx"][-1]
    assert point.value is None
    assert "2 samples of rx_bytes_per_s{} from snmp in one answer (a collector bug): none used" in point.why


def haproxy_exporter(fixture: str) -> httpx.MockTransport:
    """A HAProxy exporter answering a captured scrape (tests/fixtures/haproxy) every time."""
    body = (Path(__file__).resolve().parents[2] / "fixtures" / "haproxy" / fixture).read_text()
    return httpx.MockTransport(
        lambda request: httpx.Response(200, text=body, headers={"content-type": "text/plain; version=0.0.4"}))


async def test_a_named_haproxy_frontend_is_the_unlabelled_series(make) -> None:  # type: ignore[no-untyped-def]
    """The shipped example: `frontend: vip` in scaler.yaml, `metric: current_sessions` in the policy."""
    exporter = haproxy_exporter("scrape_queue_2.txt")                # frontend app: 3 current sessions
    haproxy = HAProxyCollector(HAProxyCollectorConfig(frontend="app"), transport_factory=lambda uds: exporter)
    w = make({"inputs": {"s": {"source": "haproxy", "metric": "current_sessions"}}})
    w.engine.collectors = {"haproxy": haproxy}
    w.engine.collector_configs = {"haproxy": CollectorConfig.model_validate(
        {"driver": "haproxy", "target": {"url": "http://{address}:8404/metrics"}})}
    await grow_to_min(w)
    w.clock.advance(5)
    await w.engine.collect()
    point = w.engine.series["web"]["s"][-1]
    assert point.value == 3.0, point
    await haproxy.close()


def test_a_read_keeps_each_samples_labels_and_time() -> None:
    eth0 = Sample("rx_bytes_per_s", 1000.0, 1234.5, {"interface": "eth0"})
    total = Sample("rx_bytes_per_s", 1100.0, 1234.6)
    read = Read("snmp", (eth0, total))
    assert read.select("rx_bytes_per_s", {}) is total                          # timestamp 1234.6 with it
    assert read.select("rx_bytes_per_s", {"interface": "eth0"}) is eth0
    assert read.select("tx_bytes_per_s", {}) == "no tx_bytes_per_s{} from snmp"
    assert Read("snmp", error="timeout after 5s").select("rx_bytes_per_s", {}) == "timeout after 5s"


async def test_the_services_evaluation_reads_and_writes_the_store_off_the_loop(make) -> None:  # type: ignore[no-untyped-def]
    # The same decisions as the synchronous evaluation, with the store used from a worker thread.
    w = make({"rules": [{"name": "busy", "input": "s", "above": 10, "adjust": "+1"}]})
    woken: list[int] = []
    w.engine.on_operation = lambda: woken.append(1)
    decisions = await w.engine.evaluate_off_loop()        # below min: scale out
    assert decisions["web"].outcome.value == "scale_out" and woken == [1]
    assert w.store.running_operation("web") is not None
    await w.settle()
    w.collector.value = 15.0
    w.clock.advance(5)
    await w.engine.collect()
    decisions = await w.engine.evaluate_off_loop()
    assert w.last()["outcome"] == str(decisions["web"].outcome)


async def test_a_paused_pool_records_what_the_rules_ask_and_starts_nothing(make) -> None:  # type: ignore[no-untyped-def]
    w = make({"min": 2})
    w.store.pause("web", "api (alice)", "disk full on the hypervisors", w.clock())
    w.engine.evaluate()                           # below min: would scale out 0 → 2
    d = w.last()
    assert d["outcome"] == "hold" and d["desired"] == 0, d
    assert str(d["reason"]).startswith("paused by api (alice) at ") and "disk full" in str(d["reason"])
    assert "wanted 0 → 2" in str(d["reason"]) and d["context"]["cause"] == "paused"
    registry = w.engine.metrics.registry
    assert registry.get_sample_value("scaler_pool_paused", {"pool": "web"}) == 1
    assert registry.get_sample_value("scaler_pool_bounds_members", {"pool": "web", "bound": "min"}) == 2
    assert registry.get_sample_value("scaler_pool_bounds_members", {"pool": "web", "bound": "max"}) == 4
    assert w.store.running_operation("web") is None and w.store.members("web") == []
    events = [e.message for e in w.store.events("web") if e.kind == "pause"]
    assert events == ["paused by api (alice): disk full on the hypervisors: decisions start nothing; "
                      "health checks still withdraw dead members"]

    w.store.pause("web", "api (bob)", "", w.clock() + 1)        # again: the first pause's time is kept
    assert w.store.pool("web").paused_at == w.clock()
    w.store.resume("web", "api (bob)", w.clock() + 2)
    assert w.store.pool("web").pause_summary() is None
    w.clock.advance(5)
    w.engine.evaluate()
    assert (w.last()["outcome"], w.last()["desired"]) == ("scale_out", 2)
    assert registry.get_sample_value("scaler_pool_paused", {"pool": "web"}) == 0
    assert [e.message.split(" (")[0] for e in w.store.events("web") if e.kind == "pause"][-1] == "resumed by api"


async def test_an_acting_decisions_log_record_carries_its_pool_and_operation(  # type: ignore[no-untyped-def]
        make, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from scaler.logs import JsonFormatter

    w = make({"min": 1})
    with caplog.at_level(logging.INFO, logger="scaler.engine"):
        w.engine.evaluate()                       # below min: scale out 0 → 1
    [record] = [r for r in caplog.records if "scale_out 0 → 1" in r.getMessage()]
    op = w.store.running_operation("web")
    assert op is not None
    line = json.loads(JsonFormatter().format(record))
    assert (line["pool"], line["operation"]) == ("web", op.id)
