"""The haproxy collector against answers captured from a real HAProxy 2.6.12 (tests/fixtures/haproxy),
served by httpx.MockTransport; plus the collectors registry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

import collectors
from collectors import COLLECTORS, CollectorError, Sample, Target, build
from collectors.errors import CollectorAuthError, CollectorParseError, CollectorTimeout
from collectors.haproxy import HAProxyCollector, HAProxyCollectorConfig
from tests.support.clock import ManualClock

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "haproxy"
TARGET = Target(key="lb1", url="http://10.0.0.5:8405/metrics")

# What the fixtures hold (frontends metrics/web/app/tcpin; backends slow/tcpbe), read off the files:
#   start              sessions_total metrics=1 web=0   requests metrics=1 web=0   start=1795281530
#   after_10_requests  sessions_total metrics=2 web=10  requests metrics=2 web=10  start=1795281530
#   queue_2            scur metrics=1 app=3; queue slow=2; CurrConns=4; sessions_total metrics=3 web=10 app=3
#   after_reload       sessions_total metrics=1 web=1   requests metrics=1 web=1   start=1795281534


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


Handler = Callable[[httpx.Request], httpx.Response]


class Exporter:
    """A fake exporter answering from a queue of bodies (the last one repeats); records requests."""

    def __init__(self, *bodies: str) -> None:
        self.bodies = list(bodies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = self.bodies.pop(0) if len(self.bodies) > 1 else self.bodies[0]
        return httpx.Response(200, text=body, headers={"content-type": "text/plain; version=0.0.4"})


def make(
    handler: Handler, *, clock: ManualClock | None = None, **config: object
) -> tuple[HAProxyCollector, list[str | None]]:
    clock = clock or ManualClock()
    uds_seen: list[str | None] = []

    def transport_factory(uds: str | None) -> httpx.AsyncBaseTransport:
        uds_seen.append(uds)
        return httpx.MockTransport(handler)

    collector = HAProxyCollector(
        HAProxyCollectorConfig.model_validate(config),
        transport_factory=transport_factory,
        clock=clock.time,
        monotonic=clock.monotonic,
    )
    return collector, uds_seen


def by_metric(samples: list[Sample]) -> dict[str, float]:
    assert len({s.metric for s in samples}) == len(samples), "one sample per metric"
    return {s.metric: s.value for s in samples}


async def test_first_reading_has_gauges_but_no_rates() -> None:
    clock = ManualClock()
    collector, _ = make(Exporter(fixture("scrape_start.txt")), clock=clock)
    samples = await collector.collect(TARGET)
    assert by_metric(samples) == {"current_connections": 1.0, "current_sessions": 1.0, "queue": 0.0}
    assert all(s.timestamp == clock.now for s in samples)
    await collector.close()


async def test_rates_from_counter_deltas_for_all_frontends() -> None:
    clock = ManualClock()
    collector, _ = make(Exporter(fixture("scrape_start.txt"), fixture("scrape_after_10_requests.txt")), clock=clock)
    await collector.collect(TARGET)
    clock.advance(10.0)
    got = by_metric(await collector.collect(TARGET))
    # All frontends: sessions 1 -> 12 (10 on web + the second scrape), requests likewise.
    assert got["session_rate"] == pytest.approx(1.1)
    assert got["request_rate"] == pytest.approx(1.1)
    await collector.close()


async def test_named_frontend_only() -> None:
    clock = ManualClock()
    exporter = Exporter(fixture("scrape_start.txt"), fixture("scrape_after_10_requests.txt"))
    collector, _ = make(exporter, clock=clock, frontend="web")
    first = await collector.collect(TARGET)
    assert by_metric(first)["current_sessions"] == 0.0
    clock.advance(5.0)
    samples = await collector.collect(TARGET)
    got = by_metric(samples)
    assert got["session_rate"] == pytest.approx(2.0)
    assert got["request_rate"] == pytest.approx(2.0)
    assert got["current_connections"] == 1.0  # process-wide, whatever the frontend
    frontend_metrics = {"current_sessions", "session_rate", "request_rate"}
    # The frontend is the collector's scope, not a series label: a policy input without `labels:` reads these.
    assert all(s.labels == {} for s in samples if s.metric in frontend_metrics)
    await collector.close()


@pytest.mark.parametrize(
    ("config", "sessions"),
    [
        pytest.param({}, 4.0, id="all frontends, scrape session included"),
        pytest.param({"exclude_frontends": ["metrics"]}, 3.0, id="metrics frontend excluded"),
        pytest.param({"frontend": "app"}, 3.0, id="named frontend"),
        pytest.param({"frontend": "tcpin"}, 0.0, id="tcp frontend"),
    ],
)
async def test_gauges_under_a_real_queue(config: dict[str, Any], sessions: float) -> None:
    collector, _ = make(Exporter(fixture("scrape_queue_2.txt")), **config)
    got = by_metric(await collector.collect(TARGET))
    assert got["current_sessions"] == sessions
    assert got["queue"] == 2.0
    assert got["current_connections"] == 4.0
    await collector.close()


async def test_tcp_frontend_has_session_rate_but_no_request_rate() -> None:
    # 2.6 emits haproxy_frontend_http_requests_total only for `mode http` frontends.
    clock = ManualClock()
    collector, _ = make(Exporter(fixture("scrape_start.txt")), clock=clock, frontend="tcpin")
    await collector.collect(TARGET)
    clock.advance(5.0)
    got = by_metric(await collector.collect(TARGET))
    assert got["session_rate"] == 0.0
    assert "request_rate" not in got
    await collector.close()


async def test_reload_resets_counters_without_a_rate_then_recovers() -> None:
    clock = ManualClock()
    exporter = Exporter(
        fixture("scrape_start.txt"),
        fixture("scrape_after_10_requests.txt"),
        fixture("scrape_after_reload.txt"),  # counters back near 0, new start time
        fixture("scrape_after_reload.txt"),
    )
    collector, _ = make(exporter, clock=clock, frontend="web")
    rates: list[dict[str, float]] = []
    for _ in range(4):
        got = by_metric(await collector.collect(TARGET))
        rates.append({k: v for k, v in got.items() if k.endswith("_rate")})
        clock.advance(5.0)
    assert rates == [
        {},
        {"session_rate": 2.0, "request_rate": 2.0},
        {},
        {"session_rate": 0.0, "request_rate": 0.0},
    ]
    await collector.close()


async def test_gap_longer_than_max_rate_gap_gives_no_rate() -> None:
    clock = ManualClock()
    exporter = Exporter(fixture("scrape_start.txt"), fixture("scrape_after_10_requests.txt"))
    collector, _ = make(exporter, clock=clock, max_rate_gap_s=30.0)
    await collector.collect(TARGET)
    clock.advance(31.0)
    assert "session_rate" not in by_metric(await collector.collect(TARGET))
    await collector.close()


async def test_wall_clock_step_does_not_distort_rates() -> None:
    clock = ManualClock()
    exporter = Exporter(fixture("scrape_start.txt"), fixture("scrape_after_10_requests.txt"))
    collector, _ = make(exporter, clock=clock, frontend="web")
    await collector.collect(TARGET)
    clock.advance(5.0)
    clock.now -= 3600  # NTP step backwards
    got = await collector.collect(TARGET)
    assert by_metric(got)["session_rate"] == 2.0
    await collector.close()


async def test_forget_drops_rate_state_of_that_member_only() -> None:
    clock = ManualClock()
    exporter = Exporter(
        fixture("scrape_start.txt"), fixture("scrape_start.txt"), fixture("scrape_after_10_requests.txt")
    )
    collector, _ = make(exporter, clock=clock, frontend="web")
    other = Target(key="lb2", url="http://10.0.0.6:8405/metrics")
    await collector.collect(TARGET)
    await collector.collect(other)
    clock.advance(5.0)
    collector.forget("lb1")
    assert "session_rate" not in by_metric(await collector.collect(TARGET))
    assert by_metric(await collector.collect(other))["session_rate"] == 2.0
    await collector.close()


async def test_asks_for_global_frontend_backend_scopes_only() -> None:
    exporter = Exporter(fixture("scrape_start.txt"))
    collector, _ = make(exporter)
    await collector.collect(TARGET)
    await collector.collect(Target(key="lb2", url="http://10.0.0.6:8405/metrics?scope=frontend&scope=global"))
    first, second = exporter.requests
    assert first.url.path == "/metrics"
    assert first.url.params.get_list("scope") == ["global", "frontend", "backend"]
    # An operator's explicit scopes are kept as given.
    assert second.url.params.get_list("scope") == ["frontend", "global"]
    await collector.close()


async def test_unix_socket_targets_get_their_own_transport() -> None:
    collector, uds_seen = make(Exporter(fixture("scrape_start.txt")))
    lb1 = Target(key="lb1", url="http://lb1/metrics", uds="/run/lab/lb1/metrics.sock")
    lb2 = Target(key="lb2", url="http://lb2/metrics", uds="/run/lab/lb2/metrics.sock")
    for target in (lb1, lb2, lb1, TARGET, TARGET):
        await collector.collect(target)
    assert uds_seen == ["/run/lab/lb1/metrics.sock", "/run/lab/lb2/metrics.sock", None]
    await collector.close()


# -- failures: always an error naming the target, never a zero ---------------------------------------


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


def status(code: int, body: str = "") -> Handler:
    return lambda request: httpx.Response(code, text=body)


def body(text: str | bytes) -> Handler:
    return lambda request: httpx.Response(200, content=text.encode() if isinstance(text, str) else text)


@pytest.mark.parametrize(
    ("handler", "error", "reason"),
    [
        pytest.param(
            raising(httpx.ConnectError("Connection refused")), CollectorError, "connect", id="connect refused"
        ),
        pytest.param(raising(httpx.ConnectTimeout("timed out")), CollectorTimeout, "timeout", id="connect timeout"),
        pytest.param(raising(httpx.ReadTimeout("timed out")), CollectorTimeout, "timeout", id="read timeout"),
        pytest.param(raising(httpx.RemoteProtocolError("bad")), CollectorError, "protocol", id="protocol error"),
        pytest.param(status(503, "<html>No server</html>"), CollectorError, "http_503", id="HTTP 503"),
        pytest.param(status(404), CollectorError, "http_404", id="HTTP 404"),
        pytest.param(status(401), CollectorAuthError, "auth", id="HTTP 401"),
        pytest.param(body("<html>welcome</html>"), CollectorParseError, "parse", id="not an exporter"),
        pytest.param(body(""), CollectorParseError, "parse", id="empty body"),
        pytest.param(
            body(
                fixture("scrape_start.txt").replace(
                    'haproxy_frontend_current_sessions{proxy="web"} 0',
                    'haproxy_frontend_current_sessions{proxy="web"} zero',
                )
            ),
            CollectorParseError,
            "parse",
            id="malformed wanted line",
        ),
        pytest.param(body(b"\xff\xfe garbage"), CollectorParseError, "parse", id="not UTF-8"),
    ],
)
async def test_failures_raise_with_reason_and_target(
    handler: Handler, error: type[CollectorError], reason: str
) -> None:
    collector, _ = make(handler)
    with pytest.raises(error) as info:
        await collector.collect(TARGET)
    assert info.value.reason == reason
    assert "lb1" in str(info.value) and "10.0.0.5:8405" in str(info.value)
    await collector.close()


async def test_missing_named_frontend_is_an_error() -> None:
    collector, _ = make(Exporter(fixture("scrape_start.txt")), frontend="typo")
    with pytest.raises(CollectorError) as info:
        await collector.collect(TARGET)
    assert info.value.reason == "no_frontend"
    assert "typo" in str(info.value)
    await collector.close()


async def test_slow_answer_is_cut_at_timeout_s() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, text=fixture("scrape_start.txt"))

    clock = ManualClock()
    collector = HAProxyCollector(
        HAProxyCollectorConfig(timeout_s=0.1),
        transport_factory=lambda uds: httpx.MockTransport(slow),
        clock=clock.time,
        monotonic=clock.monotonic,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CollectorTimeout) as info:
        await collector.collect(TARGET)
    assert loop.time() - started < 1.0
    assert info.value.reason == "timeout" and "lb1" in str(info.value)
    await collector.close()


async def test_a_failure_does_not_disturb_rate_baselines() -> None:
    clock = ManualClock()
    answers = iter(
        [
            httpx.Response(200, text=fixture("scrape_start.txt")),
            httpx.Response(503),
            httpx.Response(200, text=fixture("scrape_after_10_requests.txt")),
        ]
    )
    collector, _ = make(lambda request: next(answers), clock=clock, frontend="web")
    await collector.collect(TARGET)
    clock.advance(5.0)
    with pytest.raises(CollectorError):
        await collector.collect(TARGET)
    clock.advance(5.0)
    assert by_metric(await collector.collect(TARGET))["session_rate"] == 1.0
    await collector.close()


# -- config and registry ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"timeout": 2}, id="unknown key"),
        pytest.param({"timeout_s": 0}, id="zero timeout"),
        pytest.param({"max_rate_gap_s": -1}, id="negative gap"),
        pytest.param({"frontend": ""}, id="empty frontend name"),
        pytest.param({"frontend": "web", "exclude_frontends": ["stats"]}, id="frontend and exclusions"),
    ],
)
def test_config_rejects(config: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        HAProxyCollectorConfig.model_validate(config)


def test_config_defaults() -> None:
    config = HAProxyCollectorConfig()
    assert (config.timeout_s, config.frontend, config.exclude_frontends, config.max_rate_gap_s) == (
        2.0,
        None,
        (),
        60.0,
    )


async def test_registry_builds_a_validated_haproxy_collector() -> None:
    assert "haproxy" in COLLECTORS
    collector = build("haproxy", {"timeout_s": 1.5, "frontend": "web"})
    assert isinstance(collector, HAProxyCollector)
    assert collector.name == "haproxy"
    assert collector.config == HAProxyCollectorConfig(timeout_s=1.5, frontend="web")
    assert isinstance(build("haproxy"), HAProxyCollector)
    with pytest.raises(ValidationError):
        build("haproxy", {"frontnd": "web"})
    with pytest.raises(KeyError, match="haproxy"):
        build("nope", {})
    await collector.close()


async def test_satisfies_the_collector_protocol() -> None:
    collector: collectors.Collector = HAProxyCollector()  # checked by mypy
    assert collector.name == "haproxy"
    await collector.close()


def test_package_reexports_the_interface() -> None:
    for name in (
        "Collector",
        "Sample",
        "Target",
        "CollectorError",
        "CollectorTimeout",
        "CollectorParseError",
    ):
        assert hasattr(collectors, name)
