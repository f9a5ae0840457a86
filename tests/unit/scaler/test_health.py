"""The health checker with the lifecycle, the fake drivers and a scripted prober: a dead member leaves
the router in the round that marks it down, is replaced, and a blind checker never empties a VIP.
The real prober is tested against sockets on loopback at the end."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal

import pytest
from prometheus_client import CollectorRegistry
from ruamel.yaml import YAML

from actuators.drainer import NoDrainer
from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter
from collectors import Sample, Target
from policies import PolicyFile, PoolPolicy
from policies.health import Result
from scaler.config import CollectorConfig, PoolConfig
from scaler.engine import Engine
from scaler.health import CheckTarget, HealthChecker, Outcome, SocketProber, resolve
from scaler.lifecycle import Lifecycle, desired_routes
from scaler.metrics import Metrics
from scaler.store import Member, MemberState, Store
from tests.support.clock import ManualClock
from tests.support.rows import member

STORE_ENGINES = ("sqlite", "postgresql")          # tests/conftest.py

VIP = IPv4Address("198.19.0.1")


class ScriptedProber:
    """Answers each check from `results` by member address (default OK); counts the checks."""

    def __init__(self) -> None:
        self.results: dict[str, Result] = {}
        self.checks = 0

    async def check_all(self, targets: Sequence[CheckTarget]) -> list[Outcome]:
        self.checks += len(targets)
        out = []
        for t in targets:
            r = self.results.get(t.host, Result.OK)
            detail = {Result.OK: "HTTP 200", Result.FAIL: "connection refused", Result.ERROR: "no socket"}[r]
            out.append(Outcome(r, detail, 0.001))
        return out


class Bed:
    def __init__(self, store: Store, clock: ManualClock, **health: Any) -> None:
        self.store, self.clock = store, clock
        self.pool = PoolConfig.model_validate({"vip": str(VIP), "health": {
            "url": "http://{address}:8405/healthz", "netns": None, **health}})
        self.orch = FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0))
        self.router = FakeRouter()
        self.metrics = Metrics()
        self.lc = Lifecycle(store, self.orch, self.router, NoDrainer(), {"web": self.pool}, self.metrics, clock)
        self.prober = ScriptedProber()
        self.woken = 0
        self.checker = HealthChecker(store, {"web": self.pool}, self.metrics.registry, reroute=self.lc.reroute,
                                     wake=self._wake, max_of=lambda pool, now: 10, clock=clock, prober=self.prober)

    def _wake(self) -> None:
        self.woken += 1

    async def serve(self, n: int) -> list[Member]:
        self.store.start_scale_out("web", n, 0, "below min", self.clock())
        for _ in range(3):
            await self.lc.reconcile()
        members = self.serving()
        assert len(members) == n
        return members

    def serving(self) -> list[Member]:
        return [m for m in self.store.members("web") if m.state == MemberState.IN_SERVICE]

    def hops(self) -> set[str]:
        return {str(a) for a in self.router.hops(VIP)}

    async def rounds(self, n: int, step_s: float = 0.2) -> None:
        for _ in range(n):
            await self.checker.round("web")
            self.clock.advance(step_s)

    def events(self, kind: str) -> list[str]:
        return [e.message for e in self.store.events("web") if e.kind == kind]

    def sample(self, name: str, **labels: str) -> float | None:
        reg: CollectorRegistry = self.metrics.registry
        return reg.get_sample_value(name, labels)


@pytest.fixture
def store(store: Store) -> Iterator[Store]:
    store.ensure_pool("web", str(VIP), 0)
    yield store


async def test_a_dead_member_is_withdrawn_in_the_round_that_marks_it_down(store: Store, clock: ManualClock) -> None:
    bed = Bed(store, clock)
    a, b, c = await bed.serve(3)
    bed.prober.results[a.address or ""] = Result.FAIL
    await bed.rounds(2)
    assert a.address in bed.hops()                        # two failures: fall is 3
    await bed.rounds(1)
    assert bed.hops() == {b.address, c.address}          # gone in the same round, before any pass
    m = store.member(a.id)
    assert m is not None and m.health == "down" and m.state == MemberState.IN_SERVICE
    assert bed.events("health") == [f"{a.instance} unhealthy: HTTP check failed 3 times (fall 3): "
                                    f"connection refused: withdrawn"]
    assert any(e.kind == "route" and f"remove next hop {a.address}" in e.message for e in store.events("web"))
    assert bed.sample("scaler_member_health", pool="web", member=a.instance) == 0
    assert bed.sample("scaler_health_withdrawals_total", pool="web", reason="refused") == 1
    assert bed.checker.view(a.id) == {"health": "down", "last_check_at": clock() - 0.2, "last_result": "fail",
                                      "last_detail": "connection refused", "latency_ms": 1.0,
                                      "consecutive_failures": 3, "consecutive_successes": 0}


async def test_a_member_that_recovers_before_replace_after_is_re_announced(store: Store,
                                                                         clock: ManualClock) -> None:
    bed = Bed(store, clock, replace_after="10s")
    a, _, _ = await bed.serve(3)
    bed.prober.results[a.address or ""] = Result.FAIL
    await bed.rounds(3)
    assert a.address not in bed.hops()
    bed.prober.results[a.address or ""] = Result.OK
    await bed.rounds(1)
    assert a.address not in bed.hops()                    # rise is 2
    await bed.rounds(1)
    assert a.address in bed.hops()
    assert bed.events("health")[-1].endswith(": re-announced")
    assert store.running_operation("web") is None and bed.woken == 0      # nothing replaced


async def test_a_member_down_for_replace_after_is_failed_replaced_and_deleted(store: Store,
                                                                             clock: ManualClock) -> None:
    bed = Bed(store, clock, replace_after="2s")
    a, _, _ = await bed.serve(3)
    bed.prober.results[a.address or ""] = Result.FAIL
    await bed.rounds(3)                                   # down at the third round
    await bed.rounds(9)                                   # 1.8 s later: not yet
    assert store.running_operation("web") is None
    await bed.rounds(2)
    op = store.running_operation("web")
    assert op is not None and op.kind == "scale_out" and (op.from_size, op.to_size) == (2, 3)
    assert op.reason.startswith(f"replace {a.instance}: down for 2s (HTTP check failed 3 times")
    dead = store.member(a.id)
    assert dead is not None and dead.state == MemberState.FAILED and dead.replaced_by == op.id
    assert bed.woken == 1
    assert bed.sample("scaler_health_replacements_total", pool="web", reason="down") == 1
    for _ in range(3):
        await bed.lc.reconcile()
    assert len(bed.serving()) == 3 and a.address not in bed.hops() and len(bed.hops()) == 3
    assert member(store, a.id).state == MemberState.DELETED
    assert ("delete", a.instance) in bed.orch.calls
    assert store.running_operation("web") is None


async def test_a_paused_pool_withdraws_a_dead_member_but_replaces_it_only_after_resume(store: Store,
                                                                                     clock: ManualClock) -> None:
    bed = Bed(store, clock, replace_after="1s")
    a, b, c = await bed.serve(3)
    store.pause("web", "api (alice)", "maintenance", clock())
    bed.prober.results[a.address or ""] = Result.FAIL
    await bed.rounds(3)
    assert bed.hops() == {b.address, c.address}          # withdrawn: routing is safety, paused or not
    await bed.rounds(10)                                  # 2 s down, replace_after 1 s
    assert store.running_operation("web") is None and bed.woken == 0
    assert member(store, a.id).state == MemberState.IN_SERVICE
    store.resume("web", "api (alice)", clock())
    await bed.rounds(1)
    op = store.running_operation("web")
    assert op is not None and op.reason.startswith(f"replace {a.instance}: down for ")


async def test_keep_failed_holds_the_dead_instance_unrouted_before_deleting_it(store: Store,
                                                                               clock: ManualClock) -> None:
    bed = Bed(store, clock, replace_after="0s", keep_failed="1m")
    a, _ = await bed.serve(2)
    bed.prober.results[a.address or ""] = Result.FAIL
    await bed.rounds(4)
    for _ in range(3):
        await bed.lc.reconcile()
    assert member(store, a.id).state == MemberState.FAILED
    assert a.instance in bed.orch.instances and a.address not in bed.hops()
    clock.advance(61)
    await bed.lc.reconcile()
    await bed.lc.reconcile()
    assert member(store, a.id).state == MemberState.DELETED


async def test_a_blind_checker_keeps_every_route_and_says_why(store: Store, clock: ManualClock) -> None:
    bed = Bed(store, clock, replace_after="0s")
    members = await bed.serve(3)
    for m in members:
        bed.prober.results[m.address or ""] = Result.FAIL
    await bed.rounds(10)
    assert bed.hops() == {m.address for m in members}
    assert store.running_operation("web") is None         # no replacement in panic
    assert bed.checker.panic["web"] and bed.checker.panic["web"].startswith("panic: 3 of 3 members down")
    assert bed.events("health_panic") == [bed.checker.panic["web"]]
    assert bed.sample("scaler_health_panic", pool="web") == 1
    for m in members:                                     # the checker recovers
        bed.prober.results[m.address or ""] = Result.OK
    await bed.rounds(2)
    assert bed.checker.panic["web"] is None and bed.sample("scaler_health_panic", pool="web") == 0


async def test_checks_that_cannot_be_made_count_for_nothing(store: Store, clock: ManualClock) -> None:
    bed = Bed(store, clock)
    members = await bed.serve(2)
    for m in members:
        bed.prober.results[m.address or ""] = Result.ERROR
    await bed.rounds(20)
    assert len(bed.hops()) == 2 and not bed.events("health")
    assert bed.sample("scaler_health_checks_total", pool="web", result="error") == 40


async def test_half_the_pool_down_is_not_panic(store: Store, clock: ManualClock) -> None:
    bed = Bed(store, clock)
    a, b = await bed.serve(2)
    bed.prober.results[a.address or ""] = Result.FAIL
    await bed.rounds(3)
    assert bed.hops() == {b.address} and bed.checker.panic["web"] is None


async def test_the_last_member_of_a_pool_is_never_withdrawn(store: Store, clock: ManualClock) -> None:
    bed = Bed(store, clock, replace_after="0s")
    [a] = await bed.serve(1)
    bed.prober.results[a.address or ""] = Result.FAIL
    await bed.rounds(5)
    assert bed.hops() == {a.address} and store.running_operation("web") is None


async def test_a_flapping_member_is_replaced_after_flap_limit_downs(store: Store, clock: ManualClock) -> None:
    bed = Bed(store, clock, replace_after="1h", flap_limit=3, flap_window="5m")
    a, _, _ = await bed.serve(3)
    changes = 0
    for _ in range(10):                                   # 3 failures, 2 successes, again and again
        before = a.address in bed.hops()
        bed.prober.results[a.address or ""] = Result.FAIL
        await bed.rounds(3)
        bed.prober.results[a.address or ""] = Result.OK
        await bed.rounds(2)
        changes += (a.address in bed.hops()) != before
        if member(store, a.id).state == MemberState.FAILED:
            break
    assert member(store, a.id).state == MemberState.FAILED
    withdraws = [e for e in store.events("web") if e.kind == "route" and f"remove next hop {a.address}" in e.message]
    assert len(withdraws) == 3                            # bounded: flap_limit withdrawals, then replaced
    assert bed.sample("scaler_health_replacements_total", pool="web", reason="flapping") == 1


async def test_stored_health_survives_a_restart(store: Store, clock: ManualClock) -> None:
    bed = Bed(store, clock)
    a, b, _ = await bed.serve(3)
    bed.prober.results[a.address or ""] = Result.FAIL
    await bed.rounds(3)
    # A new process: new lifecycle, new checker, same store. The dead member stays withdrawn.
    again = Bed(store, clock)
    await again.lc.reconcile()
    assert a.address not in again.hops() and b.address in again.hops()
    routes = desired_routes({"web": bed.pool}, store.members("web"))
    assert IPv4Address(a.address or "") not in {h.address for h in routes[VIP]}


async def test_health_checks_off_means_health_is_ignored(store: Store, clock: ManualClock) -> None:
    bed = Bed(store, clock)
    a, _ = await bed.serve(2)
    store.set_health(a.id, "down", clock(), "by hand")
    off = PoolConfig.model_validate({"vip": str(VIP), "health": {"enabled": False}})
    assert len(desired_routes({"web": off}, store.members("web"))[VIP]) == 2
    assert len(desired_routes({"web": bed.pool}, store.members("web"))[VIP]) == 1


def test_a_member_without_a_health_url_is_not_checked_and_that_is_said() -> None:
    cfg = PoolConfig.model_validate({"vip": str(VIP)}).health
    m = Member(id="m1", pool="web", instance="web-1", op_id="op", state="in_service", address="10.0.0.1",
               created_at=0, state_since=0)
    assert resolve(cfg, m) == "health.url '{health_url}' gives no host for web-1"
    m.endpoints = '{"health_url": "http://10.0.0.1:8405/healthz", "health_netns": "lab-router"}'
    assert resolve(cfg, m) == CheckTarget("m1", "http", "10.0.0.1", 8405, "/healthz", "lab-router", 0.2, (200, 399))


# --- the real prober, on loopback ---------------------------------------------------------------------


def target(port: int, kind: Literal["http", "tcp"] = "http", timeout_s: float = 0.3) -> CheckTarget:
    return CheckTarget("m", kind, "127.0.0.1", port, "/healthz", None, timeout_s, (200, 399))


async def http_server(status: int) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.0 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_the_socket_prober_against_real_sockets() -> None:
    ok, ok_port = await http_server(200)
    bad, bad_port = await http_server(503)
    silent = socket.socket()                      # listens, never answers: like a frozen HAProxy
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    closed = socket.socket()                      # bound, not listening: refused
    closed.bind(("127.0.0.1", 0))
    try:
        out = await SocketProber().check_all([
            target(ok_port), target(bad_port), target(silent.getsockname()[1]), target(closed.getsockname()[1]),
            target(silent.getsockname()[1], "tcp")])
    finally:
        ok.close()
        bad.close()
        silent.close()
        closed.close()
    assert [(o.result, o.detail) for o in out] == [
        (Result.OK, "HTTP 200"), (Result.FAIL, "HTTP 503"), (Result.FAIL, "response timed out after 300ms"),
        (Result.FAIL, "connection refused"), (Result.OK, "TCP connect")]
    assert 0.3 <= out[2].latency_s < 1.0


async def test_a_namespace_that_does_not_exist_is_a_checker_error() -> None:
    t = CheckTarget("m", "http", "127.0.0.1", 9, "/", "scaler-test-no-such-namespace", 0.2, (200, 399))
    [out] = await SocketProber().check_all([t])
    assert out.result is Result.ERROR and "scaler-test-no-such-namespace" in out.detail


# --- what the engine does with health -----------------------------------------------------------------


class CountingCollector:
    name = "counting"

    def __init__(self) -> None:
        self.read: list[str] = []

    async def collect(self, target: Target) -> list[Sample]:
        self.read.append(target.key)
        return [Sample("current_sessions", 5.0, 0.0)]

    def forget(self, key: str) -> None:
        return None

    async def close(self) -> None:
        return None


async def test_down_members_are_not_read_and_are_scaled_in_first(store: Store, clock: ManualClock) -> None:
    bed = Bed(store, clock)
    a, b, c = await bed.serve(3)
    store.set_health(b.id, "down", clock(), "by hand")
    policy = PolicyFile.model_validate({"pools": {"web": {
        "min": 1, "max": 5, "inputs": {"s": {"source": "counting", "metric": "current_sessions"}},
        "rules": [{"name": "idle", "input": "s", "below": 10, "adjust": -1}]}}}).pools["web"]
    counting = CountingCollector()
    engine = Engine(store, {"counting": counting}, {"counting": CollectorConfig(driver="haproxy")},
                    {"web": bed.pool}, {"web": policy}, bed.metrics, clock)
    await engine.collect()
    assert sorted(counting.read) == sorted([a.id, c.id])
    members = store.members("web")
    assert [m.id for m in Engine.victims(members, 1)] == [b.id]          # down first, though not the newest
    assert [m.id for m in Engine.victims(members, 2)] == [b.id, c.id]    # then the newest


def test_the_readme_health_example_is_the_defaults() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S) if "    health:" in b)
    health = YAML(typ="safe").load(block)["pools"]["web"]["health"]
    assert PoolConfig.model_validate({"vip": str(VIP), "health": health}) == PoolConfig.model_validate(
        {"vip": str(VIP)})


def test_more_checks_than_one_scaler_makes_are_warned_about_at_start() -> None:
    from scaler.service import health_warnings

    def policy(max_: int) -> PoolPolicy:
        doc = {"min": 1, "max": max_, "inputs": {"s": {"source": "haproxy", "metric": "current_sessions"}},
               "rules": [{"name": "busy", "input": "s", "above": 10, "adjust": 1}]}
        return PolicyFile.model_validate({"pools": {"p": doc}}).pools["p"]

    pools = {f"p{i}": PoolConfig.model_validate({"vip": f"198.19.0.{i + 1}"}) for i in range(100)}
    assert health_warnings(pools, {name: policy(4) for name in pools}) == []          # 2,000 checks/s
    [warning] = health_warnings(pools, {name: policy(8) for name in pools})            # 4,000 at 200 ms
    assert warning.startswith("health checks: up to 4,000 a second at the pools' max sizes")
    slower = {name: PoolConfig.model_validate({"vip": str(p.vip), "health": {"interval": "1s", "timeout": "1s"}})
              for name, p in pools.items()}
    assert health_warnings(slower, {name: policy(8) for name in pools}) == []
