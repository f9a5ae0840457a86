"""The haproxy_stats collector against stats-socket answers captured from a real HAProxy 2.6.12
(tests/fixtures/haproxy/stats), served by a small asyncio unix-socket server in the test."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from collectors import COLLECTORS, CollectorError, Sample, Target, build
from collectors.errors import CollectorAuthError, CollectorParseError, CollectorTimeout
from collectors.haproxy_stats import (
    COMMAND,
    HAProxyStatsCollector,
    HAProxyStatsConfig,
    StatsAddress,
    parse_address,
    parse_show_info,
    parse_show_stat,
    split_answer,
)
from tests.support.clock import ManualClock

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "haproxy" / "stats"

# What the fixtures hold (frontends metrics/web/app/tcpin; backends slow/tcpbe), read off the files:
#   start              stot web=0 app=0; req_tot web=0                  Pid 30177 Start_time_sec 1795283917
#   after_10_requests  stot web=10;      req_tot web=10                 same process
#   queue_2            scur app=3, stot app=3, req_tot app=3; qcur slow=2; CurrConns 3
#   after_reload       stot web=1;       req_tot web=1                  Pid 30279 Start_time_sec 1795283922


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def make(clock: ManualClock | None = None, **config: Any) -> HAProxyStatsCollector:
    clock = clock or ManualClock()
    return HAProxyStatsCollector(
        HAProxyStatsConfig.model_validate(config), clock=clock.time, monotonic=clock.monotonic
    )


def by_metric(samples: list[Sample]) -> dict[str, float]:
    assert len({s.metric for s in samples}) == len(samples), "one sample per metric"
    return {s.metric: s.value for s in samples}


class StatsServer:
    """A unix socket answering each connection with the next answer (the last repeats); records
    what each client sent. `answer` may be a callable for misbehaving servers."""

    def __init__(self, path: Path, *answers: str | Callable[[], Any]) -> None:
        self.path = path
        self.answers = list(answers)
        self.received: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.received.append(await reader.readline())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        try:
            if callable(answer):
                await answer()
            else:
                writer.write(answer.encode())
                await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(*answers: str | Callable[[], Any]) -> AsyncIterator[tuple[StatsServer, Target]]:
    with tempfile.TemporaryDirectory(prefix="hs-", dir="/tmp") as tmp:
        server = StatsServer(Path(tmp) / "stats.sock", *answers)
        listener = await asyncio.start_unix_server(server.handle, path=str(server.path))
        try:
            yield server, Target(key="lb1", url=str(server.path))
        finally:
            listener.close()
            await listener.wait_closed()


# -- parsers ----------------------------------------------------------------------------------------


def test_split_and_parse_a_real_answer() -> None:
    info_text, stat_text = split_answer(fixture("stats_queue_2.txt"))
    info = parse_show_info(info_text)
    assert (info["Pid"], info["CurrConns"], info["Idle_pct"], info["Start_time_sec"]) == (
        "30177",
        "3",
        "100",
        "1795283917",
    )
    rows = parse_show_stat(stat_text)
    assert [(r["pxname"], r["svname"]) for r in rows] == [
        ("metrics", "FRONTEND"),
        ("web", "FRONTEND"),
        ("app", "FRONTEND"),
        ("tcpin", "FRONTEND"),
        ("slow", "BACKEND"),
        ("tcpbe", "BACKEND"),
    ]
    app = rows[2]
    assert (app["scur"], app["slim"], app["stot"], app["req_tot"], app["mode"]) == ("3", "1000", "3", "3", "http")
    # A TCP frontend reports req_tot 0 (not empty): the collector goes by `mode`.
    assert (rows[3]["mode"], rows[3]["req_tot"]) == ("tcp", "0")
    assert rows[4]["qcur"] == "2"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("Unknown command\n", id="no header"),
        pytest.param("pxname,svname\nweb,FRONTEND\n", id="header without '# '"),
    ],
)
def test_show_stat_without_header_is_empty(text: str) -> None:
    assert parse_show_stat(text) == []


def test_quoted_csv_field_stays_one_field() -> None:
    rows = parse_show_stat('# pxname,svname,check_desc,scur\nbe,s1,"Layer4 timeout, retrying",4\n')
    assert rows == [{"pxname": "be", "svname": "s1", "check_desc": "Layer4 timeout, retrying", "scur": "4"}]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param(Target("k", "ignored", uds="/run/lb1.sock"), StatsAddress(path="/run/lb1.sock"), id="uds wins"),
        pytest.param(Target("k", "/run/haproxy/admin.sock"), StatsAddress(path="/run/haproxy/admin.sock"), id="path"),
        pytest.param(Target("k", "unix:/run/a.sock"), StatsAddress(path="/run/a.sock"), id="unix:path"),
        pytest.param(Target("k", "unix:///run/a.sock"), StatsAddress(path="/run/a.sock"), id="unix:///path"),
        pytest.param(Target("k", "tcp:10.0.0.5:9999"), StatsAddress(host="10.0.0.5", port=9999), id="tcp:host:port"),
        pytest.param(Target("k", "tcp://10.0.0.5:9999"), StatsAddress(host="10.0.0.5", port=9999), id="tcp://"),
        pytest.param(Target("k", "10.0.0.5:9999"), StatsAddress(host="10.0.0.5", port=9999), id="bare host:port"),
        pytest.param(Target("k", "tcp:[::1]:9999"), StatsAddress(host="::1", port=9999), id="IPv6"),
    ],
)
def test_addresses(target: Target, expected: StatsAddress) -> None:
    assert parse_address(target) == expected


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("", id="empty"),
        pytest.param("tcp:10.0.0.5", id="no port"),
        pytest.param("unix:run/a.sock", id="relative unix path"),
        pytest.param("10.0.0.5:99999", id="port out of range"),
        pytest.param("http://10.0.0.5:8404/stats", id="an HTTP URL"),
    ],
)
async def test_bad_addresses_are_config_errors(url: str) -> None:
    with pytest.raises(ValueError):
        parse_address(Target("k", url))
    with pytest.raises(CollectorError) as info:
        await make().collect(Target("lb1", url))
    assert info.value.reason == "config"


# -- samples ----------------------------------------------------------------------------------------


async def test_one_command_line_and_gauges_of_a_real_answer() -> None:
    async with serving(fixture("stats_queue_2.txt")) as (server, target):
        got = by_metric(await make().collect(target))
    assert server.received == [COMMAND]
    assert got == {
        "current_connections": 3.0,
        "idle_percent": 100.0,
        "max_connections": 1000.0,
        "current_sessions": 3.0,
        "session_limit": 4000.0,
        "queue": 2.0,
    }


@pytest.mark.parametrize(
    ("config", "sessions", "limit"),
    [
        pytest.param({}, 3.0, 4000.0, id="all frontends"),
        pytest.param({"exclude_frontends": ["metrics", "tcpin"]}, 3.0, 2000.0, id="exclusions"),
        pytest.param({"frontend": "app"}, 3.0, 1000.0, id="named frontend"),
        pytest.param({"frontend": "web"}, 0.0, 1000.0, id="idle frontend"),
    ],
)
def test_frontend_selection(config: dict[str, Any], sessions: float, limit: float) -> None:
    got = by_metric(make(**config).samples("lb1", "lb1", fixture("stats_queue_2.txt"), 1.0, 1.0))
    assert (got["current_sessions"], got["session_limit"], got["queue"]) == (sessions, limit, 2.0)


def test_rates_from_counter_deltas() -> None:
    clock = ManualClock()
    collector = make(clock, frontend="web")
    first = collector.samples("lb1", "lb1", fixture("stats_start.txt"), clock.now, clock.mono)
    assert "session_rate" not in by_metric(first) and "request_rate" not in by_metric(first)
    clock.advance(5.0)
    samples = collector.samples("lb1", "lb1", fixture("stats_after_10_requests.txt"), clock.now, clock.mono)
    got = by_metric(samples)
    assert (got["session_rate"], got["request_rate"]) == (2.0, 2.0)
    assert all(s.labels == {} for s in samples if s.metric.endswith(("_rate", "_sessions")))   # its scope, not a label


def test_tcp_frontend_has_session_rate_but_no_request_rate() -> None:
    clock = ManualClock()
    collector = make(clock, frontend="tcpin")
    collector.samples("lb1", "lb1", fixture("stats_start.txt"), clock.now, clock.mono)
    clock.advance(5.0)
    got = by_metric(collector.samples("lb1", "lb1", fixture("stats_after_10_requests.txt"), clock.now, clock.mono))
    assert got["session_rate"] == 0.0
    assert "request_rate" not in got


def test_reload_gives_no_rate_then_recovers() -> None:
    clock = ManualClock()
    collector = make(clock, frontend="web")
    rates = []
    for name in ("stats_start.txt", "stats_after_10_requests.txt", "stats_after_reload.txt", "stats_after_reload.txt"):
        got = by_metric(collector.samples("lb1", "lb1", fixture(name), clock.now, clock.mono))
        rates.append({k: v for k, v in got.items() if k.endswith("_rate")})
        clock.advance(5.0)
    assert rates == [{}, {"session_rate": 2.0, "request_rate": 2.0}, {}, {"session_rate": 0.0, "request_rate": 0.0}]


def _same_counters(text: str, **info: str) -> str:
    """`text` with some `show info` fields replaced (counters untouched)."""
    lines = []
    for line in text.splitlines(keepends=True):
        key = line.partition(":")[0]
        lines.append(f"{key}: {info[key]}\n" if key in info else line)
    return "".join(lines)


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param({"Pid": "4242"}, id="another pid"),
        pytest.param({"Start_time_sec": "1795283999"}, id="another start time"),
        pytest.param({"Uptime_sec": "0"}, id="uptime went backwards (same pid: a container restart)"),
    ],
)
def test_restart_is_detected_even_when_counters_grew(changed: dict[str, str]) -> None:
    # Counters 0 -> 10 look like a plain increase; only the process identity says they restarted.
    clock = ManualClock()
    collector = make(clock, frontend="web")
    before = _same_counters(fixture("stats_start.txt"), Uptime_sec="100")
    collector.samples("lb1", "lb1", before, clock.now, clock.mono)
    clock.advance(5.0)
    after = _same_counters(fixture("stats_after_10_requests.txt"), **{"Uptime_sec": "105", **changed})
    got = by_metric(collector.samples("lb1", "lb1", after, clock.now, clock.mono))
    assert "session_rate" not in got and "request_rate" not in got


def test_gap_and_forget() -> None:
    clock = ManualClock()
    collector = make(clock, max_rate_gap_s=30.0, frontend="web")
    collector.samples("lb1", "lb1", fixture("stats_start.txt"), clock.now, clock.mono)
    clock.advance(31.0)
    got = by_metric(collector.samples("lb1", "lb1", fixture("stats_after_10_requests.txt"), clock.now, clock.mono))
    assert "session_rate" not in got
    collector.forget("lb1")
    clock.advance(5.0)
    got = by_metric(collector.samples("lb1", "lb1", fixture("stats_after_10_requests.txt"), clock.now, clock.mono))
    assert "session_rate" not in got  # first reading again


# -- failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "error", "reason"),
    [
        pytest.param(fixture("unknown_command.txt"), CollectorParseError, "parse", id="unknown command"),
        pytest.param("", CollectorParseError, "parse", id="empty answer"),
        pytest.param("Permission denied\n\n", CollectorAuthError, "auth", id="permission denied"),
        pytest.param(split_answer(fixture("stats_start.txt"))[0], CollectorParseError, "parse", id="info only"),
        pytest.param(
            fixture("stats_start.txt").replace("CurrConns: 0", "CurrConns: many"),
            CollectorParseError,
            "parse",
            id="bad number",
        ),
    ],
)
async def test_bad_answers(answer: str, error: type[CollectorError], reason: str) -> None:
    async with serving(answer) as (_, target):
        with pytest.raises(error) as info:
            await make().collect(target)
    assert info.value.reason == reason
    assert "lb1" in str(info.value)


async def test_missing_frontend_is_an_error() -> None:
    async with serving(fixture("stats_start.txt")) as (_, target):
        with pytest.raises(CollectorError) as info:
            await make(frontend="typo").collect(target)
    assert info.value.reason == "no_frontend" and "typo" in str(info.value)


async def test_silent_server_is_cut_at_timeout_s() -> None:
    async with serving(lambda: asyncio.sleep(5)) as (_, target):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(CollectorTimeout) as info:
            await make(timeout_s=0.1).collect(target)
        assert loop.time() - started < 1.0
    assert "lb1" in str(info.value)


async def test_answer_over_the_size_bound_is_refused() -> None:
    async with serving(fixture("stats_start.txt") * 5) as (_, target):
        with pytest.raises(CollectorParseError, match="max_answer_bytes"):
            await make(max_answer_bytes=4096).collect(target)


async def test_no_socket_and_refused_port_are_connect_errors(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        for target in (Target("lb1", str(tmp_path / "none.sock")), Target("lb1", f"tcp:127.0.0.1:{port}")):
            with pytest.raises(CollectorError) as info:
                await make().collect(target)
            assert info.value.reason == "connect" and "lb1" in str(info.value)


async def test_tcp_in_a_netns_is_refused_not_silently_read_from_here() -> None:
    with pytest.raises(CollectorError) as info:
        await make().collect(Target("lb1", "tcp:10.0.0.5:9999", netns="lb1-ns"))
    assert info.value.reason == "config"


# -- config and registry ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"timeout": 2}, id="unknown key"),
        pytest.param({"timeout_s": 0}, id="zero timeout"),
        pytest.param({"frontend": ""}, id="empty frontend"),
        pytest.param({"frontend": "web", "exclude_frontends": ["stats"]}, id="frontend and exclusions"),
        pytest.param({"max_answer_bytes": 10}, id="tiny answer bound"),
    ],
)
def test_config_rejects(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        HAProxyStatsConfig.model_validate(config)


async def test_registry_builds_it() -> None:
    assert COLLECTORS["haproxy_stats"].config is HAProxyStatsConfig
    collector = build("haproxy_stats", {"frontend": "web", "timeout_s": 1})
    assert isinstance(collector, HAProxyStatsCollector) and collector.name == "haproxy_stats"
    await collector.close()
