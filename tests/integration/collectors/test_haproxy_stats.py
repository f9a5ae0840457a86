"""The haproxy_stats collector against a real HAProxy 2.6 on loopback (tests/support/daemons.py): the stats
socket as a unix socket and as TCP, real traffic with known counts, a real backend queue, a seamless
reload (`-sf`) that resets every counter, a killed process, and agreement with the `haproxy`
exporter collector on the metrics both report."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from collectors import CollectorError, Sample, Target
from collectors.haproxy import HAProxyCollector, HAProxyCollectorConfig
from collectors.haproxy_stats import HAProxyStatsCollector, HAProxyStatsConfig
from tests.support.clock import ManualClock
from tests.support.daemons import HAPROXY, HAProxy, free_port, haproxy
from tests.support.wait import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(HAPROXY, os.X_OK), reason="haproxy is not installed"),
]


class Lab:
    """A HAProxy with a stats socket (unix and TCP), an exporter, a `web` frontend that answers by
    itself, and `app` → a server that accepts TCP but never answers, with `maxconn 1` (a real queue)."""

    def __init__(self) -> None:
        self.slow_server = socket.socket()
        self.slow_server.bind(("127.0.0.1", 0))
        self.slow_server.listen(64)
        self.stats_port = free_port()
        self.metrics_port = free_port()
        self.web_port = free_port()
        self.app_port = free_port()
        self.config = f"""\
global
    maxconn 1000
    stats socket {{stats_socket}} mode 600 level user
    stats socket ipv4@127.0.0.1:{self.stats_port} level user
defaults
    mode http
    timeout connect 2s
    timeout client 20s
    timeout server 20s
    timeout queue 20s
frontend metrics
    bind 127.0.0.1:{self.metrics_port}
    http-request use-service prometheus-exporter if {{ path /metrics }}
frontend web
    bind 127.0.0.1:{self.web_port}
    http-request return status 200 content-type text/plain string ok
frontend app
    bind 127.0.0.1:{self.app_port}
    default_backend slow
backend slow
    server s1 127.0.0.1:{self.slow_server.getsockname()[1]} maxconn 1
"""
        self.haproxy: HAProxy | None = None

    @property
    def hx(self) -> HAProxy:
        assert self.haproxy is not None
        return self.haproxy

    @property
    def uds_target(self) -> Target:
        return Target(key="lb1", url=str(self.hx.stats_socket))

    @property
    def tcp_target(self) -> Target:
        return Target(key="lb1-tcp", url=f"tcp:127.0.0.1:{self.stats_port}")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab()
    try:
        with haproxy(tmp_path, lab.config) as hx:
            lab.haproxy = hx
            yield lab
    finally:
        lab.slow_server.close()


def stats_collector(clock: ManualClock, **config: object) -> HAProxyStatsCollector:
    return HAProxyStatsCollector(HAProxyStatsConfig.model_validate(config), monotonic=clock.monotonic)


def values(samples: list[Sample]) -> dict[str, float]:
    return {s.metric: s.value for s in samples}


async def send_requests(port: int, count: int, *, keep_alive: bool) -> None:
    limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
    async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=5) as client:
        for _ in range(count):
            response = await client.get(f"http://127.0.0.1:{port}/")
            assert response.status_code == 200 and response.text == "ok"


async def collect_until(
    collector: HAProxyStatsCollector, target: Target, metric: str, value: float
) -> dict[str, float]:
    """Collect until `metric` reads `value` (HAProxy accepts and closes asynchronously)."""
    got: dict[str, float] = {}

    async def reads() -> dict[str, float] | None:
        nonlocal got
        got = values(await collector.collect(target))
        return got if got.get(metric) == value else None

    return await eventually(reads, timeout_s=5.0, what=f"{metric} reading {value:g}", detail=lambda: f"last {got}")


async def test_sessions_and_rates_follow_real_traffic(lab: Lab) -> None:
    clock = ManualClock()
    collector = stats_collector(clock, frontend="web")
    for target in (lab.uds_target, lab.tcp_target):
        first = values(await collector.collect(target))
        assert first["current_sessions"] == 0 and first["session_limit"] == 1000
        assert first["max_connections"] == 1000 and 0 <= first["idle_percent"] <= 100
        assert "session_rate" not in first and "request_rate" not in first

    # 20 requests on 20 connections: 20 sessions, 20 requests.
    await send_requests(lab.web_port, 20, keep_alive=False)
    clock.advance(10.0)
    got = values(await collector.collect(lab.uds_target))
    assert (got["session_rate"], got["request_rate"]) == (pytest.approx(2.0), pytest.approx(2.0))

    # 30 requests on one kept-alive connection: 1 session, 30 requests.
    await send_requests(lab.web_port, 30, keep_alive=True)
    clock.advance(10.0)
    got = values(await collector.collect(lab.uds_target))
    assert (got["session_rate"], got["request_rate"]) == (pytest.approx(0.1), pytest.approx(3.0))
    # The TCP stats socket is another member as far as rates go: deltas since its own first read.
    tcp = values(await collector.collect(lab.tcp_target))
    assert (tcp["session_rate"], tcp["request_rate"]) == (pytest.approx(21 / 20), pytest.approx(50 / 20))

    # Three open, idle client connections are three current sessions (the stats socket is no session).
    held = [socket.create_connection(("127.0.0.1", lab.web_port)) for _ in range(3)]
    try:
        got = await collect_until(collector, lab.uds_target, "current_sessions", 3)
        assert got["current_connections"] >= 3
    finally:
        for sock in held:
            sock.close()
    await collect_until(collector, lab.uds_target, "current_sessions", 0)


async def test_real_backend_queue(lab: Lab) -> None:
    collector = stats_collector(ManualClock())
    async with httpx.AsyncClient(trust_env=False, timeout=20) as client:
        # One request holds the slow server's only slot, the next two wait in the backend queue.
        pending = [asyncio.create_task(client.get(f"http://127.0.0.1:{lab.app_port}/")) for _ in range(3)]
        try:
            got = await collect_until(collector, lab.uds_target, "queue", 2)
            assert got["current_sessions"] >= 3
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


async def test_reload_resets_counters_without_negative_or_huge_rates(lab: Lab) -> None:
    clock = ManualClock()
    collector = stats_collector(clock, frontend="web")
    await collector.collect(lab.uds_target)
    await send_requests(lab.web_port, 40, keep_alive=False)
    clock.advance(5.0)
    before = values(await collector.collect(lab.uds_target))
    assert before["session_rate"] == pytest.approx(8.0)

    # Seamless reload: a new process (new Pid) takes the sockets; its counters start at 0. No wait for
    # a new start second is needed here: the Pid alone tells the processes apart.
    old_pid = lab.hx.pid
    await asyncio.to_thread(lab.hx.reload)
    assert lab.hx.pid != old_pid

    await send_requests(lab.web_port, 3, keep_alive=False)
    clock.advance(5.0)
    after = values(await collector.collect(lab.uds_target))
    assert "session_rate" not in after and "request_rate" not in after
    assert "current_sessions" in after and "queue" in after  # gauges are still read

    await send_requests(lab.web_port, 10, keep_alive=False)
    clock.advance(5.0)
    again = values(await collector.collect(lab.uds_target))
    assert (again["session_rate"], again["request_rate"]) == (pytest.approx(2.0), pytest.approx(2.0))


async def test_dead_haproxy_is_a_connect_error_within_the_timeout(lab: Lab) -> None:
    collector = stats_collector(ManualClock(), timeout_s=1.0)
    await collector.collect(lab.uds_target)
    lab.hx.kill()
    for target in (lab.uds_target, lab.tcp_target):
        started = time.monotonic()
        with pytest.raises(CollectorError) as info:
            await collector.collect(target)
        assert time.monotonic() - started < 1.0
        assert info.value.reason == "connect" and target.key in str(info.value)


async def test_agrees_with_the_exporter_collector(lab: Lab) -> None:
    clock = ManualClock()
    stats = stats_collector(clock, frontend="web")
    exporter = HAProxyCollector(HAProxyCollectorConfig(frontend="web"), monotonic=clock.monotonic)
    exporter_target = Target(key="lb1", url=f"http://127.0.0.1:{lab.metrics_port}/metrics")
    try:
        held = [socket.create_connection(("127.0.0.1", lab.web_port)) for _ in range(2)]
        try:
            await collect_until(stats, lab.uds_target, "current_sessions", 2)
            await stats.collect(lab.uds_target)
            await exporter.collect(exporter_target)
            await send_requests(lab.web_port, 15, keep_alive=False)
            clock.advance(5.0)
            from_stats = values(await stats.collect(lab.uds_target))
            from_exporter = values(await exporter.collect(exporter_target))
        finally:
            for sock in held:
                sock.close()
        shared = {"current_sessions", "session_rate", "request_rate", "queue"}
        assert shared <= from_stats.keys() and shared <= from_exporter.keys()
        assert {k: from_stats[k] for k in shared} == {k: from_exporter[k] for k in shared}
        assert from_stats["session_rate"] == pytest.approx(3.0)
    finally:
        await exporter.close()
