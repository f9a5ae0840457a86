"""prometheus_query and prometheus_scrape against real daemons on loopback (tests/support/daemons.py): a
Prometheus 2.42 server scraping two node_exporters 1.5 and a HAProxy 2.6 exporter every second.

Prometheus needs a scrape or two before a query answers: every wait polls with a deadline."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from collectors import CollectorError, Sample, Target
from collectors.errors import CollectorAuthError
from collectors.prometheus_query import PrometheusQueryCollector, PrometheusQueryConfig
from collectors.prometheus_scrape import PrometheusScrapeCollector, PrometheusScrapeConfig
from tests.support.daemons import (
    BASIC_AUTH_PASSWORD,
    BASIC_AUTH_USER,
    HAPROXY,
    NODE_EXPORTER,
    PROMETHEUS,
    HAProxy,
    NodeExporter,
    Prometheus,
    free_port,
    haproxy,
    node_exporter,
    prometheus,
)
from tests.support.wait import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not all(os.access(p, os.X_OK) for p in (PROMETHEUS, NODE_EXPORTER, HAPROXY)),
        reason="prometheus, prometheus-node-exporter and haproxy are needed",
    ),
]



@dataclass
class Stack:
    nodes: list[NodeExporter]
    hx: HAProxy
    metrics_port: int
    web_port: int
    prom: Prometheus

    def member(self, n: int) -> Target:
        """LB member n: its node_exporter is what Prometheus labels `instance`."""
        node = self.nodes[n]
        return Target(key=f"m{n}", url=node.url, labels={"pool": "web", "member": f"lb-{n}"})

    @property
    def haproxy_member(self) -> Target:
        return Target(key="hx", url=f"http://127.0.0.1:{self.metrics_port}/metrics", labels={"pool": "web"})


HAPROXY_CONFIG = """\
global
    maxconn 1000
    stats socket {{stats_socket}} mode 600 level user
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend metrics
    bind 127.0.0.1:{metrics_port}
    bind unix@{{metrics_socket}}
    http-request use-service prometheus-exporter if {{ path /metrics }}
frontend web
    bind 127.0.0.1:{web_port}
    http-request return status 200 content-type text/plain string ok
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Shared by the module's read-only tests: starting Prometheus and waiting for its first scrapes
    takes seconds. Every process is stopped by PID when the module ends, even on failure."""
    base = tmp_path_factory.mktemp("prom-stack")
    metrics_port, web_port = free_port(), free_port()
    config = HAPROXY_CONFIG.format(metrics_port=metrics_port, web_port=web_port)
    with (
        node_exporter(base / "ne0") as ne0,
        node_exporter(base / "ne1") as ne1,
        haproxy(base / "haproxy", config) as hx,
        prometheus(
            base / "prom", targets={"node": [ne0.address, ne1.address], "haproxy": [f"127.0.0.1:{metrics_port}"]}
        ) as prom,
    ):
        prom.wait_for_series("up == 1", count=3)
        yield Stack([ne0, ne1], hx, metrics_port, web_port, prom)


def query_collector(url: str, **config: Any) -> PrometheusQueryCollector:
    return PrometheusQueryCollector(PrometheusQueryConfig.model_validate({"url": url, **config}))


def values(samples: list[Sample]) -> dict[str, float]:
    return {s.metric: s.value for s in samples}


# -- prometheus_query ---------------------------------------------------------------------------------


async def test_query_gives_each_member_its_value_with_one_query_per_round(stack: Stack) -> None:
    collector = query_collector(
        stack.prom.url,
        metrics={
            "up": {"query": 'up{job="node"}'},
            "cpu_busy": {"query": 'sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5s]))'},
        },
    )
    try:
        members = [stack.member(0), stack.member(1)]
        async def both_metrics() -> bool:
            for got in await asyncio.gather(*(collector.collect(m) for m in members)):
                if "cpu_busy" not in values(got):
                    raise CollectorError("cpu_busy not there yet", reason="warming")
            return True

        # A rate over 5 s needs two scrapes of each node_exporter.
        await eventually(both_metrics, timeout_s=20, interval_s=0.2, retry_on=(CollectorError,), what="cpu rate")
        sent = collector.queries_sent
        round_ = await asyncio.gather(*(collector.collect(m) for m in members * 25))  # 50 members' worth
        assert collector.queries_sent - sent <= 2 * 2  # one per metric (a second round if the TTL ran out)
        for got in map(values, round_):
            assert got["up"] == 1.0
            assert math.isfinite(got["cpu_busy"]) and got["cpu_busy"] >= 0
        # Prometheus itself agrees on what it answered for member 0.
        direct = stack.prom.query('sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5s]))')
        instances = {r["metric"]["instance"] for r in direct["data"]["result"]}
        assert {n.address for n in stack.nodes} <= instances
    finally:
        await collector.close()


async def test_query_of_haproxy_exporter_through_prometheus(stack: Stack) -> None:
    collector = query_collector(
        stack.prom.url, metrics={"connections": {"query": "haproxy_process_current_connections"}}
    )
    try:
        got = values(await eventually(lambda: collector.collect(stack.haproxy_member), timeout_s=20, interval_s=0.2,
                                      retry_on=(CollectorError,), what="haproxy series"))
        assert got["connections"] >= 0
    finally:
        await collector.close()


@pytest.mark.parametrize(
    ("query", "target_n", "reason"),
    [
        pytest.param("nonexistent_metric_for_scaler_tests", 0, "empty", id="empty result"),
        pytest.param('up{job="haproxy"}', 0, "no_match", id="no series for this member"),
        pytest.param("sum((", 0, "promql_bad_data", id="bad query"),
        pytest.param("node_load1 + on() node_load1", 0, "promql_execution", id="execution error"),
        pytest.param("up[5s]", 0, "result_type", id="range vector"),
        pytest.param("scalar(vector(1))", 0, "result_type", id="scalar"),
    ],
)
async def test_no_data_and_errors_are_never_zero(stack: Stack, query: str, target_n: int, reason: str) -> None:
    collector = query_collector(stack.prom.url, metrics={"x": {"query": query}})
    try:
        with pytest.raises(CollectorError) as info:
            await collector.collect(stack.member(target_n))
        assert info.value.reason == reason
    finally:
        await collector.close()


async def test_stale_result_by_the_collectors_clock(stack: Stack) -> None:
    # Prometheus stamps an instant query with its evaluation time; a clock 2 min ahead makes it old.
    collector = PrometheusQueryCollector(
        PrometheusQueryConfig.model_validate(
            {"url": stack.prom.url, "metrics": {"x": {"query": 'up{job="node"}'}}, "max_age_s": 60}),
        clock=lambda: time.time() + 120,
    )
    try:
        with pytest.raises(CollectorError) as info:
            await collector.collect(stack.member(0))
        assert info.value.reason == "stale"
    finally:
        await collector.close()


async def test_basic_auth_and_a_stopped_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALER_TEST_PROM_PASSWORD", BASIC_AUTH_PASSWORD)
    monkeypatch.setenv("SCALER_TEST_WRONG_PASSWORD", "wrong")
    with node_exporter(tmp_path / "ne") as ne, prometheus(
        tmp_path / "prom", targets={"node": [ne.address]}, basic_auth=True
    ) as prom:
        prom.wait_for_series('up{job="node"} == 1')
        member = Target(key="m0", url=ne.url, labels={"pool": "web", "member": "lb-0"})
        good = query_collector(
            prom.url,
            basic_auth={"username": BASIC_AUTH_USER, "password": {"env": "SCALER_TEST_PROM_PASSWORD"}},
            metrics={"up": {"query": "up"}},
            timeout_s=1.0,
            share_ttl_s=0,  # else the next call would be answered from this round's shared answer
        )
        wrong = query_collector(
            prom.url,
            basic_auth={"username": BASIC_AUTH_USER, "password": {"env": "SCALER_TEST_WRONG_PASSWORD"}},
            metrics={"up": {"query": "up"}},
        )
        anonymous = query_collector(prom.url, metrics={"up": {"query": "up"}})
        try:
            assert values(await good.collect(member)) == {"up": 1.0}
            info: pytest.ExceptionInfo[CollectorError]      # an auth error below, then a connect error
            for collector in (wrong, anonymous):
                with pytest.raises(CollectorAuthError) as info:
                    await collector.collect(member)
                assert BASIC_AUTH_PASSWORD not in str(info.value) and "wrong" not in str(info.value)

            prom.stop()
            started = time.monotonic()
            with pytest.raises(CollectorError) as info:
                await good.collect(member)
            assert time.monotonic() - started < 1.0
            assert info.value.reason == "connect"
        finally:
            for collector in (good, wrong, anonymous):
                await collector.close()


# -- prometheus_scrape --------------------------------------------------------------------------------


async def test_scrape_node_exporter_gauges_and_counter_rates(stack: Stack) -> None:
    collector = PrometheusScrapeCollector(
        PrometheusScrapeConfig.model_validate(
            {
                "metrics": {
                    "load1": {"name": "node_load1"},
                    "cpu_idle": {"name": "node_cpu_seconds_total", "labels": {"mode": "idle"}, "type": "counter"},
                    "cpu_busy_max": {
                        "name": "node_cpu_seconds_total",
                        "labels": {"mode": "!~idle|iowait|steal"},
                        "type": "counter",
                        "aggregate": "max",
                    },
                },
                "start_marker": "node_boot_time_seconds",
            }
        )
    )
    try:
        member = stack.member(0)
        first = values(await collector.collect(member))
        assert set(first) == {"load1"} and first["load1"] >= 0
        assert collector.last_absences(member.key)["cpu_idle"].startswith("first")
        # node_exporter reads /proc/stat, which moves in 10 ms ticks: wait until idle time moved.
        await asyncio.sleep(0.5)
        got = values(await collector.collect(member))
        cpus = os.cpu_count() or 1
        assert 0 <= got["cpu_idle"] <= cpus * 1.2  # idle CPU-seconds per second: at most one per CPU
        assert 0 <= got["cpu_busy_max"] <= 1.2
    finally:
        await collector.close()


async def test_scrape_with_basic_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALER_TEST_NE_PASSWORD", BASIC_AUTH_PASSWORD)
    with node_exporter(tmp_path / "ne", basic_auth=True) as ne:
        member = Target(key="m0", url=ne.url)
        metrics = {"load1": {"name": "node_load1"}}
        good = PrometheusScrapeCollector(
            PrometheusScrapeConfig.model_validate(
                {
                    "metrics": metrics,
                    "basic_auth": {"username": BASIC_AUTH_USER, "password": {"env": "SCALER_TEST_NE_PASSWORD"}},
                }
            )
        )
        anonymous = PrometheusScrapeCollector(PrometheusScrapeConfig.model_validate({"metrics": metrics}))
        try:
            assert "load1" in values(await good.collect(member))
            with pytest.raises(CollectorAuthError):
                await anonymous.collect(member)
        finally:
            await good.close()
            await anonymous.close()


async def test_scrape_federation_honours_exposition_timestamps(stack: Stack) -> None:
    member = stack.member(1)
    url = f"{stack.prom.url}/federate?match[]=" + httpx.QueryParams({"m": '{job="node"}'})["m"]
    config = PrometheusScrapeConfig.model_validate(
        {"metrics": {"load1": {"name": "node_load1", "labels": {"instance": stack.nodes[1].address}}}, "max_age_s": 30}
    )
    federate = Target(key=member.key, url=url)
    fresh = PrometheusScrapeCollector(config)
    late = PrometheusScrapeCollector(config, clock=lambda: time.time() + 60)
    try:
        (sample,) = await fresh.collect(federate)
        assert time.time() - 10 < sample.timestamp <= time.time()  # dated by Prometheus's scrape, not by us
        with pytest.raises(CollectorError) as info:
            await late.collect(federate)
        assert info.value.reason == "stale"
    finally:
        await fresh.close()
        await late.close()


async def test_scrape_haproxy_exporter_over_unix_socket_with_reload(stack: Stack) -> None:
    mono = [1000.0]
    collector = PrometheusScrapeCollector(
        PrometheusScrapeConfig.model_validate(
            {
                "metrics": {
                    "sessions": {"name": "haproxy_frontend_current_sessions", "labels": {"proxy": "web"}},
                    "session_rate": {
                        "name": "haproxy_frontend_sessions_total",
                        "labels": {"proxy": "web"},
                        "type": "counter",
                    },
                },
                "start_marker": "haproxy_process_start_time_seconds",
            }
        ),
        monotonic=lambda: mono[0],
    )
    member = Target(key="hx", url="http://lb/metrics?scope=global&scope=frontend", uds=str(stack.hx.metrics_socket))

    async def requests(n: int) -> None:
        async with httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            for _ in range(n):
                assert (await client.get(f"http://127.0.0.1:{stack.web_port}/")).status_code == 200

    try:
        await collector.collect(member)
        await requests(20)
        mono[0] += 10.0
        assert values(await collector.collect(member))["session_rate"] == pytest.approx(2.0)

        # Reload: the start time has 1 s resolution, so make sure the new process gets another one.
        old = stack.hx.show("show info")["Start_time_sec"]
        await asyncio.sleep(max(0.0, int(old) + 1.05 - time.time()))
        await asyncio.to_thread(stack.hx.reload)
        await requests(3)
        mono[0] += 10.0
        after = values(await collector.collect(member))
        assert "session_rate" not in after and after["sessions"] >= 0
        assert collector.last_absences(member.key)["session_rate"].startswith("reset")
        await requests(5)
        mono[0] += 10.0
        assert values(await collector.collect(member))["session_rate"] == pytest.approx(0.5)
    finally:
        await collector.close()
