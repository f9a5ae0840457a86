"""The prometheus_query collector against answers captured from a real Prometheus 2.42
(tests/fixtures/prometheus/queries), served by httpx.MockTransport: result → member mapping, the
"no data is never 0" cases, errors with distinct reasons, and one query shared by a poll round."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import ValidationError

from collectors import COLLECTORS, CollectorError, Sample, Target, build
from collectors.batch import collect_all
from collectors.errors import CollectorAuthError, CollectorParseError, CollectorTimeout
from collectors.prometheus_query import (
    PrometheusQueryCollector,
    PrometheusQueryConfig,
    decode_answer,
    render,
    target_values,
)
from tests.support.clock import ManualClock

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "prometheus"
INDEX = json.loads((FIXTURES / "queries.json").read_text())
INSTANCE_A, INSTANCE_B = INDEX["instances"]
# Values read off the captured files.
LOAD1 = 0.27
LOAD1_AT = 1795283934.441
CPU_BUSY = {INSTANCE_A: 0.6966919999999989, INSTANCE_B: 0.6172926666666702}
IDLE_PER_CPU_B = 2185.97 + 1948.04


def answer(name: str) -> tuple[int, bytes]:
    return INDEX["queries"][name]["status"], (FIXTURES / "queries" / f"{name}.json").read_bytes()


def member(instance: str, n: int = 1, pool: str = "web") -> Target:
    return Target(key=f"m{n}", url=f"http://{instance}/metrics", labels={"pool": pool, "member": f"lb-{n}"})


A, B = member(INSTANCE_A, 1), member(INSTANCE_B, 2)
NOT_SCRAPED = member("10.9.9.9:9100", 3)


class Server:
    """A fake Prometheus: answers each query from `answers` by query text; counts and records requests.
    `delay_s` makes it answer late (to show sharing while in flight)."""

    def __init__(self, answers: dict[str, tuple[int, bytes]], delay_s: float = 0.0) -> None:
        self.answers = answers
        self.delay_s = delay_s
        self.requests: list[httpx.Request] = []

    def form(self, index: int = -1) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.requests[index].content.decode()).items()}

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        query = parse_qs(request.content.decode())["query"][0]
        status, body = self.answers[query]
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})


def make(
    server: Server | Callable[[httpx.Request], Any], clock: ManualClock | None = None, **config: Any
) -> PrometheusQueryCollector:
    clock = clock or ManualClock(LOAD1_AT + 1.0)
    config.setdefault("url", "http://prometheus:9090")
    return PrometheusQueryCollector(
        PrometheusQueryConfig.model_validate(config),
        transport_factory=lambda uds: httpx.MockTransport(server),
        clock=clock.time,
        monotonic=clock.monotonic,
    )


def values(samples: list[Sample]) -> dict[str, float]:
    assert len({s.metric for s in samples}) == len(samples)
    return {s.metric: s.value for s in samples}


# -- decoding real answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error", "reason"),
    [
        pytest.param("bad_data", CollectorError, "promql_bad_data", id="parse error in the query (400)"),
        pytest.param("execution", CollectorError, "promql_execution", id="many-to-many matching (422)"),
        pytest.param("timeout", CollectorError, "promql_timeout", id="query timed out (503)"),
        pytest.param("scalar", CollectorError, "result_type", id="scalar result"),
        pytest.param("matrix", CollectorError, "result_type", id="range vector result"),
    ],
)
def test_real_error_answers_have_distinct_reasons(name: str, error: type[CollectorError], reason: str) -> None:
    status, body = answer(name)
    with pytest.raises(error) as info:
        decode_answer(status, body, "q")
    assert info.value.reason == reason
    if name in ("bad_data", "execution", "timeout"):
        assert json.loads(body)["error"] in str(info.value)  # Prometheus's own words reach the operator


@pytest.mark.parametrize(
    ("status", "body", "error", "reason"),
    [
        pytest.param(401, b"Unauthorized\n", CollectorAuthError, "auth", id="401 from web.config basic auth"),
        pytest.param(403, b"", CollectorAuthError, "auth", id="403 from a proxy"),
        pytest.param(502, b"<html>Bad Gateway</html>", CollectorError, "http_502", id="502 HTML from a proxy"),
        pytest.param(200, b"<html>not the API</html>", CollectorParseError, "parse", id="200 but not JSON"),
        pytest.param(200, b'{"status":"success"}', CollectorParseError, "parse", id="no data"),
        pytest.param(
            200,
            b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}',
            CollectorParseError,
            "parse",
            id="unparsable value",
        ),
    ],
)
def test_other_answers(status: int, body: bytes, error: type[CollectorError], reason: str) -> None:
    with pytest.raises(error) as info:
        decode_answer(status, body, "q")
    assert info.value.reason == reason


def test_decodes_a_real_vector() -> None:
    decoded = decode_answer(*answer("node_load1"), "q")
    assert sorted((s.labels["instance"], s.value, s.timestamp) for s in decoded.series) == [
        (INSTANCE_A, LOAD1, LOAD1_AT),
        (INSTANCE_B, LOAD1, LOAD1_AT),
    ]


# -- mapping results to members -----------------------------------------------------------------------


def queries(**names: str) -> dict[str, tuple[int, bytes]]:
    return {INDEX["queries"][name]["query"]: answer(name) for name in names.values()}


async def test_each_member_gets_its_own_series() -> None:
    server = Server(queries(busy="cpu_busy_by_instance", load="node_load1"))
    collector = make(
        server,
        metrics={
            "cpu_busy": {"query": INDEX["queries"]["cpu_busy_by_instance"]["query"]},
            "load1": {"query": "node_load1"},
        },
    )
    got_a, got_b = await asyncio.gather(collector.collect(A), collector.collect(B))
    assert values(got_a) == {"cpu_busy": CPU_BUSY[INSTANCE_A], "load1": LOAD1}
    assert values(got_b) == {"cpu_busy": CPU_BUSY[INSTANCE_B], "load1": LOAD1}
    assert {s.timestamp for s in got_a if s.metric == "load1"} == {LOAD1_AT}
    await collector.close()


@pytest.mark.parametrize(
    ("name", "spec", "target", "reason"),
    [
        pytest.param("empty", {}, A, "empty", id="empty result"),
        pytest.param("node_load1", {}, NOT_SCRAPED, "no_match", id="no series for this member"),
        pytest.param("nan", {}, A, "not_finite", id="NaN"),
        pytest.param("cpu_idle_per_cpu", {}, B, "ambiguous", id="several series, no aggregate"),
        pytest.param("node_load1", {"member_label": "pod"}, A, "no_match", id="member label absent"),
    ],
)
async def test_no_data_is_never_zero(name: str, spec: dict[str, Any], target: Target, reason: str) -> None:
    collector = make(Server(queries(q=name)), metrics={"x": {"query": INDEX["queries"][name]["query"], **spec}})
    with pytest.raises(CollectorError) as info:
        await collector.collect(target)
    assert info.value.reason == reason
    assert target.key in str(info.value)
    assert collector.last_absences(target.key)["x"].startswith(reason)
    await collector.close()


async def test_one_absent_metric_does_not_hide_the_others() -> None:
    collector = make(
        Server(queries(a="node_load1", b="empty")),
        metrics={"load1": {"query": "node_load1"}, "missing": {"query": INDEX["queries"]["empty"]["query"]}},
    )
    assert values(await collector.collect(A)) == {"load1": LOAD1}
    assert collector.last_absences(A.key)["missing"].startswith("empty")
    collector.forget(A.key)
    assert collector.last_absences(A.key) == {}
    await collector.close()


@pytest.mark.parametrize(
    ("age_s", "fresh"),
    [
        pytest.param(1.0, True, id="1 s old"),
        pytest.param(59.0, True, id="under max_age_s"),
        pytest.param(61.0, False, id="over max_age_s"),
    ],
)
async def test_old_results_are_stale(age_s: float, fresh: bool) -> None:
    collector = make(
        Server(queries(q="node_load1")), ManualClock(LOAD1_AT + age_s), metrics={"x": {"query": "node_load1"}}
    )
    if fresh:
        assert values(await collector.collect(A)) == {"x": LOAD1}
    else:
        with pytest.raises(CollectorError) as info:
            await collector.collect(A)
        assert info.value.reason == "stale"
    await collector.close()


async def test_aggregate_combines_several_series_of_one_member() -> None:
    spec = {"query": INDEX["queries"]["cpu_idle_per_cpu"]["query"], "aggregate": "sum"}
    collector = make(Server(queries(q="cpu_idle_per_cpu")), metrics={"idle": spec})
    assert values(await collector.collect(B)) == {"idle": pytest.approx(IDLE_PER_CPU_B)}
    await collector.close()


async def test_pool_wide_result_is_given_to_every_member() -> None:
    query = INDEX["queries"]["pool_wide"]["query"]
    collector = make(Server(queries(q="pool_wide")), metrics={"load": {"query": query, "member_label": None}})
    got = await asyncio.gather(collector.collect(A), collector.collect(NOT_SCRAPED))
    assert [values(s) for s in got] == [{"load": 0.54}, {"load": 0.54}]
    await collector.close()


async def test_member_value_template_from_target_labels() -> None:
    # Prometheus relabels `instance` to the member's name; the template says so.
    body = json.dumps(
        {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [
                    {"metric": {"instance": "lb-1"}, "value": [LOAD1_AT, "7"]},
                    {"metric": {"instance": "lb-2"}, "value": [LOAD1_AT, "9"]},
                ],
            },
        }
    ).encode()
    collector = make(
        Server({"node_load1": (200, body)}), metrics={"x": {"query": "node_load1"}}, member_value="${member}"
    )
    assert [values(await collector.collect(t)) for t in (A, B)] == [{"x": 7.0}, {"x": 9.0}]
    await collector.close()


# -- one query per round ------------------------------------------------------------------------------


async def test_a_round_of_many_members_costs_one_query_per_metric() -> None:
    clock = ManualClock(LOAD1_AT + 1.0)
    server = Server(queries(a="node_load1", b="cpu_busy_by_instance"), delay_s=0.01)
    collector = make(
        server,
        clock,
        share_ttl_s=2.0,
        metrics={
            "load1": {"query": "node_load1"},
            "cpu_busy": {"query": INDEX["queries"]["cpu_busy_by_instance"]["query"]},
        },
    )
    members = [A, B] + [member(f"10.0.{i // 250}.{i % 250}:9100", 10 + i) for i in range(200)]
    results = await asyncio.gather(*(collector.collect(m) for m in members), return_exceptions=True)
    assert len(server.requests) == 2 and collector.queries_sent == 2
    assert values(results[0]) == {"load1": LOAD1, "cpu_busy": CPU_BUSY[INSTANCE_A]}  # type: ignore[arg-type]
    assert all(isinstance(r, CollectorError) and r.reason == "no_match" for r in results[2:])
    # A straggler within the TTL is served from the same answer; the next round asks again.
    clock.mono += 1.0
    await collector.collect(B)
    assert len(server.requests) == 2
    clock.mono += 5.0
    await collector.collect(B)
    assert len(server.requests) == 4
    await collector.close()


async def test_a_batch_answers_like_one_collect_per_member_with_one_query_per_metric() -> None:
    """collect_many (collectors.batch): the same answers as collect for each target, errors as
    answers, one query per metric for the whole round, and a cut batch leaves the query running."""
    metrics = {"load1": {"query": "node_load1"},
               "cpu_busy": {"query": INDEX["queries"]["cpu_busy_by_instance"]["query"]},
               "per_member": {"query": 'node_load1{name="${nope}"}'}}
    members = [A, B, NOT_SCRAPED]
    one_by_one = make(Server(queries(a="node_load1", b="cpu_busy_by_instance")),
                      metrics={k: v for k, v in metrics.items() if k != "per_member"})
    expected = await asyncio.gather(*(one_by_one.collect(m) for m in members), return_exceptions=True)
    server = Server(queries(a="node_load1", b="cpu_busy_by_instance"), delay_s=0.01)
    batch = make(server, metrics={k: v for k, v in metrics.items() if k != "per_member"})
    got = await batch.collect_many(members)
    assert len(server.requests) == 2
    for want, have in zip(expected, got, strict=True):
        if isinstance(want, CollectorError):
            assert type(have) is type(want) and str(have) == str(want) and have.reason == want.reason
        else:
            assert have == want
    assert not isinstance(got[0], CollectorError) and values(got[0]) == {"load1": LOAD1,
                                                                         "cpu_busy": CPU_BUSY[INSTANCE_A]}
    bad = make(Server({}), metrics=metrics)
    assert [e.reason for e in await bad.collect_many([A]) if isinstance(e, CollectorError)] == ["config"]

    slow = Server(queries(q="node_load1"), delay_s=0.3)
    cut = make(slow, metrics={"x": {"query": "node_load1"}}, share_ttl_s=5.0)
    answers = await collect_all(cut, [A, B], timeout_s=0.05)
    assert [(type(a).__name__, a.reason) for a, _ in answers] == [("CollectorTimeout", "timeout")] * 2  # type: ignore[union-attr]
    assert values(await cut.collect(A)) == {"x": LOAD1} and len(slow.requests) == 1    # the query went on
    for c in (one_by_one, batch, bad, cut):
        await c.close()


async def test_per_member_queries_are_not_shared() -> None:
    server = Server(
        {
            'node_load1{job="web",name="lb-1"}': answer("node_load1"),
            'node_load1{job="web",name="lb-2"}': answer("node_load1"),
        }
    )
    collector = make(server, metrics={"x": {"query": 'node_load1{job="${pool}",name="${member}"}'}})
    await asyncio.gather(collector.collect(A), collector.collect(B), collector.collect(A))
    assert len(server.requests) == 2
    await collector.close()


async def test_errors_are_shared_too_and_name_each_member() -> None:
    calls = 0

    def refused(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("Connection refused")

    collector = make(refused, metrics={"x": {"query": "node_load1"}})
    results = await asyncio.gather(*(collector.collect(m) for m in (A, B)), return_exceptions=True)
    assert calls == 1
    for target, result in zip((A, B), results, strict=True):
        assert isinstance(result, CollectorError) and result.reason == "connect"
        assert target.key in str(result) and "prometheus:9090" in str(result)
    await collector.close()


async def test_a_cancelled_member_does_not_cancel_the_shared_query() -> None:
    server = Server(queries(q="node_load1"), delay_s=0.2)
    collector = make(server, metrics={"x": {"query": "node_load1"}})
    impatient = asyncio.create_task(collector.collect(A))
    patient = asyncio.create_task(collector.collect(B))
    await asyncio.sleep(0.05)
    impatient.cancel()
    assert values(await patient) == {"x": LOAD1}
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert len(server.requests) == 1
    await collector.close()


# -- requests, templates, transport -------------------------------------------------------------------


async def test_request_is_a_form_post_with_server_side_timeout() -> None:
    server = Server(queries(q="node_load1"))
    collector = make(server, url="http://prometheus:9090/prom/", timeout_s=1.5, metrics={"x": {"query": "node_load1"}})
    await collector.collect(A)
    request = server.requests[0]
    assert (request.method, str(request.url)) == ("POST", "http://prometheus:9090/prom/api/v1/query")
    assert server.form() == {"query": "node_load1", "timeout": "1.5"}
    await collector.close()


def test_target_values_and_render() -> None:
    target = Target("m1", "http://user:pw@10.0.0.5:9100/metrics", labels={"pool": "web", "member": "lb-1"})
    assert target_values(target) == {
        "pool": "web",
        "member": "lb-1",
        "key": "m1",
        "url": "http://***@10.0.0.5:9100/metrics",
        "host": "10.0.0.5",
        "port": "9100",
        "netloc": "10.0.0.5:9100",
    }
    assert target_values(Target("m1", "10.0.0.5:9100"))["netloc"] == "10.0.0.5:9100"
    assert render('up{job="${pool}"} and $x', {"pool": 'a"b\\'}, promql=True) == 'up{job="a\\"b\\\\"} and $x'
    assert render("${host}:9100", {"host": 'a"b'}) == 'a"b:9100'


async def test_unknown_placeholder_is_a_config_error() -> None:
    collector = make(Server({}), metrics={"x": {"query": 'up{job="${cluster}"}'}})
    with pytest.raises(CollectorError) as info:
        await collector.collect(A)
    assert info.value.reason == "config" and "${cluster}" in str(info.value)
    await collector.close()


@pytest.mark.parametrize(
    ("exc", "error", "reason"),
    [
        pytest.param(httpx.ConnectError("refused"), CollectorError, "connect", id="connect refused"),
        pytest.param(httpx.ConnectTimeout("slow"), CollectorTimeout, "timeout", id="connect timeout"),
        pytest.param(httpx.ReadError("reset"), CollectorError, "protocol", id="connection reset"),
    ],
)
async def test_transport_failures(exc: Exception, error: type[CollectorError], reason: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    collector = make(handler, metrics={"x": {"query": "up"}})
    with pytest.raises(error) as info:
        await collector.collect(A)
    assert info.value.reason == reason
    await collector.close()


async def test_slow_server_is_cut_at_timeout_s() -> None:
    collector = make(Server(queries(q="node_load1"), delay_s=5), timeout_s=0.1, metrics={"x": {"query": "node_load1"}})
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CollectorTimeout):
        await collector.collect(A)
    assert loop.time() - started < 1.0
    await collector.close()


async def test_bearer_token_is_sent_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALER_TEST_TOKEN", "t0ps3cret")
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401, text="Unauthorized")

    collector = make(handler, bearer_token={"env": "SCALER_TEST_TOKEN"}, metrics={"x": {"query": "up"}})
    with pytest.raises(CollectorAuthError) as info:
        await collector.collect(A)
    assert seen == ["Bearer t0ps3cret"]
    for shown in (str(info.value), repr(collector), repr(collector.config)):
        assert "t0ps3cret" not in shown
    await collector.close()


# -- config and registry ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"metrics": {"x": {"query": "up"}}}, id="no url"),
        pytest.param({"url": "prometheus:9090", "metrics": {"x": {"query": "up"}}}, id="url without scheme"),
        pytest.param({"url": "http://u:p@prometheus:9090", "metrics": {"x": {"query": "up"}}}, id="credentials in url"),
        pytest.param({"url": "http://p:9090?x=1", "metrics": {"x": {"query": "up"}}}, id="url with a query"),
        pytest.param({"url": "http://p:9090", "metrics": {}}, id="no metrics"),
        pytest.param({"url": "http://p:9090", "metrics": {"x": {"query": ""}}}, id="empty query"),
        pytest.param({"url": "http://p:9090", "metrics": {"x": {"query": 'up{a="${x"}'}}}, id="bad placeholder"),
        pytest.param({"url": "http://p:9090", "metrics": {"x": {"query": "up", "step": 1}}}, id="unknown metric key"),
        pytest.param(
            {"url": "http://p:9090", "metrics": {"x": {"query": "up"}}, "member_label": "a-b"}, id="bad label"
        ),
        pytest.param({"url": "http://p:9090", "metrics": {"x": {"query": "up"}}, "share_ttl_s": -1}, id="negative ttl"),
        pytest.param(
            {
                "url": "http://p:9090",
                "metrics": {"x": {"query": "up"}},
                "bearer_token": {"env": "X"},
                "basic_auth": {"username": "u", "password": {"env": "X"}},
            },
            id="two kinds of auth",
        ),
    ],
)
def test_config_rejects(config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X", "secret")
    with pytest.raises(ValidationError):
        PrometheusQueryConfig.model_validate(config)


def test_metrics_inherit_member_mapping_unless_they_set_it() -> None:
    config = PrometheusQueryConfig.model_validate(
        {
            "url": "http://p:9090/",
            "member_label": "host",
            "member_value": "${host}",
            "metrics": {
                "a": {"query": "up"},
                "b": {"query": "up", "member_label": None},
                "c": {"query": "up", "member_value": "${member}"},
            },
        }
    )
    assert config.url == "http://p:9090"
    got = {k: (v.member_label, v.member_value) for k, v in config.metrics.items()}
    assert got == {"a": ("host", "${host}"), "b": (None, "${host}"), "c": ("host", "${member}")}


async def test_registry_builds_it() -> None:
    assert COLLECTORS["prometheus_query"].config is PrometheusQueryConfig
    collector = build("prometheus_query", {"url": "http://p:9090", "metrics": {"x": {"query": "up"}}})
    assert isinstance(collector, PrometheusQueryCollector) and collector.name == "prometheus_query"
    await collector.close()
