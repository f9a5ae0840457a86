"""The prometheus_scrape collector against expositions captured from real node_exporter 1.5,
Prometheus 2.42 `/federate` and HAProxy 2.6 (tests/fixtures/), served by httpx.MockTransport."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from collectors import COLLECTORS, CollectorError, Sample, Target, build
from collectors.errors import CollectorAuthError, CollectorParseError, CollectorTimeout
from collectors.httpfetch import describe, redact_url
from collectors.prometheus_scrape import LabelMatcher, PrometheusScrapeCollector, PrometheusScrapeConfig
from tests.support.clock import ManualClock

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TARGET = Target(key="lb1", url="http://10.0.0.5:9100/metrics", labels={"pool": "web", "member": "lb-1"})

# node_exporter.txt -> node_exporter_later.txt (about 2 s apart), read off the files:
#   node_load1 0.27 both; idle CPU seconds cpu0 2184.08 -> 2186, cpu1 1946.2 -> 1948.15 (sum +3.87)
#   node_boot_time_seconds 1795281269 both; process_start_time_seconds 1795283925.2 both
# federate.txt: samples stamped 1795283933631 / 1795283934324 ms (instances 127.0.0.1:54169 / :55491)


def text(name: str) -> str:
    return (FIXTURES / name).read_text()


NODE = text("prometheus/node_exporter.txt")
NODE_LATER = text("prometheus/node_exporter_later.txt")
FEDERATE = text("prometheus/federate.txt")
FEDERATE_AT = 1795283934.324


def node_value(body: str, line_start: str) -> float:
    return float(next(ln for ln in body.splitlines() if ln.startswith(line_start)).split()[-1])


def idle_sum(body: str) -> float:
    return sum(
        float(ln.split()[-1])
        for ln in body.splitlines()
        if re.match(r'node_cpu_seconds_total\{cpu="\d+",mode="idle"\}', ln)
    )


class Exporter:
    """Answers from a queue of bodies (the last one repeats); records requests."""

    def __init__(self, *bodies: str) -> None:
        self.bodies = list(bodies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = self.bodies.pop(0) if len(self.bodies) > 1 else self.bodies[0]
        return httpx.Response(200, text=body)


def make(
    handler: Callable[[httpx.Request], httpx.Response], clock: ManualClock | None = None, **config: Any
) -> PrometheusScrapeCollector:
    clock = clock or ManualClock()
    return PrometheusScrapeCollector(
        PrometheusScrapeConfig.model_validate(config),
        transport_factory=lambda uds: httpx.MockTransport(handler),
        clock=clock.time,
        monotonic=clock.monotonic,
    )


def by_metric(samples: list[Sample]) -> dict[str, float]:
    assert len({s.metric for s in samples}) == len(samples), "one sample per metric"
    return {s.metric: s.value for s in samples}


NODE_METRICS = {
    "load1": {"name": "node_load1"},
    "memory_available": {"name": "node_memory_MemAvailable_bytes"},
    "cpu_idle": {"name": "node_cpu_seconds_total", "labels": {"mode": "idle"}, "type": "counter"},
}


# -- label matchers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "value", "matches"),
    [
        pytest.param("idle", "idle", True, id="plain value is equality"),
        pytest.param("idle", "idler", False, id="equality is exact"),
        pytest.param("!=metrics", "web", True, id="not equal"),
        pytest.param("!=metrics", "metrics", False, id="not equal, same"),
        pytest.param("=~fe.*", "fe1", True, id="regex"),
        pytest.param("=~fe", "fe1", False, id="regex is anchored"),
        pytest.param("!~stats|metrics", "metrics", False, id="negative regex"),
        pytest.param("!~stats|metrics", "web", True, id="negative regex, other"),
        pytest.param("==x", "=x", True, id="leading = escapes a value starting with ="),
        pytest.param("", "", True, id="empty matches a missing label"),
    ],
)
def test_label_matchers(written: str, value: str, matches: bool) -> None:
    assert LabelMatcher.parse(written).matches(value) is matches


# -- node_exporter ------------------------------------------------------------------------------------


async def test_gauges_then_counter_rates_from_real_node_exporter() -> None:
    clock = ManualClock()
    exporter = Exporter(NODE, NODE_LATER)
    collector = make(exporter, clock, metrics=NODE_METRICS, start_marker="node_boot_time_seconds")
    first = await collector.collect(TARGET)
    assert by_metric(first) == {
        "load1": node_value(NODE, "node_load1 "),
        "memory_available": node_value(NODE, "node_memory_MemAvailable_bytes "),
    }
    assert all(s.timestamp == clock.now for s in first)  # no exposition timestamps: as old as the answer
    assert collector.last_absences("lb1") == {"cpu_idle": "first: no rate for node_cpu_seconds_total this round"}
    clock.advance(2.0)
    got = by_metric(await collector.collect(TARGET))
    assert got["cpu_idle"] == pytest.approx((idle_sum(NODE_LATER) - idle_sum(NODE)) / 2.0)
    assert collector.last_absences("lb1") == {}
    assert exporter.requests[0].url == TARGET.url
    await collector.close()


async def test_counter_alone_warming_up_is_no_data_not_an_error() -> None:
    collector = make(Exporter(NODE), metrics={"cpu_idle": NODE_METRICS["cpu_idle"]})
    assert await collector.collect(TARGET) == []
    await collector.close()


@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [
        pytest.param("sum", lambda rates: sum(rates), id="sum"),
        pytest.param("avg", lambda rates: sum(rates) / len(rates), id="avg"),
        pytest.param("max", max, id="max"),
        pytest.param("min", min, id="min"),
    ],
)
async def test_aggregates_combine_per_series_rates(aggregate: str, expected: Callable[[list[float]], float]) -> None:
    clock = ManualClock()
    spec = {"name": "node_cpu_seconds_total", "labels": {"mode": "idle"}, "type": "counter", "aggregate": aggregate}
    collector = make(Exporter(NODE, NODE_LATER), clock, metrics={"idle": spec})
    await collector.collect(TARGET)
    clock.advance(2.0)
    got = by_metric(await collector.collect(TARGET))

    def per_cpu(body: str) -> dict[str, float]:
        found = re.findall(r'node_cpu_seconds_total\{cpu="(\d+)",mode="idle"\} (\S+)', body)
        return {cpu: float(v) for cpu, v in found}

    before, after = per_cpu(NODE), per_cpu(NODE_LATER)
    assert got["idle"] == pytest.approx(expected([(after[c] - before[c]) / 2.0 for c in before]))
    await collector.close()


@pytest.mark.parametrize(
    ("second", "reason"),
    [
        pytest.param(
            NODE_LATER.replace("node_boot_time_seconds 1.795281269e+09", "node_boot_time_seconds 1.7952899e+09"),
            "reset",
            id="start marker moved: reboot",
        ),
        pytest.param(
            NODE_LATER.replace("node_boot_time_seconds 1.795281269e+09\n", ""), "reset", id="start marker vanished"
        ),
        pytest.param(
            re.sub(r'(node_cpu_seconds_total\{cpu="0",mode="idle"\}) \S+', r"\1 1", NODE_LATER),
            "reset",
            id="counter went down",
        ),
    ],
)
async def test_counter_resets_give_no_rate(second: str, reason: str) -> None:
    clock = ManualClock()
    collector = make(Exporter(NODE, second), clock, metrics=NODE_METRICS, start_marker="node_boot_time_seconds")
    await collector.collect(TARGET)
    clock.advance(2.0)
    got = by_metric(await collector.collect(TARGET))
    assert "cpu_idle" not in got
    assert collector.last_absences("lb1")["cpu_idle"].startswith(reason)
    await collector.close()


async def test_gap_gives_no_rate() -> None:
    clock = ManualClock()
    collector = make(Exporter(NODE, NODE_LATER), clock, metrics=NODE_METRICS, max_rate_gap_s=30)
    await collector.collect(TARGET)
    clock.advance(31.0)
    assert "cpu_idle" not in by_metric(await collector.collect(TARGET))
    assert collector.last_absences("lb1")["cpu_idle"].startswith("gap")
    await collector.close()


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        pytest.param({"x": {"name": "node_load1", "labels": {"cpu": "0"}}}, "no_series", id="no series matches"),
        pytest.param({"x": {"name": "not_exported_here"}}, "no_series", id="name not in the answer"),
        pytest.param(
            {"x": {"name": "node_load1", "labels": {"a": "b"}}, "y": {"name": "nope"}}, "no_series", id="two metrics"
        ),
    ],
)
async def test_nothing_matched_is_an_error_with_reason_never_zero(metrics: dict[str, Any], reason: str) -> None:
    collector = make(Exporter(NODE), metrics=metrics)
    with pytest.raises(CollectorError) as info:
        await collector.collect(TARGET)
    assert info.value.reason == reason
    assert "lb1" in str(info.value)
    await collector.close()


async def test_partial_answer_keeps_what_matched_and_says_why_the_rest_is_absent() -> None:
    collector = make(Exporter(NODE), metrics={"load1": {"name": "node_load1"}, "gone": {"name": "nope"}})
    assert by_metric(await collector.collect(TARGET)) == {"load1": node_value(NODE, "node_load1 ")}
    assert collector.last_absences("lb1")["gone"].startswith("no_series")
    collector.forget("lb1")
    assert collector.last_absences("lb1") == {}
    await collector.close()


async def test_nan_is_absent_not_a_value() -> None:
    body = NODE.replace("node_load1 0.27", "node_load1 NaN")
    collector = make(Exporter(body), metrics={"load1": {"name": "node_load1"}})
    with pytest.raises(CollectorError) as info:
        await collector.collect(TARGET)
    assert info.value.reason == "not_finite"
    await collector.close()


# -- exposition timestamps (Prometheus /federate) -----------------------------------------------------


FEDERATED = {"load1": {"name": "node_load1", "labels": {"instance": "127.0.0.1:55491"}}}


@pytest.mark.parametrize(
    ("age_s", "fresh"),
    [
        pytest.param(5.0, True, id="5 s old"),
        pytest.param(59.9, True, id="just under max_age_s"),
        pytest.param(61.0, False, id="over max_age_s"),
    ],
)
async def test_exposition_timestamps_older_than_max_age_are_stale(age_s: float, fresh: bool) -> None:
    collector = make(Exporter(FEDERATE), ManualClock(FEDERATE_AT + age_s), metrics=FEDERATED, max_age_s=60)
    if fresh:
        (sample,) = await collector.collect(TARGET)
        assert (sample.value, sample.timestamp) == (0.27, FEDERATE_AT)  # dated by the exposition
    else:
        with pytest.raises(CollectorError) as info:
            await collector.collect(TARGET)
        assert info.value.reason == "stale"
    await collector.close()


async def test_rates_of_timestamped_samples_use_their_timestamps() -> None:
    # Our clock advances 10 s between scrapes, the samples' own stamps 4 s: the rate is per *their* second.
    clock = ManualClock(FEDERATE_AT)
    later = re.sub(
        r'^(node_cpu_seconds_total\{cpu="0",instance="127.0.0.1:55491",job="node",mode="idle"\}) (\S+) (\d+)$',
        lambda m: f"{m.group(1)} {float(m.group(2)) + 2.0} {int(m.group(3)) + 4000}",
        FEDERATE,
        flags=re.M,
    )
    spec = {
        "name": "node_cpu_seconds_total",
        "labels": {"instance": "127.0.0.1:55491", "mode": "idle", "cpu": "0"},
        "type": "counter",
    }
    collector = make(Exporter(FEDERATE, later), clock, metrics={"idle": spec})
    await collector.collect(TARGET)
    clock.advance(10.0)
    assert by_metric(await collector.collect(TARGET)) == {"idle": 0.5}
    await collector.close()


# -- HAProxy's exporter through the generic collector --------------------------------------------------


HAPROXY_METRICS = {
    "sessions": {"name": "haproxy_frontend_current_sessions", "labels": {"proxy": "!=metrics"}},
    "session_rate": {"name": "haproxy_frontend_sessions_total", "labels": {"proxy": "web"}, "type": "counter"},
    "queue": {"name": "haproxy_backend_current_queue", "aggregate": "max"},
}


async def test_haproxy_exporter_with_reload_detection() -> None:
    clock = ManualClock()
    bodies = [text(f"haproxy/scrape_{name}.txt") for name in ("start", "after_10_requests", "after_reload")]
    collector = make(
        Exporter(*bodies, bodies[-1]), clock, metrics=HAPROXY_METRICS, start_marker="haproxy_process_start_time_seconds"
    )
    seen = []
    for _ in range(4):
        seen.append(by_metric(await collector.collect(TARGET)))
        clock.advance(5.0)
    assert [got.get("session_rate") for got in seen] == [None, 2.0, None, 0.0]
    assert collector.last_absences("lb1") == {}
    queue = by_metric(await make(Exporter(text("haproxy/scrape_queue_2.txt")), metrics=HAPROXY_METRICS).collect(TARGET))
    assert (queue["sessions"], queue["queue"]) == (3.0, 2.0)  # the metrics frontend's own session left out
    await collector.close()


# -- transport, auth, failures ------------------------------------------------------------------------


def raising(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("handler", "error", "reason"),
    [
        pytest.param(raising(httpx.ConnectError("refused")), CollectorError, "connect", id="connect refused"),
        pytest.param(raising(httpx.ReadTimeout("slow")), CollectorTimeout, "timeout", id="read timeout"),
        pytest.param(raising(httpx.RemoteProtocolError("bad")), CollectorError, "protocol", id="protocol error"),
        pytest.param(lambda r: httpx.Response(401), CollectorAuthError, "auth", id="HTTP 401"),
        pytest.param(lambda r: httpx.Response(403), CollectorAuthError, "auth", id="HTTP 403"),
        pytest.param(lambda r: httpx.Response(500), CollectorError, "http_500", id="HTTP 500"),
        pytest.param(lambda r: httpx.Response(200, content=b"\xff\xfe"), CollectorParseError, "parse", id="not UTF-8"),
        pytest.param(
            lambda r: httpx.Response(200, text="node_load1 zero\n"), CollectorParseError, "parse", id="bad wanted line"
        ),
        pytest.param(
            lambda r: httpx.Response(200, text="<html>hi</html>"), CollectorError, "no_series", id="not metrics"
        ),
    ],
)
async def test_failures_raise_with_reason_and_target(
    handler: Callable[[httpx.Request], httpx.Response], error: type[CollectorError], reason: str
) -> None:
    collector = make(handler, metrics={"load1": {"name": "node_load1"}})
    with pytest.raises(error) as info:
        await collector.collect(TARGET)
    assert info.value.reason == reason
    assert "lb1" in str(info.value) and "10.0.0.5:9100" in str(info.value)
    await collector.close()


@pytest.mark.parametrize(
    ("auth", "header"),
    [
        pytest.param({"bearer_token": {"env": "SCALER_TEST_TOKEN"}}, "Bearer t0ps3cret", id="bearer"),
        pytest.param(
            {"basic_auth": {"username": "scaler", "password": {"env": "SCALER_TEST_TOKEN"}}},
            "Basic c2NhbGVyOnQwcHMzY3JldA==",
            id="basic",
        ),
    ],
)
async def test_credentials_are_sent_and_never_shown(
    monkeypatch: pytest.MonkeyPatch, auth: dict[str, Any], header: str
) -> None:
    monkeypatch.setenv("SCALER_TEST_TOKEN", "t0ps3cret")
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401)

    collector = make(handler, metrics={"load1": {"name": "node_load1"}}, **auth)
    with pytest.raises(CollectorAuthError) as info:
        await collector.collect(TARGET)
    assert seen == [header]
    for shown in (str(info.value), repr(info.value), repr(collector), repr(collector.config), str(collector.config)):
        assert "t0ps3cret" not in shown and header not in shown
    await collector.close()


def test_urls_with_credentials_are_redacted_in_messages() -> None:
    assert redact_url("http://user:pw@10.0.0.5:9100/metrics") == "http://***@10.0.0.5:9100/metrics"
    assert "pw" not in describe(Target("lb1", "http://user:pw@10.0.0.5:9100/metrics"))


async def test_unix_socket_targets_and_tcp_netns_refusal() -> None:
    uds_seen: list[str | None] = []

    def factory(uds: str | None) -> httpx.AsyncBaseTransport:
        uds_seen.append(uds)
        return httpx.MockTransport(Exporter(NODE))

    collector = PrometheusScrapeCollector(
        PrometheusScrapeConfig.model_validate({"metrics": {"load1": {"name": "node_load1"}}}), transport_factory=factory
    )
    lb1 = Target("lb1", "http://lb1/metrics", uds="/run/lab/lb1.sock", netns="ns1")  # a path works from any netns
    for target in (lb1, lb1, TARGET):
        await collector.collect(target)
    assert uds_seen == ["/run/lab/lb1.sock", None]
    with pytest.raises(CollectorError) as info:
        await collector.collect(Target("lb2", "http://10.0.0.6:9100/metrics", netns="ns2"))
    assert info.value.reason == "config"
    await collector.close()


# -- config and registry ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="no metrics"),
        pytest.param({"metrics": {}}, id="empty metrics"),
        pytest.param({"metrics": {"x": {"name": "up"}}, "timeout": 1}, id="unknown key"),
        pytest.param({"metrics": {"x": {"name": "up", "lables": {}}}}, id="unknown key in a metric"),
        pytest.param({"metrics": {"x": {"name": "1up"}}}, id="bad metric name"),
        pytest.param({"metrics": {"x-y": {"name": "up"}}}, id="bad output name"),
        pytest.param({"metrics": {"x": {"name": "up", "labels": {"a-b": "c"}}}}, id="bad label name"),
        pytest.param({"metrics": {"x": {"name": "up", "labels": {"a": "=~("}}}}, id="bad regex"),
        pytest.param({"metrics": {"x": {"name": "up", "aggregate": "median"}}}, id="unknown aggregate"),
        pytest.param({"metrics": {"x": {"name": "up", "type": "histogram"}}}, id="unknown type"),
        pytest.param({"metrics": {"x": {"name": "up"}}, "start_marker": "boot"}, id="start marker without counters"),
        pytest.param({"metrics": {"x": {"name": "up"}}, "bearer_token": "inline"}, id="inline token"),
        pytest.param({"metrics": {"x": {"name": "up"}}, "max_age_s": 0}, id="zero max age"),
    ],
)
def test_config_rejects(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PrometheusScrapeConfig.model_validate(config)


async def test_registry_builds_it() -> None:
    assert COLLECTORS["prometheus_scrape"].config is PrometheusScrapeConfig
    collector = build("prometheus_scrape", {"metrics": {"load1": {"name": "node_load1"}}})
    assert isinstance(collector, PrometheusScrapeCollector) and collector.name == "prometheus_scrape"
    await collector.close()
